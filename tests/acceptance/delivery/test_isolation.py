"""Lease renewal is isolated from everything that could hold it up.

The heartbeat is what keeps a running job ours. Nothing else may delay it: not a slow signal
receiver, not an operator's transaction holding a lock on one claimed row. And the maintenance
sweeps keep up whatever the volume.
"""

from __future__ import annotations

import datetime as dt
import uuid

import psycopg
import pytest

from pg_queue.producer import enqueue_many
from tests.acceptance.delivery import poison
from tests.acceptance.delivery.conftest import LEASE, Db
from tests.harness import Workers

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

#: Names of the threads that must never run user code (the claim loop is the main thread).
HOT_THREADS = {"MainThread", "pg-queue-heartbeat", "pg-queue-finish", "pg-queue-maintenance"}


def start_poison_worker(workers: Workers, *flags: str, **env: str) -> object:
    return workers.start(
        "--queues",
        "poison",
        "--include",
        "tests.acceptance.delivery.poison",
        *flags,
        env=env or None,
    )


def outcome_of(pgdb: Db, task_id: uuid.UUID) -> tuple[str, int] | None:
    """(status, attempts) of a finished job, or None."""
    return pgdb.one("SELECT status, attempts FROM pg_task_result WHERE task_id = %s", [task_id])


def lease_ahead_after(pgdb: Db, task_id: uuid.UUID, since: dt.datetime, seconds: float) -> bool:
    """True once ``seconds`` have passed since ``since`` (database clock) and the job's lease
    is still in the future: it was renewed meanwhile."""
    return bool(
        pgdb.value(
            "SELECT vt > now() AND now() - %s > make_interval(secs => %s) "
            "FROM pg_queue_message WHERE task_id = %s AND state = 'claimed'",
            [since, seconds, task_id],
        )
    )


def test_slow_job_failed_receivers_run_off_the_hot_threads(side_tables, workers):
    pgdb = side_tables
    pgdb.rows("INSERT INTO delivery_flag VALUES ('block-receivers')")
    long_id = enqueue_many([poison.sleeps.job(6 * LEASE)])[0].task_id
    failing = poison.fails_once_for_all.enqueue().task_id
    # An expired claim on its last attempt: re-arm dead-letters it and sends job_failed too.
    expired = uuid.uuid4()
    pgdb.rows(
        "INSERT INTO pg_queue_message (task_id, queue_name, task_name, payload, state, attempts,"
        " max_attempts, lease_token, worker_id, vt) VALUES (%s, 'poison', %s, "
        "'{\"args\": [1], \"kwargs\": {}}', 'claimed', 1, 1, gen_random_uuid(), 'gone', "
        "'-infinity')",
        [expired, poison.ok.name],
    )
    start_poison_worker(workers, "--concurrency", "2")
    receivers = "SELECT count(*) FROM delivery_exec WHERE attempt = 0"
    workers.wait_for(
        lambda: pgdb.value(receivers) >= 1,
        timeout=30,
        what="a job_failed receiver to be running (and blocked)",
    )
    blocked_since = pgdb.value("SELECT now()")
    later = [h.task_id for h in enqueue_many([poison.ok.job(i) for i in range(5)])]
    workers.wait_for(
        lambda: (
            pgdb.value(
                "SELECT count(*) FROM pg_task_result "
                "WHERE task_id = ANY(%s) AND status = 'succeeded'",
                [later],
            )
            == 5
        ),
        timeout=30,
        what="jobs enqueued after the failure to finish while the receivers are blocked",
    )
    workers.wait_for(
        lambda: lease_ahead_after(pgdb, long_id, blocked_since, 2 * LEASE),
        timeout=30,
        what="the long job's lease to be renewed while the receivers are blocked",
    )
    pgdb.rows("DELETE FROM delivery_flag")
    # Both receivers ran (one after the other, on the events thread), none on a hot thread.
    workers.wait_for(lambda: pgdb.value(receivers) == 2, timeout=40, what="both receivers")
    threads = {r[0] for r in pgdb.rows("SELECT worker_id FROM delivery_exec WHERE attempt = 0")}
    assert not threads & HOT_THREADS, threads
    workers.wait_for(
        lambda: (
            pgdb.one("SELECT status, attempts FROM pg_task_result WHERE task_id = %s", [long_id])
            == ("succeeded", 1)
        ),
        timeout=30,
        what="the long job to succeed on its first attempt",
    )
    reasons = dict(
        pgdb.rows(
            "SELECT task_id, reason FROM pg_queue_dead_letter WHERE task_id = ANY(%s)",
            [[failing, expired]],
        )
    )
    assert reasons == {failing: "exhausted", expired: "lease_expired"}


