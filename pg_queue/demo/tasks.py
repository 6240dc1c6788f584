"""Tasks of ``manage.py pg_queue_demo``: one per kind of job a real queue sees.

They live on their own queue ("demo") so the demo can clear and count its own rows without
touching anyone else's. Backoffs are tiny so that retries finish within the demo's few seconds.
"""

from __future__ import annotations

import time

from pg_queue import JobContext, task

DEMO_QUEUE = "demo"


@task(queue=DEMO_QUEUE)
def echo(n: int) -> int:
    """Fast: returns its argument."""
    return n


@task(queue=DEMO_QUEUE)
def sleep_ms(ms: int) -> int:
    """Slow: sleeps ``ms`` milliseconds (stands in for an HTTP call or a slow query)."""
    time.sleep(ms / 1000)
    return ms


@task(queue=DEMO_QUEUE, takes_context=True, max_attempts=3, retry_backoff=0.05)
def flaky(context: JobContext, fail_times: int) -> int:
    """Fails on its first ``fail_times`` attempts, then succeeds; returns the winning attempt."""
    if context.attempt <= fail_times:
        raise RuntimeError(f"flaky failure on attempt {context.attempt}/{context.max_attempts}")
    return context.attempt


@task(queue=DEMO_QUEUE, takes_context=True, max_attempts=3, retry_backoff=0.05)
def doomed(context: JobContext, reason: str) -> None:
    """Fails on every attempt, so it ends in the dead-letter table."""
    raise ValueError(f"{reason} (attempt {context.attempt}/{context.max_attempts})")
