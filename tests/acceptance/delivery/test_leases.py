"""Lease gating, driven through pg_queue.db.queries directly with separate connections.

A worker whose lease expired and whose job was re-armed and claimed by someone else is "stale":
every write it attempts (ack, retry, bury, renew, release) must match nothing and change nothing.
Re-arm must never bring back a job that was acked, and must dead-letter an expired claim that
was on its last attempt.
"""

from __future__ import annotations

import datetime as dt
import re
import signal
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from pg_queue.core.conf import RESULT_CHANNEL
from pg_queue.core.outcomes import Bury, ClaimedJob, RetryLater, Success
from pg_queue.db import connection, queries
from pg_queue.producer import enqueue, enqueue_many, job
from tests.acceptance.delivery import tasks
from tests.acceptance.delivery.conftest import Db
from tests.harness import wait_for

TTL = 3600.0
TINY_LEASE = 0.2


@pytest.fixture
def conns(transactional_db: None) -> Iterator[list[psycopg.Connection[Any]]]:
    """Three independent worker connections (think: three worker processes)."""
    opened = [connection.worker_connection() for _ in range(3)]
    try:
        yield opened
    finally:
        for conn in opened:
            conn.close()


def row_of(pgdb: Db, msg_id: int) -> dict[str, Any] | None:
    row = pgdb.one(
        "SELECT state, lease_token, worker_id, attempts, vt, last_error, available_at "
        "FROM pg_queue_message WHERE msg_id = %s",
        [msg_id],
    )
    if row is None:
        return None
    keys = ("state", "lease_token", "worker_id", "attempts", "vt", "last_error", "available_at")
    return dict(zip(keys, row, strict=True))


def wait_expired(pgdb: Db, msg_ids: list[int]) -> None:
    """Until every lease in ``msg_ids`` is past its vt by the database clock."""
    wait_for(
        lambda: pgdb.value(
            "SELECT bool_and(vt < now()) FROM pg_queue_message WHERE msg_id = ANY(%s)", [msg_ids]
        ),
        timeout=5,
        what="the tiny leases to expire",
    )


def rearm(conn: psycopg.Connection[Any]) -> tuple[int, int]:
    """One re-arm sweep as the heartbeat runs it: (re-armed to ready, dead-lettered)."""
    rearmed = queries.job_rearm(conn, limit=1000)
    with conn.transaction():
        buried = queries.job_rearm_exhausted(conn, limit=1000, ttl=TTL)
    return rearmed, len(buried)


def claim_one(conn: psycopg.Connection[Any], queue: str, worker: str, lease: float) -> ClaimedJob:
    got = queries.job_claim(conn, queue=queue, limit=1, lease=lease, worker_id=worker)
    assert len(got) == 1, got
    return got[0]