def test_operator_lock_on_one_claimed_row_does_not_stop_the_other_renewals(pgdb, workers):
    first, second = (
        h.task_id for h in enqueue_many([poison.sleeps.job(5 * LEASE) for _ in range(2)])
    )
    start_poison_worker(workers, "--concurrency", "2")
    workers.wait_for(
        lambda: pgdb.value("SELECT count(*) FROM pg_queue_message WHERE state = 'claimed'") == 2,
        timeout=30,
        what="both long jobs to start",
    )
    from pg_queue.db.connection import worker_connection

    with worker_connection() as operator:
        operator.autocommit = False
        # An operator inspecting one running job in psql, transaction left open.
        operator.execute(
            "SELECT * FROM pg_queue_message WHERE task_id = %s FOR UPDATE", [first]
        ).fetchall()
        locked_since = pgdb.value("SELECT now()")
        workers.wait_for(
            lambda: lease_ahead_after(pgdb, second, locked_since, 2 * LEASE),
            timeout=30,
            what="the other job's lease to be renewed while one row is locked",
        )
        operator.rollback()
    workers.wait_for(
        lambda: (
            pgdb.one("SELECT status, attempts FROM pg_task_result WHERE task_id = %s", [second])
            == ("succeeded", 1)
        ),
        timeout=30,
        what="the unlocked job to succeed on its first attempt",
    )


def test_worker_connections_carry_lock_and_statement_timeouts(transactional_db, settings):
    from pg_queue.db.connection import worker_connection

    settings.PG_QUEUE = {**settings.PG_QUEUE, "LOCK_TIMEOUT": 1.5, "STATEMENT_TIMEOUT": 2}
    with worker_connection() as conn:
        assert conn.execute("SHOW lock_timeout").fetchone() == ("1500ms",)
        assert conn.execute("SHOW statement_timeout").fetchone() == ("2s",)
        with pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute("SELECT pg_sleep(60)")


def test_result_sweep_loops_until_nothing_expired_remains(pgdb, workers):
    pgdb.rows(
        "INSERT INTO pg_task_result (task_id, status, task_name, queue_name, attempts, "
        "finished_at, expires_at, error, traceback) "
        "SELECT gen_random_uuid(), 'succeeded', 't', 'q', 1, now() - interval '2 hours', "
        "now() - interval '1 hour', '', '' FROM generate_series(1, 20000)"
    )
    keep = uuid.uuid4()
    pgdb.rows(
        "INSERT INTO pg_task_result (task_id, status, task_name, queue_name, attempts, "
        "finished_at, expires_at, error, traceback) "
        "VALUES (%s, 'succeeded', 't', 'q', 1, now(), now() + interval '1 hour', '', '')",
        [keep],
    )
    start_poison_worker(workers, PG_QUEUE_RESULT_SWEEP_INTERVAL="1")
    workers.wait_for(
        lambda: pgdb.value("SELECT count(*) FROM pg_task_result WHERE expires_at < now()") == 0,
        timeout=20,
        what="every expired result to be swept",
        interval=0.1,
    )
    assert pgdb.value("SELECT task_id FROM pg_task_result") == keep


def test_time_limits_fire_on_their_own_timer_while_the_claim_loop_is_blocked(pgdb, workers):
    """A table lock holds the claim loop (and every other statement) in lock waits; the job
    past its limit is still failed at its deadline, and written once the lock is gone."""
    from workers import tasks as example_tasks

    stuck = example_tasks.overrun.enqueue(30.0)
    proc = workers.start("--concurrency", "1")
    workers.wait_for(
        lambda: (
            pgdb.value("SELECT state FROM pg_queue_message WHERE task_id = %s", [stuck.task_id])
            == "claimed"
        ),
        timeout=30,
        what="the overrunning job to start",
    )
    from pg_queue.db.connection import worker_connection

    with worker_connection() as blocker:
        blocker.autocommit = False
        blocker.execute("LOCK TABLE pg_queue_message IN ACCESS EXCLUSIVE MODE")
        workers.wait_for(
            lambda: "time limit exceeded" in proc.log(tail=100_000),
            timeout=15,
            what="the time limit to fire while the table is locked",
        )
        blocker.rollback()
    workers.wait_for(
        lambda: pgdb.value("SELECT error FROM pg_task_result WHERE task_id = %s", [stuck.task_id]),
        timeout=30,
        what="the timeout outcome to be written after the lock",
    )
