"""Cancel from the admin while a real worker runs the job: the worker stops it."""

from __future__ import annotations

import time
from typing import Any

import pytest

from pg_queue.models import Job
from pg_queue.producer import enqueue

LIST = "/admin/pg_queue/job/"


@pytest.fixture
def worker_env(worker_env: dict[str, str]) -> dict[str, str]:
    """A 3 s lease: the heartbeat (every lease/3) carries the cancel request within a second."""
    return {**worker_env, "PG_QUEUE_LEASE_SECONDS": "3", "PG_QUEUE_REARM_INTERVAL": "1"}


def _wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_running_job_cancelled_in_the_admin_is_stopped_by_its_worker(
    admin_client, background_worker
):
    handle = enqueue("workers.tasks.cancellable", args=[60])
    worker = background_worker("--concurrency", "1")
    _wait_for(
        lambda: Job.objects.filter(task_id=handle.task_id, state="claimed").exists(),
        timeout=30,
        what="the worker to claim the job",
    )
    msg = Job.objects.get(task_id=handle.task_id)
    asked = admin_client.post(
        LIST, {"action": "cancel_jobs", "index": "0", "_selected_action": [msg.pk]}
    )
    assert b"1 running" in asked.content
    data: dict[str, list[str]] = {}
    for name, value in asked.context["echo"]:
        data.setdefault(name, []).append(value)
    started = time.monotonic()
    assert admin_client.post(LIST, {**data, "pgq_confirm": "yes"}).status_code == 302

    outcome = handle.wait(timeout=20)
    assert outcome.status == "cancelled", outcome
    assert "while it was running" in outcome.error
    assert time.monotonic() - started < 15  # stopped early, not after its 60 s
    assert not Job.objects.filter(task_id=handle.task_id).exists()
    code, output = worker.finish(timeout=60)
    assert code == 0, output