@pytest.mark.django_db(transaction=True)
def test_stale_worker_cannot_ack_retry_bury_renew_or_release(conns, pgdb, queue_name):
    stale_conn, fresh_conn, sweeper_conn = conns
    handle = enqueue("workers.tasks.echo", [7], queue=queue_name)

    stale = claim_one(stale_conn, queue_name, "stale-worker", TINY_LEASE)
    assert stale.attempts == 1
    wait_expired(pgdb, [stale.msg_id])
    assert rearm(sweeper_conn) == (1, 0)
    after_rearm = row_of(pgdb, stale.msg_id)
    assert after_rearm is not None
    assert after_rearm["state"] == "ready"
    assert "stale-worker" in after_rearm["last_error"]

    fresh = claim_one(fresh_conn, queue_name, "fresh-worker", 30.0)
    assert fresh.msg_id == stale.msg_id
    assert fresh.task_id == stale.task_id == handle.task_id
    assert fresh.lease_token != stale.lease_token
    assert fresh.attempts == 2
    owned = row_of(pgdb, fresh.msg_id)
    assert owned is not None

    now = dt.datetime.now(dt.UTC)
    assert queries.job_ack(stale_conn, [Success(stale, "7", now)], ttl=TTL) == set()
    assert queries.job_retry(stale_conn, [RetryLater(stale, 0.0, "stale retry")]) == set()
    assert (
        queries.job_bury(stale_conn, [Bury(stale, "exhausted", "stale", "tb", now)], ttl=TTL)
        == set()
    )
    assert queries.lease_extend(stale_conn, {stale.msg_id: stale.lease_token}, lease=600) == set()
    assert queries.job_release(stale_conn, {stale.msg_id: stale.lease_token}) == set()

    # Nothing the stale worker did left a trace: same owner, token, attempts and lease expiry.
    assert row_of(pgdb, fresh.msg_id) == owned
    assert owned["state"] == "claimed"
    assert owned["worker_id"] == "fresh-worker"
    assert owned["lease_token"] == fresh.lease_token
    assert pgdb.value("SELECT count(*) FROM pg_task_result") == 0
    assert pgdb.value("SELECT count(*) FROM pg_queue_dead_letter") == 0

    # The rightful owner still can renew and ack.
    assert queries.lease_extend(fresh_conn, {fresh.msg_id: fresh.lease_token}, lease=30) == {
        fresh.msg_id
    }
    assert queries.job_ack(fresh_conn, [Success(fresh, "7", now)], ttl=TTL) == {fresh.msg_id}
    assert row_of(pgdb, fresh.msg_id) is None
    assert pgdb.rows(
        "SELECT status, result, attempts FROM pg_task_result WHERE task_id = %s", [handle.task_id]
    ) == [("succeeded", 7, 2)]


@pytest.mark.django_db(transaction=True)
def test_rearm_after_ack_resurrects_nothing(conns, pgdb, queue_name):
    worker_conn, sweeper_conn, _ = conns
    enqueue_many([job("workers.tasks.echo", [i], queue=queue_name) for i in range(5)])
    msgs = queries.job_claim(
        worker_conn, queue=queue_name, limit=5, lease=TINY_LEASE, worker_id="acker"
    )
    assert len(msgs) == 5
    wait_expired(pgdb, [m.msg_id for m in msgs])

    # Expired but not yet re-armed: the owner's ack still wins (the lease token is the gate).
    now = dt.datetime.now(dt.UTC)
    acked = queries.job_ack(worker_conn, [Success(m, "1", now) for m in msgs], ttl=TTL)
    assert acked == {m.msg_id for m in msgs}
    assert rearm(sweeper_conn) == (0, 0)
    assert pgdb.value("SELECT count(*) FROM pg_queue_message") == 0
    assert pgdb.value("SELECT count(*) FROM pg_queue_dead_letter") == 0
    assert pgdb.value("SELECT count(*) FROM pg_task_result WHERE status = 'succeeded'") == 5


def race_ack_and_rearm(
    worker_conn: psycopg.Connection[Any],
    sweeper_conn: psycopg.Connection[Any],
    msgs: list[ClaimedJob],
    *,
    ack_first: bool,
) -> tuple[set[int], tuple[int, int]]:
    """Ack ``msgs`` and sweep expired claims at the same moment; (acked ids, sweep result)."""
    now = dt.datetime.now(dt.UTC)
    acked: set[int] = set()
    swept: list[tuple[int, int]] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(2, timeout=10)

    def ack() -> None:
        try:
            barrier.wait()
            items = [Success(m, "1", now) for m in msgs]
            acked.update(queries.job_ack(worker_conn, items, ttl=TTL))
        except BaseException as exc:
            errors.append(exc)

    def sweep() -> None:
        try:
            barrier.wait()
            swept.append(rearm(sweeper_conn))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=ack), threading.Thread(target=sweep)]
    if not ack_first:
        threads.reverse()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
        assert not t.is_alive()
    assert not errors, errors
    return acked, swept[0]


