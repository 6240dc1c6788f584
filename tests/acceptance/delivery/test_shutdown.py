"""Graceful shutdown (SIGTERM with jobs in flight) and per-task time limits."""

from __future__ import annotations

import datetime as dt
import signal
import time
import uuid
from typing import Any

import pytest

from pg_queue.producer import enqueue, enqueue_many
from tests.acceptance.delivery import tasks
from tests.acceptance.delivery.conftest import Db
from tests.harness import Process, Workers
from workers import tasks as example_tasks

#: Time _shutdown may take beyond the grace: joining stuck task threads (2 s), then every
#: thread once more with a timeout (2 s), plus process exit.
SHUTDOWN_OVERHEAD = 5.0


def message_rows(pgdb: Db) -> dict[uuid.UUID, tuple[str, int, str]]:
    return {
        r[0]: (r[1], r[2], r[3])
        for r in pgdb.rows("SELECT task_id, state, attempts, worker_id FROM pg_queue_message")
    }


def worker_row_exists(pgdb: Db, worker_id: str) -> bool:
    return bool(pgdb.value("SELECT count(*) FROM pg_worker WHERE worker_id = %s", [worker_id]))


def started(pgdb: Db) -> int:
    return int(pgdb.value("SELECT count(*) FROM delivery_exec"))


def start(workers: Workers, *flags: str) -> tuple[Process, str]:
    worker_id = f"shutdown-{uuid.uuid4().hex[:8]}"
    return workers.start(*flags, "--worker-id", worker_id, name=worker_id), worker_id


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_sigterm_lets_short_jobs_finish_and_releases_prefetched(side_tables, workers):
    pgdb = side_tables
    handles = enqueue_many([tasks.record.job(ms=1500) for _ in range(4)])
    proc, worker_id = start(
        workers, "--concurrency", "2", "--batch-size", "2", "--shutdown-grace", "20"
    )
    workers.wait_for(
        lambda: (
            started(pgdb) == 2
            and pgdb.value("SELECT count(*) FROM pg_queue_message WHERE state = 'claimed'") == 4
        ),
        timeout=30,
        what="two running and two prefetched jobs",
        interval=0.01,
    )
    running = {r[0] for r in pgdb.rows("SELECT task_id FROM delivery_exec")}
    proc.send(signal.SIGTERM)
    assert proc.wait(timeout=1.5 + SHUTDOWN_OVERHEAD) == 0, proc.log()

    outcomes = dict(pgdb.rows("SELECT task_id, status FROM pg_task_result"))
    assert outcomes == dict.fromkeys(running, "succeeded"), proc.log()
    unstarted = {h.task_id for h in handles} - running
    # Prefetched but never started: back to ready, the claim's attempt not counted.
    assert message_rows(pgdb) == dict.fromkeys(unstarted, ("ready", 0, ""))
    assert started(pgdb) == 2
    assert not worker_row_exists(pgdb, worker_id)


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_sigterm_releases_jobs_longer_than_the_grace(side_tables, workers):
    pgdb = side_tables
    job_ms = 20_000
    handle = tasks.record.enqueue(ms=job_ms)
    # As if it had run once before. It starts (attempt 2) and runs past the grace: it keeps
    # that attempt (attempts count executions started); only unstarted jobs get it back.
    pgdb.rows("UPDATE pg_queue_message SET attempts = 1 WHERE task_id = %s", [handle.task_id])
    proc, worker_id = start(
        workers, "--concurrency", "1", "--batch-size", "1", "--shutdown-grace", "1"
    )
    workers.wait_for(
        lambda: started(pgdb) == 1,
        timeout=30,
        what="the long job to start",
        interval=0.01,
    )
    assert message_rows(pgdb)[handle.task_id] == ("claimed", 2, worker_id)
    signalled = time.monotonic()
    proc.send(signal.SIGTERM)
    code = proc.wait(timeout=1 + SHUTDOWN_OVERHEAD + 5)
    took = time.monotonic() - signalled
    assert code == 0, proc.log()
    assert took < job_ms / 1000, "the worker waited for the job instead of releasing it"
    assert message_rows(pgdb) == {handle.task_id: ("ready", 2, "")}
    assert pgdb.value("SELECT count(*) FROM pg_task_result") == 0
    assert not worker_row_exists(pgdb, worker_id)
    assert "released unfinished jobs at shutdown" in proc.log()


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_second_sigterm_exits_at_once(side_tables, workers):
    pgdb = side_tables
    tasks.record.enqueue(ms=20_000)
    proc, _ = start(workers, "--concurrency", "1", "--shutdown-grace", "60")
    workers.wait_for(
        lambda: started(pgdb) == 1,
        timeout=30,
        what="the long job to start",
        interval=0.01,
    )
    proc.send(signal.SIGTERM)
    time.sleep(0.5)
    assert proc.alive(), "the first SIGTERM should wait for the in-flight job (grace 60s)"
    proc.send(signal.SIGTERM)
    signalled = time.monotonic()
    proc.wait(timeout=5)  # any exit code: it leaves its lease to expire
    print(f"second SIGTERM: exited in {time.monotonic() - signalled:.2f}s")


