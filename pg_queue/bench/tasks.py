"""Tasks the benchmark runs. The no-op takes a small integer and returns it."""

from __future__ import annotations

from pg_queue.tasks import task

BENCH_QUEUE = "pg_queue_bench"


@task(name="pg_queue.bench.noop", queue=BENCH_QUEUE, store_result=False)
def noop(n: int) -> int:
    """Fire-and-forget no-op: nothing is stored."""
    return n


@task(name="pg_queue.bench.echo", queue=BENCH_QUEUE)
def echo(n: int) -> int:
    """The same no-op with its result stored (the default for tasks)."""
    return n
