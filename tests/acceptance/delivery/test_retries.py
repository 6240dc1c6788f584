"""Retries: the backoff schedule, dead-lettering with the last traceback, requeue, Retry(delay).

Times come from the database clock: the recording tasks stamp ``clock_timestamp()`` at the start
and end of every execution, and the test samples ``available_at`` while a retried job waits.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from typing import Any

import pytest

from pg_queue.ops.dead_letters import requeue_dead_letter
from tests.acceptance.delivery import tasks
from tests.acceptance.delivery.conftest import Db, outcome_counts
from tests.harness import Workers

#: Bound on how late a due job may start: the idle poll interval (0.5 s; retries send no
#: NOTIFY) plus scheduling slack.
START_SLACK = 1.0
#: Time between a task raising and the retry statement stamping ``now()``.
FINISH_SLACK = 0.3


def watch_retries(
    pgdb: Db, task_id: uuid.UUID, until: Any, timeout: float
) -> dict[int, tuple[dt.datetime, str]]:
    """Sample the job's row until ``until()``: attempts -> (available_at, last_error) while
    it waits in ready after a failed attempt."""
    seen: dict[int, tuple[dt.datetime, str]] = {}
    deadline = time.monotonic() + timeout
    while not until():
        row = pgdb.one(
            "SELECT attempts, available_at, last_error FROM pg_queue_message "
            "WHERE task_id = %s AND state = 'ready' AND attempts > 0",
            [task_id],
        )
        if row is not None:
            seen.setdefault(row[0], (row[1], row[2]))
        assert time.monotonic() < deadline, f"timed out: {outcome_counts(pgdb)}"
        time.sleep(0.01)
    return seen


def executions(pgdb: Db, task_id: uuid.UUID) -> list[tuple[int, dt.datetime, dt.datetime]]:
    return pgdb.rows(
        "SELECT attempt, started_at, ended_at FROM delivery_exec WHERE task_id = %s ORDER BY id",
        [task_id],
    )


def start_worker(workers: Workers, name: str = "retrier") -> Any:
    return workers.start("--concurrency", "2", "--batch-size", "5", name=name)


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_backoff_schedule_dead_letter_and_requeue(side_tables, workers):
    pgdb = side_tables
    flag = f"fail-{uuid.uuid4().hex[:8]}"
    pgdb.rows("INSERT INTO delivery_flag (flag) VALUES (%s)", [flag])
    handle = tasks.fails_while_flagged.enqueue(flag)
    attempts = tasks.FAILING_MAX_ATTEMPTS
    worker = start_worker(workers)

    def letter() -> Any:
        return pgdb.one(
            "SELECT id, task_id, reason, last_error, traceback, attempts, max_attempts "
            "FROM pg_queue_dead_letter WHERE task_id = %s",
            [handle.task_id],
        )

    waits = watch_retries(pgdb, handle.task_id, letter, timeout=60)
    runs = executions(pgdb, handle.task_id)
    assert [r[0] for r in runs] == list(range(1, attempts + 1)), runs

    for n in range(1, attempts):
        ceiling = tasks.BACKOFF_BASE * 2 ** (n - 1)
        _, _, ended = runs[n - 1]
        _, next_start, _ = runs[n]
        # The row went back to ready, due after a delay of ceiling/2 .. ceiling.
        assert n in waits, f"attempt {n}'s retry was never seen waiting: {waits}"
        due_at, error = waits[n]
        assert error == f"RuntimeError: boom on attempt {n}"
        due_in = (due_at - ended).total_seconds()
        assert ceiling / 2 <= due_in <= ceiling + FINISH_SLACK, (n, due_in, ceiling)
        # It was not claimed before it was due, and not much later either.
        assert next_start >= due_at, (n, next_start, due_at)
        gap = (next_start - ended).total_seconds()
        assert ceiling / 2 <= gap <= ceiling + START_SLACK, (n, gap, ceiling)
        print(
            f"backoff attempt {n}: due after {due_in:.3f}s, started after {gap:.3f}s "
            f"(window {ceiling / 2:.2f}..{ceiling:.2f}s)"
        )

    found = letter()
    assert found is not None
    letter_id, task_id, reason, last_error, tb, dl_attempts, dl_max = found
    assert (task_id, reason, dl_attempts, dl_max) == (handle.task_id, "exhausted", 4, 4)
    assert last_error == f"RuntimeError: boom on attempt {attempts}"
    assert "Traceback (most recent call last)" in tb
    assert f"boom on attempt {attempts}" in tb
    assert "fails_while_flagged" in tb
    outcome = pgdb.one(
        "SELECT status, error, traceback, attempts FROM pg_task_result WHERE task_id = %s",
        [handle.task_id],
    )
    assert outcome == ("failed", last_error, tb, attempts)
    assert pgdb.value("SELECT count(*) FROM pg_queue_message") == 0

    # Requeue with the worker stopped, so the fresh row can be inspected before it runs.
    worker.stop()
    pgdb.rows("DELETE FROM delivery_flag WHERE flag = %s", [flag])
    assert requeue_dead_letter(letter_id) == handle.task_id
    assert pgdb.value("SELECT count(*) FROM pg_queue_dead_letter") == 0
    assert pgdb.value("SELECT count(*) FROM pg_task_result") == 0  # the failed outcome is gone
    fresh = pgdb.one(
        "SELECT state, attempts, max_attempts, payload FROM pg_queue_message WHERE task_id = %s",
        [handle.task_id],
    )
    assert fresh == ("ready", 0, attempts, {"args": [flag], "kwargs": {}})
    assert requeue_dead_letter(letter_id) is None  # already requeued

    start_worker(workers, name="after-requeue")
    workers.wait_for(
        lambda: pgdb.value(
            "SELECT count(*) FROM pg_task_result WHERE task_id = %s", [handle.task_id]
        ),
        timeout=30,
        what="the requeued job to finish",
    )
    outcome = pgdb.one(
        "SELECT status, result, attempts, error FROM pg_task_result WHERE task_id = %s",
        [handle.task_id],
    )
    assert outcome == ("succeeded", 1, 1, "")
    assert handle.status() == "succeeded"
    assert executions(pgdb, handle.task_id)[-1][0] == 1  # attempts started over


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_retry_exception_delays_the_next_attempt(side_tables, workers):
    pgdb = side_tables
    delay = 1.0
    handle = tasks.retry_once.enqueue(delay)
    start_worker(workers)

    def finished() -> bool:
        return bool(
            pgdb.value("SELECT count(*) FROM pg_task_result WHERE task_id = %s", [handle.task_id])
        )

    waits = watch_retries(pgdb, handle.task_id, finished, timeout=30)
    runs = executions(pgdb, handle.task_id)
    assert [r[0] for r in runs] == [1, 2], runs
    ended, next_start = runs[0][2], runs[1][1]
    assert 1 in waits, waits
    due_at, error = waits[1]
    assert error == "retry requested: asked for a later attempt"
    assert next_start >= due_at
    due_in = (due_at - ended).total_seconds()
    assert delay <= due_in <= delay + FINISH_SLACK, due_in
    gap = (next_start - ended).total_seconds()
    assert delay <= gap <= delay + START_SLACK, gap
    print(f"Retry(delay={delay}): due after {due_in:.3f}s, started after {gap:.3f}s")
    outcome = pgdb.one(
        "SELECT status, result, attempts FROM pg_task_result WHERE task_id = %s",
        [handle.task_id],
    )
    assert outcome == ("succeeded", 2, 2)
    assert pgdb.value("SELECT count(*) FROM pg_queue_dead_letter") == 0
