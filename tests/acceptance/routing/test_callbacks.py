"""Callbacks on the Postgres transport: who gets what, and every drop branch still answers.

The callbacks are ``workers.tasks.on_done(result, label)`` and
``workers.tasks.on_failed(task_id, error, label)``: they return what they were given, so the
test reads it back from ``pg_task_result``. (The Celery side of the same contract is covered by
the execution tests, whose callbacks run on both transports.)
"""

from __future__ import annotations

import json
import uuid

import pytest
from celery import signature

from pg_queue.core.payload import ContinuationSpec
from pg_queue.db import connection, queries
from pg_queue.models import DeadLetter, Job, TaskResult
from pg_queue.producer import enqueue
from tests.acceptance.routing.conftest import flag_off, flag_on, insert_raw_message
from tests.harness import wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

CALLBACK_WAIT = 30.0


def label() -> str:
    return f"cb-{uuid.uuid4().hex[:8]}"


def callback_result(task_name: str, tag: str) -> dict:
    row = wait_for(
        lambda: TaskResult.objects.filter(task_name=task_name, result__label=tag).first(),
        CALLBACK_WAIT,
        f"{task_name} called with label {tag}",
    )
    return row.result


def on_done(queues, tag: str):
    return signature("workers.tasks.on_done", args=(tag,)).set(queue=queues.callbacks)


def on_failed(queues, tag: str):
    return signature("workers.tasks.on_failed", kwargs={"label": tag}).set(queue=queues.callbacks)


def on_failed_spec(queues, tag: str) -> dict:
    return {
        "task_name": "workers.tasks.on_failed",
        "queue": queues.callbacks,
        "args": [],
        "kwargs": {"label": tag},
    }


def test_on_success_gets_the_result_first_and_keeps_its_own_positional_args(
    dispatcher, queues, pg_worker
):
    tag = label()
    with flag_on():
        handle = dispatcher.dispatch_with_callback(
            "workers.tasks.add", [2, 3], queue=queues.main, on_success=on_done(queues, tag)
        )
    assert handle.transport == "postgres"
    assert callback_result("workers.tasks.on_done", tag) == {"result": 5, "label": tag}


def test_on_error_gets_the_task_id_and_the_real_error_text(dispatcher, queues, pg_worker):
    tag = label()
    with flag_on():
        handle = dispatcher.dispatch_with_callback(
            "tests.acceptance.routing.tasks.boom",
            ["quota exceeded for bucket b-9"],
            queue=queues.main,
            on_error=on_failed(queues, tag),
        )
    assert callback_result("workers.tasks.on_failed", tag) == {
        "task_id": handle.task_id,
        "error": "RuntimeError: quota exceeded for bucket b-9",
        "label": tag,
    }


def test_on_error_fires_once_retries_are_exhausted(dispatcher, queues, pg_worker):
    tag = label()
    with flag_on():
        handle = dispatcher.dispatch_with_callback(
            "workers.tasks.always_fails",
            ["still broken"],
            queue=queues.main,
            on_error=on_failed(queues, tag),
        )
    got = callback_result("workers.tasks.on_failed", tag)
    assert (got["task_id"], got["error"]) == (handle.task_id, "ValueError: still broken")
    letter = DeadLetter.objects.get(task_id=handle.task_id)
    assert (letter.reason, letter.attempts) == ("exhausted", 2)


def test_unknown_task_drop_fires_on_error(dispatcher, queues, pg_worker):
    tag = label()
    with flag_on():
        handle = dispatcher.dispatch_with_callback(
            "no.such.task", [1], queue=queues.main, on_error=on_failed(queues, tag)
        )
    got = callback_result("workers.tasks.on_failed", tag)
    assert got["task_id"] == handle.task_id
    assert "no task named 'no.such.task'" in got["error"]
    assert DeadLetter.objects.get(task_id=handle.task_id).reason == "unknown_task"


def test_undecodable_payload_drop_fires_on_error(queues, pg_worker):
    tag = label()
    task_id = insert_raw_message(
        "workers.tasks.add",
        json.dumps({"args": "not-a-list", "kwargs": {}, "on_error": on_failed_spec(queues, tag)}),
        queues.main,
    )
    got = callback_result("workers.tasks.on_failed", tag)
    assert got["task_id"] == task_id
    assert "payload args is str, expected a list" in got["error"]
    assert DeadLetter.objects.get(task_id=task_id).reason == "undecodable"


