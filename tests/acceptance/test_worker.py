"""``manage.py run_pg_worker --burst`` as a real subprocess against the test database."""

from __future__ import annotations

import json
import re
import signal

import pytest
from django.db import connection

from pg_queue.models import DeadLetter, Job, TaskResult, Worker
from pg_queue.producer import enqueue, enqueue_many
from tests.harness import Workers
from workers import tasks

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def insert_raw_message(task_name: str, payload_json: str, queue: str = "default") -> str:
    """A row written by something other than ``enqueue`` (old code, hand-written SQL...)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO pg_queue_message (task_id, queue_name, task_name, payload) "
            "VALUES (gen_random_uuid(), %s, %s, %s::jsonb) RETURNING task_id",
            [queue, task_name, payload_json],
        )
        return str(cursor.fetchone()[0])


def assert_clean_exit(code: int, output: str) -> None:
    """Exit 0 after the final stats line (a crash never reaches it)."""
    assert code == 0, output
    assert "pg_queue worker done:" in output, output


def test_burst_worker_exits_zero_when_there_is_nothing_to_do(run_worker):
    code, output = run_worker("--concurrency", "2")
    assert_clean_exit(code, output)
    assert "claimed=0" in output
    assert not Worker.objects.exists()  # unregistered on the way out


def test_burst_worker_runs_jobs_and_leaves_other_queues_alone(run_worker):
    handles = [tasks.add.enqueue(i, i) for i in range(5)]
    elsewhere = enqueue("workers.tasks.echo", [1], queue="not-mine")
    code, output = run_worker("--concurrency", "2")
    assert_clean_exit(code, output)
    assert "succeeded=5" in output
    for i, handle in enumerate(handles):
        result = TaskResult.objects.get(task_id=handle.task_id)
        assert (result.status, result.result, result.attempts) == ("succeeded", 2 * i, 1)
        assert result.started_at is not None
    assert list(Job.objects.values_list("task_id", "state")) == [(elsewhere.task_id, "ready")]
    assert not Worker.objects.exists()


def test_max_tasks_worker_exits_after_that_many_jobs_even_with_more_queued(run_worker):
    for i in range(7):
        tasks.echo.enqueue(i)
    code, output = run_worker(
        "--concurrency", "2", "--batch-size", "2", "--max-tasks", "3", burst=False
    )
    assert_clean_exit(code, output)
    assert "claimed=3 succeeded=3" in output
    assert TaskResult.objects.count() == 3
    assert Job.objects.filter(state="ready").count() == 4


def test_unknown_task_and_undecodable_payloads_are_dead_lettered_and_the_worker_goes_on(
    run_worker,
):
    before = tasks.echo.enqueue("before")
    unknown = enqueue("no.such.task", [1])
    garbage = insert_raw_message("workers.tasks.echo", '"garbage"')
    args_not_list = insert_raw_message("workers.tasks.echo", '{"args": {"a": 1}, "kwargs": {}}')
    kwargs_not_object = insert_raw_message("workers.tasks.echo", '{"args": [], "kwargs": [1]}')
    after = tasks.echo.enqueue("after")

    code, output = run_worker("--concurrency", "2")
    assert_clean_exit(code, output)

    assert not Job.objects.exists()
    letters = {str(d.task_id): d for d in DeadLetter.objects.all()}
    assert set(letters) == {str(unknown.task_id), garbage, args_not_list, kwargs_not_object}
    assert letters[str(unknown.task_id)].reason == "unknown_task"
    assert "no.such.task" in letters[str(unknown.task_id)].last_error
    for task_id, fragment in [
        (garbage, "payload is str"),
        (args_not_list, "args is dict"),
        (kwargs_not_object, "kwargs is list"),
    ]:
        assert letters[task_id].reason == "undecodable"
        assert fragment in letters[task_id].last_error
    assert letters[garbage].payload == "garbage"  # kept as it was, for an operator
    for task_id, letter in letters.items():
        outcome = TaskResult.objects.get(task_id=task_id)
        assert outcome.status == "failed"
        assert outcome.error == letter.last_error
    assert TaskResult.objects.get(task_id=before.task_id).result == "before"
    assert TaskResult.objects.get(task_id=after.task_id).result == "after"


def test_malformed_continuation_in_a_payload_is_dead_lettered_not_fatal(run_worker):
    """A stored on_success without a task name must not kill the worker (or loop forever)."""
    bad = insert_raw_message(
        "workers.tasks.echo",
        json.dumps({"args": [1], "kwargs": {}, "on_success": {"queue": "default"}}),
    )
    good = tasks.echo.enqueue("fine")
    code, output = run_worker("--concurrency", "2", timeout=60)
    assert_clean_exit(code, output)
    letter = DeadLetter.objects.get()
    assert (str(letter.task_id), letter.reason) == (bad, "undecodable")
    assert TaskResult.objects.get(task_id=bad).status == "failed"
    assert TaskResult.objects.get(task_id=good.task_id).result == "fine"
    assert not Job.objects.exists()


def test_flaky_task_retries_then_succeeds_with_attempts_recorded(run_worker):
    twice = tasks.flaky.enqueue(fail_times=2)
    once = tasks.flaky.enqueue(fail_times=1)
    never = tasks.flaky.enqueue(fail_times=0)
    code, output = run_worker("--concurrency", "3")
    assert_clean_exit(code, output)
    assert "retried=3" in output
    for handle, attempts in [(twice, 3), (once, 2), (never, 1)]:
        result = TaskResult.objects.get(task_id=handle.task_id)
        assert (result.status, result.result, result.attempts) == ("succeeded", attempts, attempts)
    assert not DeadLetter.objects.exists()
    assert not Job.objects.exists()


def test_always_failing_task_is_dead_lettered_with_error_and_traceback(run_worker):
    handle = tasks.always_fails.enqueue("disk on fire")
    code, output = run_worker("--concurrency", "1")
    assert_clean_exit(code, output)
    assert "dead_lettered=1" in output
    assert not Job.objects.exists()
    letter = DeadLetter.objects.get(task_id=handle.task_id)
    assert letter.reason == "exhausted"
    assert (letter.attempts, letter.max_attempts) == (2, 2)
    assert letter.last_error == "ValueError: disk on fire"
    assert "Traceback (most recent call last)" in letter.traceback
    assert "always_fails" in letter.traceback
    assert letter.payload == {"args": ["disk on fire"], "kwargs": {}}
    result = TaskResult.objects.get(task_id=handle.task_id)
    assert (result.status, result.error, result.attempts) == (
        "failed",
        "ValueError: disk on fire",
        2,
    )
    assert result.traceback == letter.traceback
    assert result.result is None


def test_celery_registered_task_runs_by_name_on_the_postgres_worker(run_worker):
    handle = enqueue("workers.tasks.celery_multiply", [6, 7])
    kw_handle = enqueue("workers.tasks.celery_multiply", kwargs={"a": 3, "b": -2})
    code, output = run_worker("--concurrency", "2")
    assert_clean_exit(code, output)
    for h, expected in [(handle, 42), (kw_handle, -6)]:
        result = TaskResult.objects.get(task_id=h.task_id)
        assert (result.status, result.result, result.task_name) == (
            "succeeded",
            expected,
            "workers.tasks.celery_multiply",
        )


def test_worker_drains_5000_jobs_recording_every_outcome_exactly_once(run_worker):
    total = 5000
    handles = enqueue_many(tasks.echo.job(i) for i in range(total))
    expected = {h.task_id: i for i, h in enumerate(handles)}
    code, output = run_worker("--concurrency", "8")
    assert_clean_exit(code, output)
    assert f"succeeded={total}" in output
    assert "lease_lost=0" in output
    assert not Job.objects.exists()
    assert not DeadLetter.objects.exists()
    rows = list(TaskResult.objects.values_list("task_id", "status", "result", "attempts"))
    assert len(rows) == total
    assert {task_id for task_id, *_ in rows} == set(expected)
    for task_id, status, result, attempts in rows:
        assert (status, result, attempts) == ("succeeded", expected[task_id], 1)


def test_two_burst_workers_share_a_queue_without_running_a_job_twice(background_worker):
    total = 2000
    handles = enqueue_many(tasks.echo.job(i) for i in range(total))
    workers = [background_worker("--concurrency", "4", "--batch-size", "20") for _ in range(2)]
    stats = []
    for worker in workers:
        code, output = worker.finish()
        assert_clean_exit(code, output)
        stats.append(output)
    succeeded = [int(o.split("succeeded=")[1].split()[0]) for o in stats]
    assert sum(succeeded) == total  # each job acked by exactly one of them
    assert TaskResult.objects.filter(status="succeeded", attempts=1).count() == total
    assert set(TaskResult.objects.values_list("task_id", flat=True)) == {h.task_id for h in handles}
    assert not Job.objects.exists()


class ServingWorker:
    """A non-burst ``run_pg_worker`` on "default" and "quiet", stopped by SIGTERM."""

    def __init__(self, workers: Workers) -> None:
        self.proc = workers.start("--concurrency", "4", "--queues", "default,quiet")

    def stop(self) -> str:
        """SIGTERM, then its output once it exited cleanly."""
        self.proc.send(signal.SIGTERM)
        code, output = self.proc.finish(timeout=60)
        assert_clean_exit(code, output)
        return output


@pytest.fixture
def serving_worker(workers: Workers) -> ServingWorker:
    return ServingWorker(workers)


def test_request_reply_traffic_costs_about_one_claim_per_job(serving_worker):
    """A finished job must not wake an idle claim loop, a short claim must not be retried at
    once, and a NOTIFY for one queue must not make a two-queue worker claim both: each only
    buys an empty claim query (there were ~3 claims per job and queue before)."""
    jobs = 40
    for i in range(jobs):
        assert tasks.echo.enqueue(i).wait(timeout=60).result == i
    output = serving_worker.stop()
    found = re.search(r"claimed=(\d+) .*claim_queries=(\d+)", output)
    assert found is not None, output
    claimed, queries = int(found[1]), int(found[2])
    assert claimed == jobs
    # One claim per job, plus a few idle polls of both queues (after 10 ms without a NOTIFY).
    assert queries <= 1.5 * jobs, output


def test_notify_traffic_on_one_queue_does_not_starve_due_jobs_of_another(serving_worker):
    """A two-queue worker woken by a steady stream of NOTIFYs for one queue still claims the
    other queue at least every POLL_INTERVAL_MAX: a delayed job there becomes due without any
    NOTIFY, and must run while the stream goes on."""
    assert tasks.echo.enqueue("warm-up").wait(timeout=60).ok  # the worker is up
    delayed = enqueue("workers.tasks.echo", ["due"], queue="quiet", delay=0.3)
    status = "queued"
    for i in range(2000):  # back-to-back request-reply traffic on "default", ~2-4 s
        assert tasks.echo.enqueue(i).wait(timeout=60).result == i
        if i % 50 == 49:
            status = delayed.status()
            if status == "succeeded":
                break
    assert status == "succeeded", f"the due job on 'quiet' is still {status}"
    serving_worker.stop()


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
@pytest.mark.parametrize(
    ("flags", "start_line"),
    [((), True), (("--loglevel", "warning"), False)],
    ids=["default-info", "warning"],
)
def test_worker_in_a_project_without_pg_queue_logging_prints_its_start_line(
    workers, flags, start_line
):
    """Like ``celery worker``: a readable console log even when the project configured none,
    and a start line that says what the worker serves, what it knows and where it connects."""
    env = {"DJANGO_SETTINGS_MODULE": "tests.fresh_settings"}
    code, output = workers.run("--queues", "nobody-here", *flags, env=env)
    assert code == 0, output
    started = [line for line in output.splitlines() if "worker started" in line]
    if not start_line:
        assert started == [], output
        return
    assert len(started) == 1, output
    line = started[0]
    assert " INFO pg_queue.worker worker started " in line, line
    for part in ("queues=nobody-here=1", "concurrency=", "tasks=", "celery_tasks=", "modules="):
        assert part in line, line
    assert f"database={connection.settings_dict['USER']}@" in line, line
    assert connection.settings_dict["NAME"] in line, line
    assert "password" not in line.lower(), line
