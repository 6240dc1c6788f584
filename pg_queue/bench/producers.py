"""The ``producers`` workload of ``manage.py pg_queue_bench``: many processes calling
``enqueue()`` one job at a time, with wake-ups on and off. Same conventions as ``runner``:
ratios within one run, never asserted.

A NOTIFY makes its transaction take a database-wide lock at commit, held through the commit's
flush, so NOTIFYing enqueues commit one at a time. Wake-up marks (``pg_queue_waiter``) send
one only when a worker waits; this workload measures what is left of the cost, with no worker
(no NOTIFY is due) and with one worker draining the jobs as they come (one is due per idle
spell of the worker).
"""

from __future__ import annotations

import multiprocessing
import statistics
import time
from typing import Any

from django.db import connection

from pg_queue.bench.producer_child import START_TIMEOUT, produce
from pg_queue.bench.runner import Figures, Progress, WorkerProcess, cleanup
from pg_queue.bench.tasks import BENCH_QUEUE
from pg_queue.db import sql_ops
from pg_queue.models import Job

#: Seconds each producer enqueues per run.
RUN_SECONDS = 5.0
#: Seconds the worker may take to drain what a run left before the next run starts.
SETTLE_TIMEOUT = 60.0
#: Throughput with wake-ups on, as a share of it with them off, that issue 14 asks for.
RATIO_REQUIRED = 0.90


def _run(procs: int, notify: bool, seconds: float) -> float:
    """Jobs per second enqueued by ``procs`` producer processes in ``seconds``."""
    ctx = multiprocessing.get_context("spawn")  # a fresh Django per producer, no shared socket
    ready, counts, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    children = [
        ctx.Process(target=produce, args=(notify, seconds, ready, go, counts), daemon=True)
        for _ in range(procs)
    ]
    try:
        for child in children:
            child.start()
        for _ in children:
            ready.get(timeout=START_TIMEOUT)
        go.set()
        total = sum(counts.get(timeout=seconds + START_TIMEOUT) for _ in children)
    finally:
        go.set()
        for child in children:
            child.join(timeout=10)
            if child.is_alive():
                child.kill()
                child.join(timeout=10)
    return total / seconds


def _settle() -> None:
    """Let the worker drain what the run left, then vacuum: every run starts from the same
    table (the machine's autovacuum may be off, and each job leaves dead rows behind)."""
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while Job.objects.filter(queue_name=BENCH_QUEUE).exists():
        if time.monotonic() > deadline:
            raise RuntimeError(f"the worker did not drain the producers' jobs in {SETTLE_TIMEOUT}s")
        time.sleep(0.1)
    with connection.cursor() as cursor:
        for statement in sql_ops.BENCH_VACUUM:
            cursor.execute(statement)


def workload_producers(
    procs: int, reps: int = 3, progress: Progress | None = None, seconds: float | None = None
) -> list[Figures]:
    """``procs`` producers, ``reps`` interleaved runs of wake-ups on and off, first with no
    worker running, then with one ``run_pg_worker`` draining; medians and on/off ratios."""
    seconds = RUN_SECONDS if seconds is None else seconds
    figures: list[Figures] = []
    for with_worker in (False, True):
        cleanup()
        worker = WorkerProcess() if with_worker else None
        try:
            if worker is not None:
                worker.wait_registered()
            rates: dict[bool, list[float]] = {True: [], False: []}
            for rep in range(reps):
                for notify in (True, False):
                    if progress is not None:
                        label = "worker draining" if with_worker else "no worker"
                        step = 2 * rep + (0 if notify else 1)
                        progress(f"producers: {procs}, {label}", float(step), float(2 * reps))
                    rates[notify].append(_run(procs, notify, seconds))
                    if worker is None:
                        cleanup()
                    else:
                        _settle()
        finally:
            if worker is not None:
                worker.stop()
        on, off = statistics.median(rates[True]), statistics.median(rates[False])
        where = "one worker draining" if with_worker else "no worker"
        for notify in (True, False):
            extra: dict[str, Any] = {"reps": [round(r) for r in rates[notify]]}
            if notify:
                extra |= {
                    "ratio_on_to_off": round(on / max(off, 1e-9), 3),
                    "ratio_required": RATIO_REQUIRED,
                }
            figures.append(
                Figures(
                    "producers",
                    f"{procs} producers, {where}, wake-ups {'on' if notify else 'off'}",
                    procs,
                    jobs_per_s=on if notify else off,
                    extra=extra,
                )
            )
    cleanup()
    return figures
