"""Running one claimed job and turning what happened into a finish instruction.

Runs in a task thread, outside any transaction. ``run_job`` never raises, whatever the task
does: a return, ``Retry``, an exception, any ``BaseException`` (``SystemExit``,
``KeyboardInterrupt``, ...), a user backoff that raises, a result that cannot be stored: each
becomes a ``Success``, ``RetryLater``, ``Bury`` or ``Cancelled`` for the finisher to write. What
is checked here is checked before the database sees it, so a poison result costs one job its
outcome, not a whole batch its write.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import random
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.db import close_old_connections

from pg_queue.celery_compat import run_celery_task
from pg_queue.core.conf import queue_settings
from pg_queue.core.context import JobContext
from pg_queue.core.exceptions import PayloadError, Reject, Retry
from pg_queue.core.outcomes import (
    Bury,
    Cancelled,
    ClaimedJob,
    Outcome,
    RetryLater,
    Success,
    storable_text,
)
from pg_queue.core.payload import TaskPayload, coerce_json, dumps, validate_delay
from pg_queue.models import DeadLetterReason
from pg_queue.tasks import Task

logger = logging.getLogger("pg_queue.worker")

#: Past this many doublings every backoff is at its ceiling anyway; the cap keeps 2**n a float.
BACKOFF_MAX_DOUBLINGS = 64

#: Error texts of operator cancellations (what on_error receives).
CANCELLED_BEFORE_START = "cancelled by an operator before it started"
CANCELLED_WHILE_RUNNING = "cancelled by an operator while it was running"


@dataclass(frozen=True, slots=True)
class JobRun:
    """A claimed job with its decoded payload and resolved task: what one run needs."""

    msg: ClaimedJob
    payload: TaskPayload
    task: Task | Any  # a native Task or a Celery task
    claimed_mono: float  # time.monotonic() when the claim returned
    time_limit: float = 0.0  # seconds; 0 = none


def backoff_delay(task: Task | Any, attempt: int) -> float:
    """Seconds before the next attempt: exponential with equal jitter, capped. Never raises.

    A native task may give a base (float) or a callable(attempt) -> seconds. A callable that
    raises or returns something that is not a usable delay is logged, and the default
    exponential backoff is used instead: a bug in a backoff must not lose the retry.
    """
    conf = queue_settings()
    spec = getattr(task, "retry_backoff", None) if isinstance(task, Task) else None
    if callable(spec):
        try:
            return validate_delay(spec(attempt), "retry_backoff")
        except Exception as exc:
            logger.error(
                "retry_backoff of %s failed for attempt %d, using the default backoff: %s: %s",
                getattr(task, "name", task),
                attempt,
                type(exc).__name__,
                exc,
            )
            spec = None
    base = conf.retry_backoff if spec is None else float(spec)
    doublings = min(max(0, attempt - 1), BACKOFF_MAX_DOUBLINGS)
    ceiling = min(conf.retry_backoff_max, base * 2.0**doublings)
    if not math.isfinite(ceiling) or ceiling < 0:
        ceiling = conf.retry_backoff_max
    return ceiling / 2 + random.uniform(0, ceiling / 2)


def error_text(exc: BaseException) -> str:
    """``Type: message`` (or just ``Type``), storable whatever the message contains."""
    try:
        text = str(exc)
    except Exception:  # a __str__ that raises must not cost the outcome
        text = "<exception text could not be rendered>"
    return storable_text(f"{type(exc).__name__}: {text}" if text else type(exc).__name__)


def _traceback_text() -> str:
    return storable_text(traceback.format_exc())


def _call(job: JobRun, worker_id: str, cancel_check: Callable[[], bool]) -> Any:
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
    job: JobRun, error: str, tb: str, started_at: dt.datetime, delay: float | None = None
) -> RetryLater | Bury:
    """Retry later while attempts remain, else dead-letter with the last error and traceback."""
    msg = job.msg
    if msg.attempts < msg.max_attempts:
        wait = backoff_delay(job.task, msg.attempts) if delay is None else delay
        return RetryLater(msg, wait, error, on_error=job.payload.on_error)
    return Bury(msg, DeadLetterReason.EXHAUSTED, error, tb, started_at, job.payload.on_error)


def unstorable(job: JobRun, what: str, problem: str, started_at: dt.datetime | None) -> Bury:
    """Dead-letter a job whose outcome the database could not take (no retry: the same run
    would produce the same outcome). ``on_error`` still fires."""
    return Bury(
        job.msg,
        DeadLetterReason.UNSTORABLE,
        storable_text(f"{what} not storable: {problem}"),
        "",
        started_at,
        job.payload.on_error,
    )


def run_job(
    job: JobRun,
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
        try:
            close_old_connections()
        except Exception as exc:  # a broken connection is the next job's problem, not ours
            logger.warning("closing Django connections after a job failed: %s", exc)
    if cancel_check():
        return Cancelled(job.msg, CANCELLED_WHILE_RUNNING, job.payload.on_error)
    return outcome


def _run(
    job: JobRun, worker_id: str, started_at: dt.datetime, cancel_check: Callable[[], bool]
) -> Outcome:
    try:
        value = _call(job, worker_id, cancel_check)
    except Retry as retry:
        return _retry_outcome(job, retry, started_at)
    except Reject as reject:
        cause = reject.cause
        error = error_text(cause) if isinstance(cause, BaseException) else storable_text(str(cause))
        return Bury(
            job.msg,
            DeadLetterReason.EXHAUSTED,
            error,
            _traceback_text(),
            started_at,
            job.payload.on_error,
        )
    except BaseException as exc:  # SystemExit & co. from task code: failures
        return failure_outcome(job, error_text(exc), _traceback_text(), started_at)
    return _success_outcome(job, value, started_at)


def _retry_outcome(job: JobRun, retry: Retry, started_at: dt.datetime) -> Outcome:
    error = f"retry requested: {retry.reason}" if retry.reason else "retry requested"
    error = storable_text(error)
    delay: float | None = None
    if retry.delay is not None:
        try:
            delay = validate_delay(retry.delay, "Retry(delay=...)")
        except PayloadError as exc:
            return unstorable(job, "retry", str(exc), started_at)
    if retry.bounded_by_task:  # Celery checked max_retries already: always retry
        msg = job.msg
        return RetryLater(msg, delay or 0.0, error, msg.attempts + 1, on_error=job.payload.on_error)
    return failure_outcome(job, error, "", started_at, delay)


def _success_outcome(job: JobRun, value: Any, started_at: dt.datetime) -> Outcome:
    """Check the result as enqueue checks arguments; a result the database cannot store
    dead-letters the job with the reason, instead of failing the finisher's batch."""
    grouped = job.msg.group_id is not None  # its group collects results, its chain passes it on
    try:
        value = coerce_json(value, "result")
        result_json = dumps(value, "result") if grouped or _stores_result(job.task) else None
    except PayloadError as exc:
        return unstorable(job, "result", str(exc), started_at)
    except RecursionError as exc:
        return unstorable(job, "result", error_text(exc), started_at)
    limit = queue_settings().result_max_bytes
    if (
        result_json is not None
        and len(result_json) > limit // 4
        and (len(result_json.encode()) > limit)
    ):
        size = len(result_json.encode())
        return unstorable(
            job, "result", f"{size} bytes of JSON exceed RESULT_MAX_BYTES ({limit})", started_at
        )
    on_success = job.payload.on_success
    return Success(
        job.msg,
        result_json,
        started_at,
        on_success,
        value if on_success or grouped else None,
        job.payload.on_error,
    )
