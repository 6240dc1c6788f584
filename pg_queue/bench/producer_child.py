"""One producer process of the ``producers`` workload (``producers``). Spawned: this module
imports nothing of Django or pg_queue before ``django.setup()`` has run in the child."""

from __future__ import annotations

import time
from multiprocessing.synchronize import Event as EventType
from typing import Any

#: Seconds a producer process may take to start (Django setup) before the run is abandoned.
START_TIMEOUT = 60.0


def produce(notify: bool, seconds: float, ready: Any, go: EventType, counts: Any) -> None:
    """One producer process: set Django up, say so, wait for the start, enqueue until time."""
    import django

    django.setup()
    from django.conf import settings
    from django.db import connection

    from pg_queue.bench.runner import NOOP
    from pg_queue.bench.tasks import BENCH_QUEUE
    from pg_queue.core.conf import queue_settings
    from pg_queue.producer import enqueue

    settings.PG_QUEUE = {**(getattr(settings, "PG_QUEUE", None) or {}), "NOTIFY": notify}
    queue_settings.cache_clear()
    enqueue(NOOP, [-1], queue=BENCH_QUEUE)  # connect and warm up before the clock starts
    ready.put(True)
    count = 0
    if go.wait(START_TIMEOUT):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            enqueue(NOOP, [count], queue=BENCH_QUEUE)
            count += 1
    connection.close()
    counts.put(count)
