"""The blocking ``dispatch`` round trip, measured and printed (``pytest -s``), never asserted.

Three ways to run ``workers.tasks.celery_multiply`` 200 times in a row:

- ``postgres_notify``: Postgres transport with LISTEN/NOTIFY wake-ups (worker and caller);
- ``postgres_poll``: Postgres transport with NOTIFY off for both (what PgBouncer in transaction
  mode gives you): the worker's idle backoff and the caller's poll backoff set the latency;
- ``celery_rpc``: Celery over RabbitMQ with the ``rpc://`` result backend.
"""

from __future__ import annotations

import logging
import statistics
import time

import pytest

from tests.acceptance.routing.conftest import flag_off, flag_on

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

CALLS = 200
WARMUP = 10
TASK = "workers.tasks.celery_multiply"


def round_trips(dispatcher, queue: str) -> list[float]:
    """Seconds per call, after a warm-up; every call must succeed."""
    timings = []
    for i in range(WARMUP + CALLS):
        started = time.perf_counter()
        result = dispatcher.dispatch(TASK, [i, 2], queue=queue, timeout=30)
        elapsed = time.perf_counter() - started
        assert result.ok, result
        assert result.result == 2 * i, result
        if i >= WARMUP:
            timings.append(elapsed)
    return timings


def ms(values: list[float], q: float) -> str:
    """The ``q`` quantile in milliseconds (the median for 0.5)."""
    if q == 0.5:
        return f"{1000 * statistics.median(values):.1f}ms"
    ordered = sorted(values)
    return f"{1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))]:.1f}ms"


def test_rpc_round_trip_p50_postgres_notify_vs_poll_vs_celery(
    dispatcher, queues, pg_worker, pg_worker_factory, request
):
    try:
        request.getfixturevalue("celery_worker")
        with_celery = True
    except pytest.skip.Exception as skipped:  # RabbitMQ down: still measure Postgres, say so
        print(f"\nRPC: celery_rpc not measured: {skipped}")
        with_celery = False
    poll_queue = f"{queues.main}-poll"
    pg_worker_factory("pg-worker-poll", [poll_queue], PG_QUEUE_NOTIFY="false")

    # One INFO line per dispatch would flood the -s output (and cost time inside the measure).
    routing_log = logging.getLogger("pg_queue.routing")
    level = routing_log.level
    routing_log.setLevel(logging.WARNING)
    try:
        with flag_on(NOTIFY=True):
            notify = round_trips(dispatcher, queues.main)
        with flag_on(NOTIFY=False):
            poll = round_trips(dispatcher, poll_queue)
        celery: list[float] = []
        if with_celery:
            with flag_off():
                celery = round_trips(dispatcher, queues.main)
    finally:
        routing_log.setLevel(level)

    celery_p50 = ms(celery, 0.5) if celery else "n/a"
    print()
    print(
        f"RPC_P50 postgres_notify={ms(notify, 0.5)} postgres_poll={ms(poll, 0.5)} "
        f"celery_rpc={celery_p50}"
    )
    print(
        f"RPC_P90 postgres_notify={ms(notify, 0.9)} postgres_poll={ms(poll, 0.9)} "
        f"celery_rpc={ms(celery, 0.9) if celery else 'n/a'} "
        f"({CALLS} sequential calls each, after {WARMUP} warm-up)"
    )
