"""Tasks that misbehave on purpose, for the tests that no job can wedge or kill a worker thread.

Loaded by worker subprocesses with ``--include tests.acceptance.delivery.poison``. Every task
here is deterministic: it misbehaves the same way on every attempt, so a test can say exactly
what the outcome must be.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from django.dispatch import receiver

from pg_queue import task
from pg_queue.core.exceptions import Retry
from pg_queue.signals import job_failed
from tests.acceptance.delivery.tasks import _execute


class CustomBaseException(BaseException):
    """Not an Exception: ``except Exception`` does not see it."""


@task(queue="poison")
def ok(n: int) -> int:
    return n


@task(queue="poison", max_attempts=1)
def returns_nul() -> str:
    return "text from a PDF\x00with a NUL"


@task(queue="poison", max_attempts=3)
def returns_a_lot(size: int) -> str:
    return "x" * size


@task(queue="poison", max_attempts=2, retry_backoff=0.01)
def raises_with_nul() -> None:
    raise ValueError("bad byte \x00 in the error text")


@task(queue="poison", max_attempts=2)
def retries_forever() -> None:
    raise Retry(delay=float("inf"), reason="never again")


@task(queue="poison", max_attempts=2)
def retries_past_the_calendar() -> None:
    raise Retry(delay=1e300, reason="in a very long time")


def _backoff_that_raises(attempt: int) -> float:
    raise ZeroDivisionError("user backoff bug")


@task(queue="poison", max_attempts=2, retry_backoff=_backoff_that_raises)
def fails_with_broken_backoff() -> None:
    raise RuntimeError("task failed")


@task(queue="poison", max_attempts=5000, retry_backoff=1.0)
def fails_late() -> None:
    """Used with ``attempts`` pushed past 1,024 by the test: 2**attempt overflows a float."""
    raise RuntimeError("failed once more")


@task(queue="poison", max_attempts=1)
def raises_system_exit() -> None:
    raise SystemExit(3)


@task(queue="poison", max_attempts=1)
def raises_keyboard_interrupt() -> None:
    raise KeyboardInterrupt


@task(queue="poison", max_attempts=1)
def raises_base_exception() -> None:
    raise CustomBaseException("not an Exception")


@task(queue="poison", max_attempts=1)
def fails_once_for_all() -> None:
    raise RuntimeError("failed for good")


@task(queue="poison")
def sleeps(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


#: How long the blocking job_failed receiver waits for the test to release it.
RECEIVER_BLOCK_MAX = 30.0


@receiver(job_failed)
def _slow_receiver(sender: Any, task_id: Any, task_name: str, **kwargs: Any) -> None:
    """For tasks of this module: record the thread it runs on, then block until released.

    Blocks only while the side table says so (``delivery_flag`` holds 'block-receivers'), so
    the other tests of this module are not slowed down.
    """
    if (
        not task_name.startswith(__name__)
        and task_name != "tests.acceptance.delivery.poison.expired"
    ):
        return
    _execute(
        "INSERT INTO delivery_exec (task_id, attempt, worker_id, started_at) "
        "VALUES (%(task_id)s, 0, %(thread)s, clock_timestamp())",
        {"task_id": task_id, "thread": threading.current_thread().name},
    )
    deadline = time.monotonic() + RECEIVER_BLOCK_MAX
    while time.monotonic() < deadline:
        if not _execute("SELECT 1 FROM delivery_flag WHERE flag = 'block-receivers'", {}):
            return
        time.sleep(0.05)