def test_attempts_already_exhausted_drop_fires_on_error_without_running(queues, pg_worker):
    tag = label()
    task_id = insert_raw_message(
        "workers.tasks.add",
        json.dumps({"args": [1, 2], "kwargs": {}, "on_error": on_failed_spec(queues, tag)}),
        queues.main,
        attempts=1,
        max_attempts=1,
    )
    got = callback_result("workers.tasks.on_failed", tag)
    assert got["task_id"] == task_id
    assert "attempts 2 exceed max_attempts 1" in got["error"]
    letter = DeadLetter.objects.get(task_id=task_id)
    assert letter.reason == "exhausted"
    assert TaskResult.objects.get(task_id=task_id).status == "failed"


def test_lease_expired_on_the_last_attempt_fires_on_error(queues, pg_worker):
    """A worker claimed the job and died: any live worker's re-arm dead-letters it."""
    tag = label()
    parked = queues.unserved("lease")
    handle = enqueue(
        "workers.tasks.add",
        [1, 2],
        queue=parked,
        max_attempts=1,
        on_error=ContinuationSpec(
            task_name="workers.tasks.on_failed", queue=queues.callbacks, kwargs={"label": tag}
        ),
    )
    with connection.worker_connection() as conn:
        taken = queries.job_claim(
            conn, queue=parked, limit=1, lease=0.2, worker_id="worker-that-died"
        )
    assert [m.task_id for m in taken] == [handle.task_id]

    got = callback_result("workers.tasks.on_failed", tag)
    assert got["task_id"] == str(handle.task_id)
    assert "lease expired on the last attempt: worker worker-that-died" in got["error"]
    assert DeadLetter.objects.get(task_id=handle.task_id).reason == "lease_expired"


def test_a_continuation_that_cannot_be_enqueued_is_logged_and_the_job_still_acked(
    queues, pg_worker
):
    long_queue = "q" * 250  # too long for the column; only a hand-written payload gets here
    task_id = insert_raw_message(
        "workers.tasks.add",
        json.dumps(
            {
                "args": [20, 22],
                "kwargs": {},
                "on_success": {
                    "task_name": "workers.tasks.on_done",
                    "queue": long_queue,
                    "args": [],
                    "kwargs": {},
                },
            }
        ),
        queues.main,
    )
    row = wait_for(
        lambda: TaskResult.objects.filter(task_id=task_id).first(), CALLBACK_WAIT, "the ack"
    )
    assert (row.status, row.result) == ("succeeded", 42)
    assert not Job.objects.filter(task_id=task_id).exists()  # acked, not redelivered
    assert not DeadLetter.objects.filter(task_id=task_id).exists()
    wait_for(
        lambda: (
            f"continuation not enqueued (job still acked) task_id={task_id}" in pg_worker.output()
        ),
        5,
        "the worker's log line about the lost continuation",
    )
    assert not Job.objects.filter(task_name="workers.tasks.on_done").exists()


@pytest.mark.parametrize("routing", [flag_on, flag_off], ids=["postgres", "celery"])
@pytest.mark.parametrize(
    ("make_sig", "fragment"),
    [
        (lambda q: signature("workers.tasks.on_done"), "has no queue"),
        (lambda q: signature("workers.tasks.on_done").set(queue="q" * 250), "queue is 250"),
        (lambda q: signature("x" * 301).set(queue=q.callbacks), "task name is 301"),
    ],
    ids=["no-queue", "queue-too-long", "task-name-too-long"],
)
def test_a_callback_that_could_never_be_enqueued_is_refused_at_dispatch_on_both_transports(
    dispatcher, queues, routing, make_sig, fragment
):
    with routing(), pytest.raises(ValueError, match=fragment):
        dispatcher.dispatch_with_callback(
            "workers.tasks.add", [1, 2], queue=queues.main, on_success=make_sig(queues)
        )
    assert not Job.objects.exists()
