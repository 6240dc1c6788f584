"""The example backend's executions on both transports, and the seed-002 regressions: a request
that fails before dispatch never leaves its execution PENDING, and one that fails after dispatch
never overwrites it."""

from __future__ import annotations

import functools
import json
import logging
from typing import Any

import pytest
from celery.app.task import Context
from django.db import DatabaseError, transaction
from django.test import override_settings

from backend import executions
from backend.celery import app as celery_app
from backend.executions import (
    acquire_slot,
    record_dispatch,
    release_and_clean,
    stage_input,
    staged_input_path,
    start_execution,
)
from backend.models import Execution, ExecutionSlot, ExecutionStatus
from pg_queue.models import DeadLetter, Job, RoutingPin, TaskResult
from pg_queue.routing import RoutingDispatcher
from tests.acceptance.routing.conftest import flag_off, flag_on, insert_raw_message
from tests.harness import wait_for
from workers.executions import complete_execution, fail_execution

pytestmark = [pytest.mark.django_db(transaction=True)]

FINISH_WAIT = 30.0


class RecordingDispatcher(RoutingDispatcher):
    """The real dispatcher, remembering each dispatch and whether the input was staged then."""

    def __init__(self) -> None:
        super().__init__(celery_app)
        self.calls: list[tuple[str, str, bool]] = []

    def dispatch_with_callback(
        self, task_name: str, args: Any = None, kwargs: Any = None, **options: Any
    ) -> Any:
        execution_id = options.get("execution_id", "")
        self.calls.append((task_name, execution_id, staged_input_path(execution_id).exists()))
        return super().dispatch_with_callback(task_name, args, kwargs, **options)


def start(
    queues, text: str, dispatcher: RoutingDispatcher, *, queue: str | None = None
) -> Execution:
    return start_execution(
        "org-1",
        text,
        dispatcher=dispatcher,
        queue=queue or queues.main,
        callback_queue=queues.callbacks,
    )


def final(execution_id: Any) -> Execution:
    return wait_for(
        lambda: Execution.objects.filter(
            pk=execution_id, status__in=[ExecutionStatus.COMPLETED, ExecutionStatus.ERROR]
        ).first(),
        FINISH_WAIT,
        f"execution {execution_id} to finish",
    )


def assert_released(execution_id: Any) -> None:
    """The slot is released and the input deleted. finish_execution moves the status first
    and cleans up right after, so a test that saw the final status may be a moment early."""
    wait_for(
        lambda: (
            not ExecutionSlot.objects.filter(execution_id=execution_id).exists()
            and not staged_input_path(str(execution_id)).parent.exists()
        ),
        FINISH_WAIT,
        f"execution {execution_id} to release its slot and delete its input",
    )


# --- end to end, both transports ---------------------------------------------------------------


@pytest.mark.slow
def test_execution_on_postgres_completes_and_releases_everything(queues, pg_worker):
    with flag_on():
        execution = start(queues, "hello world", RoutingDispatcher(celery_app))
    assert (execution.status, execution.transport) == (ExecutionStatus.PENDING, "postgres")
    done = final(execution.pk)
    assert done.status == ExecutionStatus.COMPLETED, done.error
    assert done.result == {
        "execution_id": str(execution.pk),
        "output": "HELLO WORLD",
        "characters": 11,
    }
    assert (done.task_id, done.transport) == (execution.task_id, "postgres")
    assert TaskResult.objects.get(task_id=execution.task_id).status == "succeeded"
    assert RoutingPin.objects.get(execution_id=str(execution.pk)).transport == "postgres"
    assert_released(execution.pk)


@pytest.mark.slow
def test_execution_on_celery_completes_and_releases_everything(queues, celery_worker):
    with flag_off():
        execution = start(queues, "hello world", RoutingDispatcher(celery_app))
    assert execution.transport == "celery"
    done = final(execution.pk)
    assert done.status == ExecutionStatus.COMPLETED, done.error
    assert done.result["output"] == "HELLO WORLD"
    assert not TaskResult.objects.filter(task_id=execution.task_id).exists()
    assert_released(execution.pk)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("routing", "fixture"),
    [(flag_on, "pg_worker"), (flag_off, "celery_worker")],
    ids=["postgres", "celery"],
)
def test_failed_run_marks_the_execution_error_with_the_real_error_text(
    queues, routing, fixture, request
):
    request.getfixturevalue(fixture)
    with routing():
        execution = start(queues, "fail", RoutingDispatcher(celery_app))
    done = final(execution.pk)
    assert done.status == ExecutionStatus.ERROR
    assert f"RuntimeError: execution {execution.pk}: the input asked the run to fail" in done.error
    assert_released(execution.pk)


