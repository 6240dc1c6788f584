"""Tasks the benchmark runs. The no-op takes a small integer and returns it."""

from __future__ import annotations

import time

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


@task(name="pg_queue.bench.stamp", queue=BENCH_QUEUE)
def stamp(n: int) -> float:
    """The latency workload's task: returns the wall clock at its start, as the peers'
    harness's task records it (``pg_task_result.started_at`` is anchored on the claim
    statement's database time, up to a claim's duration early)."""
    return time.time()


@task(name="pg_queue.bench.add", queue=BENCH_QUEUE)
def add(a: int, b: int) -> int:
    """A group's child: its result is stored, since the group's callback is given them all."""
    return a + b


@task(name="pg_queue.bench.group_done", queue=BENCH_QUEUE)
def group_done(results: list[int], token: str) -> dict[str, object]:
    """A group's ``on_success``: the bench finds its outcome (and so its start time) by
    ``token``, and checks that every child's result reached it."""
    return {"token": token, "n": len(results), "sum": sum(results)}
