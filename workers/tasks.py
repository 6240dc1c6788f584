"""Example tasks. Native ``@task`` ones, and Celery ones the Postgres worker runs by name."""

from __future__ import annotations

import time

from celery import shared_task

from pg_queue import JobContext, task


@task(queue="default")
def add(a: int, b: int) -> int:
    return a + b


@task(queue="default", store_result=False)
def noop(n: int) -> int:
    """The benchmark's job: takes a small integer and returns it."""
    return n


@task(queue="default")
def echo(n: int) -> int:
    return n


@task(queue="default")
def sleep_ms(ms: int) -> int:
    time.sleep(ms / 1000)
    return ms


@task(queue="default", max_attempts=3, takes_context=True, retry_backoff=0.05)
def flaky(context: JobContext, fail_times: int) -> int:
    """Fails on its first ``fail_times`` attempts, then succeeds."""
    if context.attempt <= fail_times:
        raise RuntimeError(f"flaky failure on attempt {context.attempt}")
    return context.attempt


@task(queue="default", max_attempts=2, retry_backoff=0.05)
def always_fails(reason: str) -> None:
    raise ValueError(reason)


@shared_task(name="workers.tasks.celery_multiply")
def celery_multiply(a: int, b: int) -> int:
    """A plain Celery task; the Postgres worker runs it unchanged."""
    return a * b


@task(queue="default", max_attempts=1, time_limit=0.5)
def overrun(seconds: float) -> float:
    """Sleeps past its 0.5 s time limit when asked to (time-limit tests)."""
    time.sleep(seconds)
    return seconds


@task(queue="default")
def on_done(result: object, label: str = "") -> dict[str, object]:
    """An on_success callback: receives the finished task's result first."""
    return {"result": result, "label": label}


@task(queue="default")
def on_failed(task_id: str, error: str, label: str = "") -> dict[str, str]:
    """An on_error callback: receives the failed task's id and its real error text."""
    return {"task_id": task_id, "error": error, "label": label}


@task(queue="default", takes_context=True)
def cancellable(context: JobContext, seconds: float) -> str:
    """Works for ``seconds`` but stops early once an operator cancels it."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if context.cancel_requested():
            return "stopped early"
        time.sleep(0.05)
    return "ran to the end"