# --- the error callback's call shapes -----------------------------------------------------------


def open_execution(status: str = ExecutionStatus.EXECUTING) -> Execution:
    execution = Execution.objects.create(org_id="org-1", status=status)
    acquire_slot(execution)
    stage_input(str(execution.pk), "x")
    return execution


@pytest.mark.parametrize(
    ("call_args", "expected"),
    [
        (("tid-pg", "ValueError: bad input"), "ValueError: bad input"),
        ((Context(id="tid-celery"), RuntimeError("kaput"), "Traceback ..."), "RuntimeError: kaput"),
        (("tid-old",), "task tid-old failed (Celery passed no error text to the callback)"),
    ],
    ids=["postgres-(task_id,error)", "celery-(request,exc,traceback)", "celery-(task_id,)"],
)
def test_error_callback_records_the_error_text_of_every_call_shape(call_args, expected):
    execution = open_execution()
    fail_execution(*call_args, execution_id=str(execution.pk))
    execution.refresh_from_db()
    assert (execution.status, execution.error) == (ExecutionStatus.ERROR, expected)
    assert_released(execution.pk)


def test_celery_calls_the_error_callback_inline_with_request_exc_traceback():
    """Celery picks the (request, exc, traceback) shape only for errbacks taking 2+ args."""
    from celery.utils.functional import arity_greater

    header = fail_execution.__header__
    assert not isinstance(header, functools.partial)  # a bind=True task would be a partial
    assert arity_greater(header, 1)


def test_callbacks_never_overwrite_a_final_status():
    done = open_execution(ExecutionStatus.COMPLETED)
    failed = open_execution(ExecutionStatus.ERROR)
    fail_execution("tid", "late error", execution_id=str(done.pk))
    complete_execution({"late": True}, execution_id=str(failed.pk))
    done.refresh_from_db()
    failed.refresh_from_db()
    assert (done.status, done.error) == (ExecutionStatus.COMPLETED, "")
    assert (failed.status, failed.result) == (ExecutionStatus.ERROR, None)
    assert_released(done.pk)  # cleanup is idempotent and still runs
    assert_released(failed.pk)


# --- seed 002: failures in the request -----------------------------------------------------------


