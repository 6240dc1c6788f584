"""The worker's side of operator cancellation (``cancel_requested`` on a message row)."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest
from django.db import connection

from pg_queue.core.payload import ContinuationSpec
from pg_queue.producer import enqueue

CANCEL_ERROR = "workers.tasks.on_failed"


@pytest.fixture
def worker_env(worker_env: dict[str, str]) -> dict[str, str]:
    """A 3 s lease: the heartbeat (every lease/3) notices a cancel request within a second."""
    return {**worker_env, "PG_QUEUE_LEASE_SECONDS": "3", "PG_QUEUE_REARM_INTERVAL": "1"}


def _value(sql: str, params: list[Any] | None = None) -> Any:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        row = cursor.fetchone()
    return None if row is None else row[0]


def _wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def _outcome(task_id: uuid.UUID) -> tuple[str, Any, str] | None:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT status, result, error FROM pg_task_result WHERE task_id = %s", [task_id]
        )
        row = cursor.fetchone()
    if row is None:
        return None
    status, result, error = row
    return status, None if result is None else json.loads(result), error


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_running_job_cancelled_by_an_operator_stops_and_fires_on_error(
    background_worker: Any,
) -> None:
    handle = enqueue(
        "workers.tasks.cancellable",
        args=[30],
        on_error=ContinuationSpec(task_name=CANCEL_ERROR, queue="default"),
    )
    env_worker = background_worker("--concurrency", "2")
    _wait_for(
        lambda: (
            _value("SELECT state FROM pg_queue_message WHERE task_id = %s", [handle.task_id])
            == "claimed"
        ),
        timeout=30,
        what="the job to be claimed",
    )
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE pg_queue_message SET cancel_requested = true WHERE task_id = %s",
            [handle.task_id],
        )
    _wait_for(lambda: _outcome(handle.task_id) is not None, timeout=20, what="the outcome")
    status, result, error = _outcome(handle.task_id) or ("", None, "")
    assert status == "cancelled"
    assert result is None
    assert "cancelled by an operator while it was running" in error
    assert _value("SELECT count(*) FROM pg_queue_message WHERE task_id = %s", [handle.task_id]) == 0
    assert _value("SELECT count(*) FROM pg_queue_dead_letter") == 0
    _wait_for(
        lambda: (
            _value(
                "SELECT count(*) FROM pg_task_result WHERE task_name = %s AND status = 'succeeded'",
                [CANCEL_ERROR],
            )
            == 1
        ),
        timeout=15,
        what="on_error to run",
    )
    fired = json.loads(
        _value("SELECT result FROM pg_task_result WHERE task_name = %s", [CANCEL_ERROR])
    )
    assert fired["task_id"] == str(handle.task_id)
    assert "cancelled by an operator" in fired["error"]
    env_worker.stop()


@pytest.mark.django_db(transaction=True)
def test_job_claimed_with_a_cancel_request_never_runs(run_worker: Any) -> None:
    handle = enqueue("workers.tasks.echo", args=[5])
    other = enqueue("workers.tasks.echo", args=[6])
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE pg_queue_message SET cancel_requested = true WHERE task_id = %s",
            [handle.task_id],
        )
    code, output = run_worker()
    assert code == 0, output
    status, result, error = _outcome(handle.task_id) or ("", None, "")
    assert (status, result) == ("cancelled", None)
    assert "before it started" in error
    assert _outcome(other.task_id) == ("succeeded", 6, "")