@pytest.mark.django_db(transaction=True)
def test_ack_racing_rearm_never_both(conns, pgdb, queue_name):
    """Ack and re-arm of the same expired claims race: each job is acked XOR back in ready."""
    worker_conn, sweeper_conn, _ = conns
    rounds, per_round = 20, 25
    total_acked = total_rearmed = 0
    for round_no in range(rounds):
        enqueue_many([job("workers.tasks.echo", [i], queue=queue_name) for i in range(per_round)])
        msgs = queries.job_claim(
            worker_conn, queue=queue_name, limit=per_round, lease=0.05, worker_id="racer"
        )
        assert len(msgs) == per_round
        wait_expired(pgdb, [m.msg_id for m in msgs])
        acked, swept = race_ack_and_rearm(
            worker_conn, sweeper_conn, msgs, ack_first=bool(round_no % 2)
        )
        assert swept[1] == 0  # attempts were left: nothing is dead-lettered
        total_rearmed += swept[0]
        total_acked += len(acked)

        ids = [m.msg_id for m in msgs]
        ready = {
            r[0]
            for r in pgdb.rows(
                "SELECT msg_id FROM pg_queue_message WHERE msg_id = ANY(%s) AND state = 'ready'",
                [ids],
            )
        }
        claimed = pgdb.value(
            "SELECT count(*) FROM pg_queue_message WHERE msg_id = ANY(%s) AND state = 'claimed'",
            [ids],
        )
        assert claimed == 0
        assert acked.isdisjoint(ready), f"acked jobs came back: {sorted(acked & ready)}"
        assert acked | ready == set(ids)
        assert len(ready) == swept[0]
        results = pgdb.value(
            "SELECT count(*) FROM pg_task_result WHERE task_id = ANY(%s)",
            [[m.task_id for m in msgs]],
        )
        assert results == len(acked)
        pgdb.rows("DELETE FROM pg_queue_message WHERE queue_name = %s", [queue_name])
    print(f"ack/re-arm race: {total_acked} acked, {total_rearmed} re-armed, none both")


@pytest.mark.django_db(transaction=True)
def test_rearm_dead_letters_expired_claim_on_its_last_attempt(conns, pgdb, queue_name):
    worker_conn, sweeper_conn, _ = conns
    last = enqueue("workers.tasks.echo", [1], queue=queue_name, max_attempts=1)
    msg = claim_one(worker_conn, queue_name, "doomed-worker", TINY_LEASE)
    assert (msg.task_id, msg.attempts, msg.max_attempts) == (last.task_id, 1, 1)
    wait_expired(pgdb, [msg.msg_id])

    assert rearm(sweeper_conn) == (0, 1)
    assert row_of(pgdb, msg.msg_id) is None
    letter = pgdb.one(
        "SELECT task_id, reason, last_error, attempts, max_attempts, payload "
        "FROM pg_queue_dead_letter"
    )
    assert letter is not None
    task_id, reason, last_error, attempts, max_attempts, payload = letter
    assert (task_id, reason, attempts, max_attempts) == (last.task_id, "lease_expired", 1, 1)
    assert "doomed-worker" in last_error
    assert payload == {"args": [1], "kwargs": {}}
    outcome = pgdb.one("SELECT status, error FROM pg_task_result WHERE task_id = %s", [task_id])
    assert outcome is not None
    assert outcome[0] == "failed"
    assert "lease expired" in outcome[1]

    # The stale owner cannot ack what is now a dead letter, and nothing changes if it tries.
    now = dt.datetime.now(dt.UTC)
    assert queries.job_ack(worker_conn, [Success(msg, "1", now)], ttl=TTL) == set()
    assert pgdb.value("SELECT status FROM pg_task_result WHERE task_id = %s", [task_id]) == "failed"
    # A second sweep finds nothing more.
    assert rearm(sweeper_conn) == (0, 0)