def outcome(pgdb: Db, task_id: uuid.UUID) -> dict[str, Any]:
    row = pgdb.one(
        "SELECT status, error, attempts, started_at, finished_at FROM pg_task_result "
        "WHERE task_id = %s",
        [task_id],
    )
    assert row is not None
    return dict(zip(("status", "error", "attempts", "started_at", "finished_at"), row, strict=True))


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_time_limit_fails_the_job_and_recovers_the_slot(pgdb, workers):
    sleep = 5.0
    limit = example_tasks.overrun.time_limit
    assert (limit, example_tasks.overrun.max_attempts) == (0.5, 1)
    once = example_tasks.overrun.enqueue(sleep)
    after = example_tasks.echo.enqueue(42)
    twice = enqueue("workers.tasks.overrun", [sleep], max_attempts=2)
    proc = workers.start("--concurrency", "1", "--batch-size", "1", name="time-limited")
    workers.wait_for(
        lambda: pgdb.value("SELECT count(*) FROM pg_task_result") == 3,
        timeout=30,
        what="three outcomes",
    )
    first, echoed, second = (
        outcome(pgdb, once.task_id),
        outcome(pgdb, after.task_id),
        outcome(pgdb, twice.task_id),
    )
    for failed, attempts in ((first, 1), (second, 2)):
        assert failed["status"] == "failed"
        assert failed["error"] == f"TimeoutError: task exceeded its time limit of {limit:g}s"
        assert failed["attempts"] == attempts
        ran_for = (failed["finished_at"] - failed["started_at"]).total_seconds()
        assert limit - 0.05 <= ran_for < sleep, ran_for
    letters = dict(pgdb.rows("SELECT task_id, attempts FROM pg_queue_dead_letter"))
    assert letters == {once.task_id: 1, twice.task_id: 2}
    assert set(pgdb.rows("SELECT reason, last_error FROM pg_queue_dead_letter")) == {
        ("exhausted", first["error"])
    }

    # With one thread, the echo still ran while the overrun's thread was asleep.
    assert echoed["status"] == "succeeded"
    assert echoed["finished_at"] < first["started_at"] + dt.timedelta(seconds=sleep)
    waited = (echoed["finished_at"] - first["finished_at"]).total_seconds()
    print(f"time limit: the next job finished {waited:.2f}s after the overrun was failed")
    assert waited < 2.0
    assert proc.alive()


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_sigterm_exit_time_does_not_grow_with_stuck_threads(side_tables, workers):
    pgdb = side_tables
    stuck = 4
    enqueue_many([tasks.record.job(ms=30_000) for _ in range(stuck)])
    proc, _ = start(
        workers, "--concurrency", str(stuck), "--batch-size", "1", "--shutdown-grace", "1"
    )
    workers.wait_for(
        lambda: started(pgdb) == stuck, timeout=30, what="every thread to be busy", interval=0.01
    )
    signalled = time.monotonic()
    proc.send(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0, proc.log()
    took = time.monotonic() - signalled
    print(f"SIGTERM with {stuck} stuck threads: exited after {took:.2f}s (grace 1s)")
    assert pgdb.value("SELECT count(*) FROM pg_queue_message WHERE state = 'ready'") == stuck
    assert took < 1 + SHUTDOWN_OVERHEAD, f"exit took {took:.2f}s"
