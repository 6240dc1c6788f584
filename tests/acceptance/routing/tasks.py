"""Celery tasks the routing tests run on both workers (loaded with ``--include`` / ``-I``).

Attempts are recorded in the side table ``routing_attempt`` (created by the ``attempts``
fixture) with the database clock, so a test can check the delay between two attempts. Group
children and callbacks record each run in ``routing_group_call`` (created by the ``calls``
fixture of ``test_group_dispatch``) with the pid of the process that ran it, so a test can tell
which worker ran what, and how many times.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from celery import shared_task
from django.db import connection


def record_attempt(key: str, retries: int) -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO routing_attempt (key, retries, at) VALUES (%s, %s, clock_timestamp())",
            [key, retries],
        )


@shared_task(name="tests.acceptance.routing.tasks.boom")
def boom(text: str) -> None:
    """Fails with ``text`` in the error (the real text must reach the caller)."""
    raise RuntimeError(text)


@shared_task(bind=True, name="tests.acceptance.routing.tasks.retry_then_succeed", max_retries=5)
def retry_then_succeed(self: Any, key: str, fail_times: int, countdown: float) -> dict[str, Any]:
    """Asks for a retry ``fail_times`` times with ``countdown`` seconds, then succeeds."""
    record_attempt(key, self.request.retries)
    if self.request.retries < fail_times:
        raise self.retry(countdown=countdown, max_retries=fail_times + 1)
    return {"attempts": self.request.retries + 1}


@shared_task(bind=True, name="tests.acceptance.routing.tasks.retry_forever", max_retries=5)
def retry_forever(self: Any, key: str, countdown: float, max_retries: int) -> None:
    """Always asks for a retry; Celery raises MaxRetriesExceededError after ``max_retries``."""
    record_attempt(key, self.request.retries)
    raise self.retry(countdown=countdown, max_retries=max_retries)


@shared_task(bind=True, name="tests.acceptance.routing.tasks.retry_past_task_limit", max_retries=1)
def retry_past_task_limit(self: Any, fail_times: int) -> dict[str, Any]:
    """Task-level max_retries=1, but each call raises the limit: Celery honours the call's."""
    if self.request.retries < fail_times:
        raise self.retry(countdown=0.2, max_retries=fail_times + 1)
    return {"attempts": self.request.retries + 1}


# --- groups (test_group_dispatch): every run is recorded in ``routing_group_call`` ---------------


def record_group_call(kind: str, key: str, args: list[Any]) -> None:
    """One row per run: what ran (``kind``), with which arguments, in which process."""
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO routing_group_call (kind, key, args, pid, at) "
            "VALUES (%s, %s, %s::jsonb, %s, clock_timestamp())",
            [kind, key, json.dumps(args), os.getpid()],
        )


@shared_task(name="tests.acceptance.routing.tasks.group_square")
def group_square(n: int, key: str, delay: float = 0.0) -> int:
    """A group child: sleeps ``delay`` seconds (to finish out of order), records, returns n*n."""
    time.sleep(delay)
    record_group_call("child", key, [n])
    return n * n


@shared_task(name="tests.acceptance.routing.tasks.group_done")
def group_done(results: list[Any], key: str) -> dict[str, Any]:
    """A group's on_success: ``cb(results, *own_args)``."""
    record_group_call("on_success", key, [results, key])
    return {"results": results, "key": key}


@shared_task(name="tests.acceptance.routing.tasks.group_failed")
def group_failed(group_id: str, failures: list[dict[str, str]], key: str) -> dict[str, Any]:
    """A group's on_error on Postgres: ``eb(group_id, failures, *own_args)``."""
    record_group_call("on_error", key, [group_id, failures, key])
    return {"group_id": group_id, "failures": failures, "key": key}


# --- handles (test_celery_handles) --------------------------------------------------------------


@shared_task(name="tests.acceptance.routing.tasks.sleep_then_return")
def sleep_then_return(seconds: float, value: Any) -> Any:
    """Returns ``value`` after ``seconds``: a result that arrives after a first wait gave up."""
    time.sleep(seconds)
    return value
