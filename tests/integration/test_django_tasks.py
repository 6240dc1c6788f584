"""Django's Tasks framework on pg_queue, in-process: enqueue, validation, results, checks.

Only Django's own API drives the tasks (``django.tasks``); pg_queue's tables are read to show
where the jobs land. The worker side runs in tests/acceptance/test_django_tasks.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import importlib
import uuid
from types import ModuleType
from typing import Any

import pytest

pytest.importorskip("django.tasks", reason="Django's Tasks framework needs Django 6.0+")

from asgiref.sync import sync_to_async
from django.db import connections, transaction
from django.tasks import TaskResultStatus, default_task_backend, task_backends
from django.tasks.exceptions import InvalidTask, TaskResultDoesNotExist
from django.tasks.signals import task_enqueued
from django.utils import timezone

from pg_queue.checks import django_tasks_messages
from pg_queue.core.context import JobContext
from pg_queue.models import Job
from pg_queue.models import TaskResult as Outcome
from pg_queue.producer import enqueue
from pg_queue.registry import resolve
from pg_queue.tasks_backend import (
    TASK_NAME_PREFIX,
    JobAborted,
    PgQueueBackend,
    exception_class_path,
)

BACKEND = "pg_queue.tasks_backend.PgQueueBackend"
TASKS = {"default": {"BACKEND": BACKEND, "QUEUES": ["default", "django"]}}


@pytest.fixture(autouse=True)
def tasks_on_pg_queue(settings: Any) -> None:
    settings.TASKS = TASKS


@pytest.fixture
def dt_tasks(tasks_on_pg_queue: None) -> ModuleType:
    """workers.django_tasks, imported once TASKS allows its queues."""
    return importlib.import_module("workers.django_tasks")


def job_of(result: Any) -> Job:
    return Job.objects.get(task_id=uuid.UUID(result.id))


def test_the_default_backend_is_pg_queues_with_its_capabilities() -> None:
    backend = task_backends["default"]
    assert isinstance(backend, PgQueueBackend)
    assert default_task_backend.supports_defer
    assert default_task_backend.supports_priority
    assert default_task_backend.supports_get_result
    assert default_task_backend.supports_async_task


@pytest.mark.django_db
def test_enqueue_writes_a_job_in_the_task_queue_and_returns_a_ready_result(dt_tasks) -> None:
    result = dt_tasks.add.enqueue(2, 3)
    assert result.status == TaskResultStatus.READY
    assert uuid.UUID(result.id).version == 7
    assert (result.args, result.kwargs, result.backend) == ([2, 3], {}, "default")
    assert result.enqueued_at is not None
    assert result.started_at is None
    job = job_of(result)
    assert job.task_name == TASK_NAME_PREFIX + "workers.django_tasks.add"
    assert (job.queue_name, job.priority, job.state, job.max_attempts) == ("default", 0, "ready", 1)
    assert job.payload["args"][1:] == [2, 3]


@pytest.mark.django_db
def test_queue_name_is_the_pg_queue_queue_and_django_priority_is_the_job_priority(
    dt_tasks,
) -> None:
    urgent = dt_tasks.urgent_echo.enqueue("x")
    assert (job_of(urgent).queue_name, job_of(urgent).priority) == ("django", 50)
    low = dt_tasks.add.using(priority=-100).enqueue(1, 1)
    high = dt_tasks.add.using(priority=100).enqueue(1, 1)
    assert (job_of(low).priority, job_of(high).priority) == (-100, 100)


@pytest.mark.django_db(transaction=True)
def test_enqueue_rolls_back_with_the_callers_transaction(dt_tasks) -> None:
    rolled_back = None
    with contextlib.suppress(RuntimeError), transaction.atomic():
        rolled_back = dt_tasks.add.enqueue(1, 2)
        assert Job.objects.filter(task_id=rolled_back.id).exists()
        raise RuntimeError("the business write failed")
    assert rolled_back is not None
    assert not Job.objects.filter(task_id=rolled_back.id).exists()
    with pytest.raises(TaskResultDoesNotExist):
        default_task_backend.get_result(rolled_back.id)
    with transaction.atomic():
        committed = dt_tasks.add.enqueue(1, 2)
    assert job_of(committed).state == "ready"


@pytest.mark.django_db
def test_run_after_delays_the_job_and_comes_back_in_the_result(dt_tasks) -> None:
    when = timezone.now() + dt.timedelta(hours=1)
    result = dt_tasks.add.using(run_after=when).enqueue(1, 2)
    job = job_of(result)
    assert abs((job.available_at - when).total_seconds()) < 0.01
    fetched = dt_tasks.add.get_result(result.id)
    assert fetched.status == TaskResultStatus.READY
    assert fetched.task.run_after == when
    assert fetched.args == [1, 2]


def test_djangos_validation_rules_hold(dt_tasks) -> None:
    with pytest.raises(InvalidTask, match="Queue 'elsewhere' is not valid"):
        dt_tasks.add.using(queue_name="elsewhere")
    with pytest.raises(InvalidTask, match="priority must be a whole number"):
        dt_tasks.add.using(priority=101)
    with pytest.raises(InvalidTask, match="run_after must be an aware datetime"):
        dt_tasks.add.using(run_after=dt.datetime(2030, 1, 1))


def test_a_queue_name_no_worker_could_serve_is_refused(settings: Any) -> None:
    from django.tasks import task

    settings.TASKS = {"default": {"BACKEND": BACKEND, "QUEUES": []}}  # any queue, says Django
    from workers.tasks import add  # a module-level function to decorate

    with pytest.raises(InvalidTask, match="run_pg_worker --queues reads as a separator"):
        task(queue_name="a,b")(add.func)


@pytest.mark.django_db
def test_arguments_that_are_not_json_are_refused_before_anything_is_written(dt_tasks) -> None:
    with pytest.raises(TypeError):
        dt_tasks.add.enqueue(object(), 1)
    with pytest.raises(ValueError, match="NaN"):
        dt_tasks.add.enqueue(float("nan"), 1)
    assert not Job.objects.exists()


@pytest.mark.django_db
def test_task_enqueued_is_sent_with_the_result(dt_tasks) -> None:
    seen: list[Any] = []

    def record(sender: type, task_result: Any, **kwargs: Any) -> None:
        seen.append((sender, task_result.id, task_result.status))

    task_enqueued.connect(record)
    try:
        result = dt_tasks.add.enqueue(1, 2)
    finally:
        task_enqueued.disconnect(record)
    assert seen == [(PgQueueBackend, result.id, TaskResultStatus.READY)]


@pytest.mark.django_db
def test_get_result_of_unknown_malformed_and_foreign_ids_does_not_exist(dt_tasks) -> None:
    native = enqueue("workers.tasks.add", [1, 2])
    for result_id in [str(uuid.uuid4()), "not-a-uuid", str(native.task_id)]:
        with pytest.raises(TaskResultDoesNotExist):
            default_task_backend.get_result(result_id)


@pytest.mark.django_db
def test_running_job_reads_as_running(dt_tasks) -> None:
    result = dt_tasks.add.enqueue(1, 2)
    Job.objects.filter(task_id=result.id).update(state="claimed", attempts=1, worker_id="w-1")
    result.refresh()
    assert result.status == TaskResultStatus.RUNNING
    assert (result.worker_ids, result.attempts) == (["w-1"], 1)


def store_outcome(enqueued: Any, status: str, **fields: Any) -> None:
    """Finish ``enqueued``'s job as the worker's finisher would: its row goes, its outcome stays."""
    job = job_of(enqueued)
    job.delete()
    Outcome.objects.create(
        task_id=job.task_id,
        status=status,
        task_name=job.task_name,
        queue_name=job.queue_name,
        attempts=1,
        enqueued_at=job.enqueued_at,
        expires_at=timezone.now() + dt.timedelta(days=1),
        **fields,
    )


@pytest.mark.django_db
def test_a_stored_outcome_reads_as_successful_or_failed(dt_tasks) -> None:
    ok = dt_tasks.urgent_echo.enqueue({"a": 1})
    started = timezone.now()
    store_outcome(ok, "succeeded", result={"a": 1}, started_at=started)
    ok.refresh()
    assert (ok.status, ok.return_value, ok.errors) == ("SUCCESSFUL", {"a": 1}, [])
    assert (ok.started_at, ok.last_attempted_at) == (started, started)
    assert ok.finished_at is not None
    assert ok.args == [{"a": 1}]  # refresh keeps them
    fetched = dt_tasks.urgent_echo.get_result(ok.id)
    assert (fetched.args, fetched.kwargs, fetched.worker_ids) == ([], {}, [""])
    assert (fetched.task.queue_name, fetched.task.priority) == ("django", 50)

    cancelled = dt_tasks.add.enqueue(1, 2)
    store_outcome(cancelled, "cancelled", error="cancelled by an operator before it started")
    cancelled.refresh()
    assert cancelled.status == TaskResultStatus.FAILED
    [error] = cancelled.errors
    assert error.exception_class is JobAborted
    assert error.traceback == "cancelled by an operator before it started"


@pytest.mark.django_db
def test_a_task_from_another_module_path_does_not_match(dt_tasks) -> None:
    from django.tasks.exceptions import TaskResultMismatch

    result = dt_tasks.add.enqueue(1, 2)
    with pytest.raises(TaskResultMismatch):
        dt_tasks.fail.get_result(result.id)


@pytest.mark.django_db(transaction=True)
def test_aenqueue_and_aget_result(dt_tasks) -> None:
    async def go() -> tuple[Any, Any]:
        enqueued = await dt_tasks.async_multiply.aenqueue(6, 7)
        fetched = await dt_tasks.async_multiply.aget_result(enqueued.id)
        # The thread sync_to_async ran them in keeps its connection: close it, or the test
        # database cannot be dropped.
        await sync_to_async(connections.close_all, thread_sensitive=True)()
        return enqueued, fetched

    enqueued, fetched = asyncio.run(go())
    assert fetched.id == enqueued.id
    assert fetched.status == TaskResultStatus.READY
    assert fetched.args == [6, 7]


@pytest.mark.django_db
def test_the_worker_side_adapter_runs_the_task_with_context_and_signals(dt_tasks) -> None:
    """What run_pg_worker does with a claimed job of a Django task, without the worker."""
    result = dt_tasks.describe_run.enqueue("in-process")
    job = job_of(result)
    adapter = resolve(job.task_name)
    assert resolve(job.task_name) is adapter  # registered: the next job is a dictionary hit
    context = JobContext(
        task_id=job.task_id,
        task_name=job.task_name,
        queue_name=job.queue_name,
        attempt=1,
        max_attempts=1,
        worker_id="worker-a",
    )
    meta, *args = job.payload["args"]
    described = adapter.func(context, meta, *args, **job.payload["kwargs"])
    assert described == {
        "label": "in-process",
        "id": result.id,
        "attempt": 1,
        "status": "RUNNING",
        "queue_name": "default",
        "priority": 0,
        "args": ["in-process"],
        "worker_ids": ["worker-a"],
    }


def test_marked_names_that_are_not_django_tasks_are_unknown_tasks() -> None:
    from pg_queue.core.exceptions import TaskNotFound

    with pytest.raises(TaskNotFound, match="cannot be imported"):
        resolve(TASK_NAME_PREFIX + "no.such.module.task")
    with pytest.raises(TaskNotFound, match="is not a Django task"):
        resolve(TASK_NAME_PREFIX + "os.getcwd")
    with pytest.raises(TaskNotFound, match="native or Celery"):
        resolve("workers.django_tasks.add")  # unmarked: never imported by path


@pytest.mark.parametrize(
    ("traceback", "error", "path"),
    [
        ("Traceback ...\nValueError: boom\n", "ValueError: boom", "builtins.ValueError"),
        (
            "Traceback ...\nworkers.django_tasks.ReportGenerationError: x",
            "",
            "workers.django_tasks.ReportGenerationError",
        ),
        ("", "KeyError: 'a'", "builtins.KeyError"),
        ("", "cancelled by an operator before it started", "pg_queue.tasks_backend.JobAborted"),
        (
            "",
            "lease expired on the last attempt: worker w stopped renewing",
            "pg_queue.tasks_backend.JobAborted",
        ),
    ],
)
def test_a_failed_jobs_exception_class_is_read_back_from_what_pg_queue_stored(
    traceback: str, error: str, path: str
) -> None:
    assert exception_class_path(traceback, error) == path


def test_backend_check_reports_bad_options_and_queue_names(settings: Any) -> None:
    settings.TASKS = {
        "default": {
            "BACKEND": BACKEND,
            "QUEUES": ["default", "a=b"],
            "OPTIONS": {"MAX_ATTEMPTS": 0, "RETRIES": 3},
        }
    }
    ids = sorted(m.id for m in task_backends["default"].check())
    assert ids == ["pg_queue.E019", "pg_queue.E019", "pg_queue.E020"]
    settings.TASKS = TASKS
    assert task_backends["default"].check() == []


def test_django_without_the_tasks_framework_is_told_the_backend_is_absent() -> None:
    tasks = {"default": {"BACKEND": BACKEND}}
    [message] = django_tasks_messages(tasks, (5, 2, 9, "final", 0))
    assert message.id == "pg_queue.W004"
    assert "no Tasks framework" in message.msg
    assert django_tasks_messages(tasks, (6, 0, 0, "final", 0)) == []
    assert django_tasks_messages({"default": {"BACKEND": "x.Y"}}, (5, 2)) == []
