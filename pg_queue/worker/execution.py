"""Running one claimed job and turning what happened into a finish instruction.

Runs in a worker thread, outside any transaction. Never raises: every way a task can end
(return, ``Retry``, exception, a result that is not JSON) becomes a ``Success``, ``RetryLater``
or ``Bury`` for the coordinator to write in its next batch.
"""

from __future__ import annotations

import datetime as dt
import random
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.db import close_old_connections

from pg_queue.celery_compat import run_celery_task
from pg_queue.claim import Bury, Cancelled, ClaimedMessage, RetryLater, Success
from pg_queue.conf import queue_settings
from pg_queue.context import JobContext
from pg_queue.exceptions import Reject, Retry
from pg_queue.models import DeadLetterReason
from pg_queue.payload import TaskPayload, coerce_json, dumps
from pg_queue.registry import Task

Outcome = Success | RetryLater | Bury | Cancelled


@dataclass(frozen=True, slots=True)
class Job:
    """A claimed message with its decoded payload and resolved task."""

    msg: ClaimedMessage
    payload: TaskPayload
    task: Task | Any  # a native Task or a Celery task
    claimed_mono: float  # time.monotonic() when the claim returned
    time_limit: float = 0.0  # seconds; 0 = none


def backoff_delay(task: Task | Any, attempt: int) -> float:
    """Seconds before the next attempt: exponential with equal jitter, capped.

    A native task may give a base (float) or a callable(attempt) -> seconds.
    """
    conf = queue_settings()
    spec = getattr(task, "retry_backoff", None) if isinstance(task, Task) else None
    if callable(spec):
        return max(0.0, float(spec(attempt)))
    base = conf.retry_backoff if spec is None else float(spec)
    ceiling = min(conf.retry_backoff_max, base * (2 ** max(0, attempt - 1)))
    return ceiling / 2 + random.uniform(0, ceiling / 2)


def _error_text(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _call(job: Job, worker_id: str, cancel_check: Callable[[], bool]) -> Any:
    msg, task, payload = job.msg, job.task, job.payload
    if isinstance(task, Task):
        if task.takes_context:
            context = JobContext(
                task_id=msg.task_id,
                task_name=msg.task_name,
                queue_name=msg.queue_name,
                attempt=msg.attempts,
                max_attempts=msg.max_attempts,
                worker_id=worker_id,
                cancel_check=cancel_check,
            )
            return task.func(context, *payload.args, **payload.kwargs)
        return task.func(*payload.args, **payload.kwargs)
    # A Celery task: its own code, in-process, under the stable task id.
    return run_celery_task(task, msg.task_id, payload.args, payload.kwargs, msg.attempts)


def _stores_result(task: Task | Any) -> bool:
    if isinstance(task, Task):
        return task.store_result
    return not getattr(task, "ignore_result", False)


def time_limit_of(task: Task | Any, default: float) -> float:
    """Seconds a run of ``task`` may take (0 = unlimited): the task's own, else the default."""
    own = task.time_limit if isinstance(task, Task) else getattr(task, "time_limit", None)
    return float(own) if own else default


def failure_outcome(
    job: Job, error: str, tb: str, started_at: dt.datetime, delay: float | None = None
) -> RetryLater | Bury:
    """Retry later while attempts remain, else dead-letter with the last error and traceback."""
    msg = job.msg
    if msg.attempts < msg.max_attempts:
        wait = backoff_delay(job.task, msg.attempts) if delay is None else max(0.0, delay)
        return RetryLater(msg, wait, error)
    return Bury(msg, DeadLetterReason.EXHAUSTED, error, tb, started_at, job.payload.on_error)


def run_job(
    job: Job,
    worker_id: str,
    started_at: dt.datetime,
    cancel_check: Callable[[], bool] = lambda: False,
) -> Outcome:
    """Execute ``job`` and describe how it ended. Never raises.

    A job cancelled by an operator (``cancel_check()`` true before or after the run) ends as
    ``Cancelled`` whatever the task did.
    """
    if cancel_check():
        return Cancelled(job.msg, CANCELLED_BEFORE_START, job.payload.on_error)
    try:
        outcome = _run(job, worker_id, started_at, cancel_check)
    finally:
        close_old_connections()
    if cancel_check():
        return Cancelled(job.msg, CANCELLED_WHILE_RUNNING, job.payload.on_error)
    return outcome


#: Error texts of operator cancellations (what on_error receives).
CANCELLED_BEFORE_START = "cancelled by an operator before it started"
CANCELLED_WHILE_RUNNING = "cancelled by an operator while it was running"


def _run(
    job: Job, worker_id: str, started_at: dt.datetime, cancel_check: Callable[[], bool]
) -> Outcome:
    try:
        value = coerce_json(_call(job, worker_id, cancel_check), "result")
        result_json = dumps(value) if _stores_result(job.task) else None
        on_success = job.payload.on_success
        return Success(job.msg, result_json, started_at, on_success, value if on_success else None)
    except Retry as retry:
        error = f"retry requested: {retry.reason}" if retry.reason else "retry requested"
        if retry.bounded_by_task:  # Celery checked max_retries already: always retry
            msg = job.msg
            delay = 0.0 if retry.delay is None else max(0.0, retry.delay)
            return RetryLater(msg, delay, error, min_max_attempts=msg.attempts + 1)
        return failure_outcome(job, error, "", started_at, retry.delay)
    except Reject as reject:
        cause = reject.cause
        error = _error_text(cause) if isinstance(cause, BaseException) else str(cause)
        return Bury(
            job.msg,
            DeadLetterReason.EXHAUSTED,
            error,
            traceback.format_exc(),
            started_at,
            job.payload.on_error,
        )
    except Exception as exc:
        return failure_outcome(job, _error_text(exc), traceback.format_exc(), started_at)
