"""Tasks the delivery tests run in worker subprocesses (loaded with ``--include``).

Each one records every execution in the side table ``delivery_exec`` (created by the
``side_tables`` fixture), so a test can count executions per task id, not just outcomes.
They talk to the database through a per-thread psycopg connection (not Django's, which the
worker closes after every job), reconnecting once if the server dropped it.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg

from pg_queue import JobContext, Retry, task
from pg_queue.db.connection import worker_connection

#: Base b of ``fails_while_flagged``'s retry backoff (seconds): after attempt n it waits
#: between b*2**(n-1)/2 and b*2**(n-1).
BACKOFF_BASE = 0.4
FAILING_MAX_ATTEMPTS = 4

_local = threading.local()


def _execute(query: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
    for attempt in (1, 2):
        conn = getattr(_local, "conn", None)
        try:
            if conn is None or conn.closed:
                conn = _local.conn = worker_connection()
            cur = conn.execute(query, params)
            return cur.fetchall() if cur.description else []
        except psycopg.OperationalError:
            if conn is not None:
                conn.close()
            _local.conn = None
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def _record(context: JobContext) -> int:
    rows = _execute(
        """
        INSERT INTO delivery_exec (task_id, attempt, worker_id, started_at)
        VALUES (%(task_id)s, %(attempt)s, %(worker_id)s, clock_timestamp())
        RETURNING id
        """,
        {
            "task_id": context.task_id,
            "attempt": context.attempt,
            "worker_id": context.worker_id,
        },
    )
    return int(rows[0][0])


def _ended(exec_id: int) -> None:
    _execute(
        "UPDATE delivery_exec SET ended_at = clock_timestamp() WHERE id = %(id)s", {"id": exec_id}
    )


@task(queue="default", takes_context=True)
def record(context: JobContext, ms: float = 0) -> float:
    """Record this execution, then sleep ``ms`` milliseconds."""
    _record(context)
    if ms:
        time.sleep(ms / 1000)
    return ms


@task(
    queue="default",
    takes_context=True,
    max_attempts=FAILING_MAX_ATTEMPTS,
    retry_backoff=BACKOFF_BASE,
)
def fails_while_flagged(context: JobContext, flag: str) -> int:
    """Raises while ``flag`` is in ``delivery_flag``; succeeds once the test removes it."""
    exec_id = _record(context)
    flagged = _execute("SELECT 1 FROM delivery_flag WHERE flag = %(flag)s", {"flag": flag})
    _ended(exec_id)
    if flagged:
        raise RuntimeError(f"boom on attempt {context.attempt}")
    return context.attempt


@task(queue="default", takes_context=True, max_attempts=3)
def retry_once(context: JobContext, delay: float) -> int:
    """Asks for a retry after ``delay`` seconds on its first attempt; succeeds on the second."""
    exec_id = _record(context)
    _ended(exec_id)
    if context.attempt == 1:
        raise Retry(delay=delay, reason="asked for a later attempt")
    return context.attempt
