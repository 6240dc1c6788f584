"""The finisher against a real PostgreSQL: what it does when the database refuses a finish.

Outcomes are built here on purpose past the task thread's own checks (a result JSON with
``\\u0000``, one nested past the server's stack depth), as a bug or a new kind of bad value
would reach it: the finisher is the last line, and one refused outcome must never cost the
others theirs, nor be retried forever.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from pg_queue.core.conf import queue_settings
from pg_queue.core.outcomes import ClaimedJob, Success
from pg_queue.db import connection, queries
from pg_queue.producer import enqueue_many, job
from pg_queue.worker.events import Events
from pg_queue.worker.finisher import Finisher
from pg_queue.worker.inflight import InFlight
from pg_queue.worker.stats import WorkerStats
from tests.harness import wait_for

pytestmark = pytest.mark.django_db(transaction=True)

#: A result nested far past PostgreSQL's max_stack_depth: "stack depth limit exceeded" is
#: SQLSTATE 54001, which psycopg raises as an OperationalError although nothing is wrong
#: with the connection. It must not be mistaken for a lost connection and retried forever.
TOO_DEEP = "[" * 200_000 + "]" * 200_000


@pytest.fixture
def conn() -> Iterator[psycopg.Connection[Any]]:
    with connection.worker_connection() as c:
        yield c


def claimed(conn: psycopg.Connection[Any], n: int) -> list[ClaimedJob]:
    enqueue_many(job("workers.tasks.echo", [i]) for i in range(n))
    msgs = queries.job_claim(conn, queue="default", limit=n, lease=60, worker_id="w")
    assert len(msgs) == n
    return sorted(msgs, key=lambda m: m.msg_id)


@pytest.fixture
def finisher() -> Iterator[tuple[Finisher, WorkerStats]]:
    stats = WorkerStats()
    events = Events()
    service = Finisher(
        conf=queue_settings(),
        connect=connection.worker_connection,
        inflight=InFlight(),
        stats=stats,
        events=events,
        on_written=lambda: None,
    )
    events.start()
    service.start()
    try:
        yield service, stats
    finally:
        service.halt()
        service.join(timeout=10)
        events.stop()
        events.join(timeout=10)
        assert not service.alive


def outcomes(conn: psycopg.Connection[Any]) -> dict[uuid.UUID, tuple[str, str]]:
    return {
        task_id: (status, error)
        for task_id, status, error in conn.execute(
            "SELECT task_id, status, error FROM pg_task_result"
        )
    }


def test_one_refused_result_is_dead_lettered_alone_and_the_rest_are_acked(conn, finisher):
    service, stats = finisher
    msgs = claimed(conn, 8)
    nul, deep = msgs[2], msgs[5]
    for m in msgs:
        result = {nul.msg_id: '"text\\u0000"', deep.msg_id: TOO_DEEP}.get(m.msg_id, "1")
        service.submit(Success(m, result, m.claimed_at))
    wait_for(lambda: not service.busy, timeout=30, what="every finish to be written")

    found = outcomes(conn)
    assert len(found) == 8
    good = [m for m in msgs if m not in (nul, deep)]
    assert all(found[m.task_id] == ("succeeded", "") for m in good), found
    assert found[nul.task_id][0] == "failed"
    assert found[nul.task_id][1].startswith("result not storable: "), found[nul.task_id]
    assert "\\u0000" in found[nul.task_id][1]
    assert found[deep.task_id][0] == "failed"
    assert "stack depth limit exceeded" in found[deep.task_id][1], found[deep.task_id]
    reasons = dict(conn.execute("SELECT task_id, reason FROM pg_queue_dead_letter").fetchall())
    assert reasons == {nul.task_id: "unstorable", deep.task_id: "unstorable"}
    assert conn.execute("SELECT count(*) FROM pg_queue_message").fetchone() == (0,)
    assert (stats.succeeded, stats.unstorable, stats.dead_lettered, stats.reconnects) == (
        6,
        2,
        2,
        0,
    )


def test_a_row_locked_elsewhere_defers_its_finish_without_holding_up_the_others(
    conn, finisher, settings
):
    settings.PG_QUEUE = {**settings.PG_QUEUE, "LOCK_TIMEOUT": 0.2}
    service, stats = finisher
    service.conf = queue_settings()
    msgs = claimed(conn, 4)
    locked = msgs[1]
    with connection.worker_connection() as operator, operator.transaction():
        operator.execute(
            "SELECT 1 FROM pg_queue_message WHERE msg_id = %s FOR UPDATE", [locked.msg_id]
        )
        for m in msgs:
            service.submit(Success(m, "1", m.claimed_at))
        wait_for(
            lambda: len(outcomes(conn)) == 3,
            timeout=30,
            what="the three unlocked jobs to be acked while one row is locked",
        )
        assert locked.task_id not in outcomes(conn)
        assert service.busy  # the locked one waits for a retry, not lost
        time.sleep(0.3)
        assert service.oldest_unwritten_age() > 0.3
    wait_for(lambda: not service.busy, timeout=60, what="the deferred finish to be written")
    assert outcomes(conn)[locked.task_id] == ("succeeded", "")
    assert stats.succeeded == 4
    assert stats.unstorable == 0
