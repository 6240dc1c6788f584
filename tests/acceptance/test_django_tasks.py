"""Django's Tasks framework end to end: Django's API enqueues, a real ``run_pg_worker`` runs.

Only ``django.tasks`` is used to enqueue and to read results; the worker subprocess runs with
``tests.django_tasks_settings`` (the example settings plus ``TASKS`` on pg_queue's backend).
"""

from __future__ import annotations

import datetime as dt
import importlib
from types import ModuleType
from typing import Any

import pytest

pytest.importorskip("django.tasks", reason="Django's Tasks framework needs Django 6.0+")

from django.tasks import TaskResultStatus, default_task_backend
from django.utils import timezone

from tests.harness import Workers

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

TASKS_SETTINGS = "tests.django_tasks_settings"


@pytest.fixture
def dt_tasks(settings: Any) -> ModuleType:
    """workers.django_tasks, in a test process whose TASKS is the worker's."""
    settings.TASKS = importlib.import_module(TASKS_SETTINGS).TASKS
    return importlib.import_module("workers.django_tasks")


def run_django_worker(workers: Workers, *flags: str) -> str:
    code, output = workers.run(*flags, env={"DJANGO_SETTINGS_MODULE": TASKS_SETTINGS})
    assert code == 0, output
    assert "pg_queue worker done:" in output, output
    return output


def test_worker_runs_django_tasks_and_results_say_how_they_ended(dt_tasks, workers) -> None:
    added = dt_tasks.add.enqueue(2, 3)
    described = dt_tasks.describe_run.using(priority=7).enqueue("ctx")
    failed = dt_tasks.fail.enqueue("no data for March")
    multiplied = dt_tasks.async_multiply.enqueue(6, 7)
    urgent = dt_tasks.urgent_echo.enqueue({"k": [1, 2]})
    assert dt_tasks.add.get_result(added.id).status == TaskResultStatus.READY

    output = run_django_worker(workers, "--queues", "default,django", "--concurrency", "2")
    assert "succeeded=4" in output
    assert "dead_lettered=1" in output

    added.refresh()
    assert added.status == TaskResultStatus.SUCCESSFUL
    assert added.return_value == 5
    assert added.errors == []
    assert added.attempts == 1
    assert added.enqueued_at <= added.started_at <= added.finished_at
    assert added.last_attempted_at == added.started_at

    assert dt_tasks.async_multiply.get_result(multiplied.id).return_value == 42
    assert dt_tasks.urgent_echo.get_result(urgent.id).return_value == {"k": [1, 2]}

    context = dt_tasks.describe_run.get_result(described.id).return_value
    assert context["label"] == "ctx"
    assert context["id"] == described.id
    assert context["attempt"] == 1
    assert context["status"] == "RUNNING"
    assert (context["queue_name"], context["priority"]) == ("default", 7)
    assert context["args"] == ["ctx"]
    assert len(context["worker_ids"]) == 1
    assert context["worker_ids"][0]

    failure = default_task_backend.get_result(failed.id)
    assert failure.status == TaskResultStatus.FAILED
    assert failure.is_finished
    assert failure.finished_at is not None
    with pytest.raises(ValueError, match="Task failed"):
        failure.return_value  # noqa: B018
    [error] = failure.errors
    assert error.exception_class is dt_tasks.ReportGenerationError
    assert "ReportGenerationError: no data for March" in error.traceback
    assert "raise ReportGenerationError(reason)" in error.traceback


def test_higher_django_priority_runs_first(dt_tasks, workers) -> None:
    results = {
        priority: dt_tasks.describe_run.using(priority=priority).enqueue(str(priority))
        for priority in (-50, 0, 100, 10)
    }
    # One job per claim: the claim takes the highest priority first, but the rows one claim
    # returns run in the order the UPDATE returns them (reported with this backend).
    run_django_worker(workers, "--concurrency", "1", "--batch-size", "1")
    started = sorted(
        results, key=lambda p: default_task_backend.get_result(results[p].id).started_at
    )
    assert started == [100, 10, 0, -50]


def test_task_started_and_task_finished_are_sent_in_the_worker(dt_tasks, workers) -> None:
    ok = dt_tasks.add.enqueue(1, 1)
    bad = dt_tasks.fail.enqueue("boom")
    report = dt_tasks.signals_seen.using(priority=-100).enqueue()  # runs last
    run_django_worker(workers, "--concurrency", "1", "--batch-size", "1")
    seen = dt_tasks.signals_seen.get_result(report.id).return_value
    assert seen == [
        ["started", ok.id, "RUNNING"],
        ["finished", ok.id, "SUCCESSFUL"],
        ["started", bad.id, "RUNNING"],
        ["finished", bad.id, "FAILED"],
        ["started", report.id, "RUNNING"],
    ]


def test_a_backend_with_max_attempts_retries_a_task_that_raises(dt_tasks, workers) -> None:
    retried = dt_tasks.succeed_on_attempt.using(backend="retrying").enqueue(2)
    exhausted = dt_tasks.succeed_on_attempt.using(backend="retrying").enqueue(3)
    once = dt_tasks.succeed_on_attempt.enqueue(2)  # the default backend: one attempt
    # Deferred past the retries' backoff (at most a second); a burst worker waits for it.
    later = timezone.now() + dt.timedelta(seconds=4)
    report = dt_tasks.signals_seen.using(run_after=later).enqueue()
    run_django_worker(workers, "--concurrency", "1", "--batch-size", "1")

    retried.refresh()
    assert (retried.status, retried.return_value, retried.attempts) == ("SUCCESSFUL", 2, 2)
    assert retried.backend == "retrying"
    for failed, attempts in [(exhausted, 2), (once, 1)]:
        failed.refresh()
        assert (failed.status, failed.attempts) == ("FAILED", attempts)
        assert failed.errors[0].exception_class is ConnectionError
    signals = dt_tasks.signals_seen.get_result(report.id)
    assert signals.started_at >= later
    seen = signals.return_value
    finished = [(event[1], event[2]) for event in seen if event[0] == "finished"]
    # task_finished only for the attempt that ended the job
    assert sorted(finished) == sorted(
        [(retried.id, "SUCCESSFUL"), (exhausted.id, "FAILED"), (once.id, "FAILED")]
    )
    started = [event[1] for event in seen if event[0] == "started"]
    assert sorted(started) == sorted([retried.id] * 2 + [exhausted.id] * 2 + [once.id, report.id])