@pytest.mark.django_db(transaction=True)
def test_outcome_written_by_rearm_wakes_callers_waiting_on_it(conns, pgdb, queue_name):
    """A caller blocked in wait() for a job whose worker died on its last attempt is woken
    by the re-arm that writes the failed outcome, like by any other finish."""
    worker_conn, sweeper_conn, listening = conns
    last = enqueue("workers.tasks.echo", [1], queue=queue_name, max_attempts=1)
    msg = claim_one(worker_conn, queue_name, "doomed-worker", TINY_LEASE)
    wait_expired(pgdb, [msg.msg_id])
    listening.execute(f"LISTEN {RESULT_CHANNEL}")
    with sweeper_conn.transaction():
        rows = queries.job_rearm_exhausted(sweeper_conn, limit=100, ttl=TTL, notify=True)
    assert [r[0] for r in rows] == [last.task_id]
    notes = [n.payload for n in listening.notifies(timeout=5, stop_after=1)]
    assert notes == [str(last.task_id)]


@pytest.mark.django_db(transaction=True)
def test_rearm_leaves_live_leases_alone(conns, pgdb, queue_name):
    worker_conn, sweeper_conn, _ = conns
    enqueue("workers.tasks.echo", [1], queue=queue_name)
    msg = claim_one(worker_conn, queue_name, "alive-worker", 30.0)
    assert rearm(sweeper_conn) == (0, 0)
    row = row_of(pgdb, msg.msg_id)
    assert row is not None
    assert (row["state"], row["lease_token"]) == ("claimed", msg.lease_token)
    assert uuid.UUID(str(row["lease_token"])) == msg.lease_token


def steal_lease(pgdb: Db, task_id: uuid.UUID) -> uuid.UUID:
    """What a re-arm and a claim by another worker do to a row, in one UPDATE."""
    token = uuid.uuid4()
    pgdb.rows(
        "UPDATE pg_queue_message SET lease_token = %s, worker_id = 'thief', "
        "vt = now() + interval '60 seconds', attempts = attempts + 1 WHERE task_id = %s",
        [token, task_id],
    )
    return token


def run_job_and_steal_its_lease(pgdb: Db, workers: Any) -> tuple[Any, uuid.UUID, uuid.UUID]:
    """A worker runs a 3 s job whose lease is taken away mid-run; returns (proc, task, token)."""
    handle = tasks.record.enqueue(ms=3000)
    proc = workers.start("--concurrency", "1", name="robbed")
    workers.wait_for(
        lambda: pgdb.value("SELECT count(*) FROM delivery_exec"),
        timeout=30,
        what="the job to start",
    )
    token = steal_lease(pgdb, handle.task_id)
    workers.wait_for(
        lambda: "finish discarded, its lease was lost" in proc.log(),
        timeout=30,
        what="the worker to finish the job it no longer owns",
    )
    return proc, handle.task_id, token


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_worker_cannot_ack_a_job_whose_lease_was_taken(side_tables, workers):
    pgdb = side_tables
    proc, task_id, token = run_job_and_steal_its_lease(pgdb, workers)
    row = pgdb.one(
        "SELECT state, lease_token, worker_id, attempts FROM pg_queue_message WHERE task_id = %s",
        [task_id],
    )
    assert row == ("claimed", token, "thief", 2), proc.log()
    assert pgdb.value("SELECT count(*) FROM pg_task_result") == 0
    assert f"lease lost task_id={task_id}" in proc.log()
    assert pgdb.value("SELECT count(*) FROM delivery_exec") == 1


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_lost_lease_is_reported_once(side_tables, workers):
    pgdb = side_tables
    proc, task_id, _ = run_job_and_steal_its_lease(pgdb, workers)
    proc.send(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    log = proc.log(tail=10**6)
    assert len(re.findall(rf"pg_queue\.worker lease lost task_id={task_id}", log)) == 1, log
    assert re.search(r"\blease_lost=1\b", log), log