def test_staging_failure_marks_error_releases_the_slot_and_never_dispatches(queues, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    dispatcher = RecordingDispatcher()
    with flag_on(), override_settings(EXECUTION_STAGING_DIR=str(blocker / "staging")):
        execution = start(queues, "hello", dispatcher)
        assert_released(execution.pk)
    assert dispatcher.calls == []
    stored = Execution.objects.get(pk=execution.pk)
    assert stored.status == ExecutionStatus.ERROR
    assert stored.error.startswith("NotADirectoryError"), stored.error
    assert (execution.status, execution.error) == (stored.status, stored.error)
    assert not Job.objects.exists()
    assert not RoutingPin.objects.exists()


def test_dispatch_failure_marks_error_and_cleans_up_the_staged_input(queues):
    dispatcher = RecordingDispatcher()
    with flag_on():
        execution = start(queues, "hello", dispatcher, queue="q" * 250)
    assert dispatcher.calls == [(executions.RUN_TASK, str(execution.pk), True)]  # was staged
    stored = Execution.objects.get(pk=execution.pk)
    assert stored.status == ExecutionStatus.ERROR
    assert stored.error.startswith("dispatch failed: ValueError: queue is 250"), stored.error
    assert_released(execution.pk)
    assert not Job.objects.exists()


def test_a_failure_to_mark_error_still_releases_the_slot_and_cleans_up(queues, monkeypatch, caplog):
    def database_down(*args: Any, **kwargs: Any) -> bool:
        raise DatabaseError("connection to server lost")

    monkeypatch.setattr(executions, "mark_error_before_dispatch", database_down)
    dispatcher = RecordingDispatcher()
    with flag_on(), caplog.at_level(logging.ERROR, logger="backend.executions"):
        execution = start(queues, "hello", dispatcher, queue="q" * 250)
    assert dispatcher.calls[0][2] is True  # the input had been staged
    assert_released(execution.pk)
    assert "execution not marked ERROR" in caplog.text
    # The write that failed is not pretended: the row is still PENDING and the object says so.
    assert execution.status == ExecutionStatus.PENDING
    assert Execution.objects.get(pk=execution.pk).status == ExecutionStatus.PENDING


@pytest.mark.slow
def test_an_error_after_dispatch_never_overwrites_the_execution(
    queues, monkeypatch, run_worker, caplog
):
    def database_down(*args: Any, **kwargs: Any) -> None:
        raise DatabaseError("connection to server lost")

    monkeypatch.setattr(executions, "record_dispatch", database_down)
    parked = queues.unserved("after-dispatch")
    with flag_on(), caplog.at_level(logging.ERROR, logger="backend.executions"):
        execution = start(queues, "hello", RoutingDispatcher(celery_app), queue=parked)
    assert "dispatch not recorded (execution still runs)" in caplog.text
    stored = Execution.objects.get(pk=execution.pk)
    assert (stored.status, stored.error) == (ExecutionStatus.PENDING, "")
    assert ExecutionSlot.objects.filter(execution_id=execution.pk).exists()
    assert staged_input_path(str(execution.pk)).exists()
    assert Job.objects.filter(queue_name=parked).count() == 1

    # A worker for that queue comes up later and the execution completes normally.
    code, output = run_worker("--queues", f"{parked},{queues.callbacks}")
    assert code == 0, output
    done = final(execution.pk)
    assert done.status == ExecutionStatus.COMPLETED, done.error
    assert done.task_id  # recorded by the run itself, since the request could not
    assert_released(execution.pk)


def test_no_free_slot_marks_error_without_dispatching(queues):
    dispatcher = RecordingDispatcher()
    parked = queues.unserved("slots")
    with flag_on(), override_settings(EXECUTION_SLOTS_PER_ORG=1):
        first = start(queues, "one", dispatcher, queue=parked)
        second = start(queues, "two", dispatcher, queue=parked)
    assert first.status == ExecutionStatus.PENDING
    assert second.status == ExecutionStatus.ERROR
    assert second.error.startswith("SlotUnavailable: organisation 'org-1' already runs 1")
    assert [call[1] for call in dispatcher.calls] == [str(first.pk)]
    assert ExecutionSlot.objects.filter(execution_id=first.pk).exists()
    assert_released(second.pk)
    release_and_clean(str(first.pk))  # the parked first run never completes


def test_start_execution_inside_atomic_is_refused(queues):
    with transaction.atomic(), pytest.raises(RuntimeError, match=r"inside transaction\.atomic"):
        start(queues, "hello", RoutingDispatcher(celery_app))
    assert not Execution.objects.exists()


# --- seed 002: a dead-lettered job never leaves its execution open -----------------------------


@pytest.mark.slow
def test_dead_lettered_run_marks_its_execution_error_through_job_failed(queues, pg_worker):
    """No on_error callback here: only the job_failed receiver can close the execution."""
    execution = open_execution(ExecutionStatus.PENDING)
    task_id = insert_raw_message(
        executions.RUN_TASK,
        json.dumps({"args": "oops", "kwargs": {"execution_id": str(execution.pk)}}),
        queues.main,
    )
    record_dispatch(str(execution.pk), task_id, "postgres")
    done = final(execution.pk)
    assert done.status == ExecutionStatus.ERROR
    assert done.error.startswith("undecodable: payload args is str"), done.error
    assert DeadLetter.objects.get(task_id=task_id).reason == "undecodable"
    assert_released(execution.pk)


@pytest.mark.slow
def test_run_that_raises_without_callbacks_is_closed_by_job_failed(queues, pg_worker):
    execution = open_execution(ExecutionStatus.PENDING)
    stage_input(str(execution.pk), "fail")
    with flag_on():
        handle = RoutingDispatcher(celery_app).dispatch_async(
            executions.RUN_TASK, kwargs={"execution_id": str(execution.pk)}, queue=queues.main
        )
    done = final(execution.pk)
    assert done.status == ExecutionStatus.ERROR
    assert done.task_id == handle.task_id  # the run recorded its own task id
    assert "RuntimeError: execution" in done.error
    assert_released(execution.pk)


@pytest.mark.slow
def test_dead_lettered_callback_marks_its_execution_error_through_job_failed(queues, pg_worker):
    """The run finished but its callback could not: the execution must not stay EXECUTING."""
    execution = open_execution(ExecutionStatus.EXECUTING)
    task_id = insert_raw_message(
        "workers.executions.complete_execution",
        json.dumps({"args": {"not": "a list"}, "kwargs": {"execution_id": str(execution.pk)}}),
        queues.callbacks,
    )
    done = final(execution.pk)
    assert done.status == ExecutionStatus.ERROR
    assert done.error.startswith("complete_execution dead-lettered: undecodable:"), done.error
    assert DeadLetter.objects.get(task_id=task_id).reason == "undecodable"
    assert_released(execution.pk)
