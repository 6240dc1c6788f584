"""Resource locks on a real PostgreSQL: ``resource_lock`` (try once, wait, renew, take over an
expired lock, force release) and the claim's side of them (a held key keeps its jobs queued
without costing an attempt; one job per key per claim; every finish gives the key back)."""

from __future__ import annotations

import datetime as dt
import logging
import re
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from django.db import connection

from pg_queue import ResourceLocked, resource_lock, task
from pg_queue.core.exceptions import ConfigurationError
from pg_queue.core.outcomes import Bury, ClaimedJob, RetryLater, Success
from pg_queue.core.payload import loads
from pg_queue.db import connection as db_connection
from pg_queue.db import queries, sql_claim, sql_workflows
from pg_queue.models import Job, ResourceLock
from pg_queue.ops import operations
from pg_queue.producer import enqueue_many
from pg_queue.workflows.locks import force_release, locks
from workers import tasks

pytestmark = pytest.mark.django_db(transaction=True)

LEASE = 60.0


@pytest.fixture
def conn() -> Iterator[psycopg.Connection[Any]]:
    with db_connection.worker_connection() as c:
        yield c


def claim(conn: psycopg.Connection[Any], limit: int = 100) -> list[ClaimedJob]:
    return queries.job_claim(conn, queue="default", limit=limit, lease=LEASE, worker_id="w1")


def args_of(msg: ClaimedJob) -> list[Any]:
    return loads(msg.payload_text)["args"]


def held() -> dict[str, tuple[str, Any]]:
    return {
        lock.resource_key: (lock.holder_kind, lock.task_id) for lock in ResourceLock.objects.all()
    }


# --- resource_lock() ----------------------------------------------------------------------


def test_wait_zero_raises_at_once_naming_the_holder() -> None:
    with resource_lock("rag:/a", holder_kind="cli", ttl=30) as holder:
        started = time.monotonic()
        with (
            pytest.raises(ResourceLocked) as info,
            resource_lock("rag:/a", holder_kind="web", wait=0),
        ):
            pytest.fail("a held key was taken twice")
        assert time.monotonic() - started < 1.0
        assert (info.value.holder_kind, info.value.holder_id) == ("cli", holder)
        assert info.value.since is not None
        assert f"held by cli {holder}" in str(info.value)
    assert held() == {}


def test_a_waiter_gets_the_key_when_its_holder_lets_go_and_gives_up_after_wait() -> None:
    with resource_lock("rag:/b", holder_kind="cli", ttl=30):
        started = time.monotonic()
        with pytest.raises(ResourceLocked), resource_lock("rag:/b", holder_kind="web", wait=0.4):
            pass
        assert 0.4 <= time.monotonic() - started < 3.0
    with resource_lock("rag:/b", holder_kind="web", wait=0.4) as holder:
        assert ResourceLock.objects.get().holder_id == holder


def test_a_short_ttl_is_renewed_while_the_block_runs() -> None:
    with resource_lock("rag:/c", holder_kind="cli", ttl=1) as holder:
        time.sleep(2.5)  # more than twice the ttl: only renewals keep it
        lock = ResourceLock.objects.get()
        assert lock.holder_id == holder
        with connection.cursor() as cursor:
            cursor.execute("SELECT now()")
            (now,) = cursor.fetchone()
        assert lock.expires_at > now
        with pytest.raises(ResourceLocked), resource_lock("rag:/c", holder_kind="web", wait=0):
            pass
    assert held() == {}


def test_an_expired_lock_is_taken_over() -> None:
    ResourceLock.objects.create(
        resource_key="rag:/d",
        holder_id="crashed-cli",
        holder_kind="cli",
        expires_at=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=5),
    )
    with resource_lock("rag:/d", holder_kind="web", wait=0) as holder:
        assert ResourceLock.objects.get().holder_id == holder


def test_force_release_throws_the_holder_out_and_logs_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with resource_lock("rag:/e", holder_kind="cli", ttl=30) as holder:
        [info] = locks()
        assert (info.resource_key, info.holder_kind, info.holder_id) == ("rag:/e", "cli", holder)
        with caplog.at_level(logging.WARNING, logger="pg_queue.locks"):
            previous = force_release("rag:/e", actor="ops:bob")
        assert previous is not None
        assert previous.holder_id == holder
        assert "force-released key=rag:/e by=ops:bob" in caplog.text
        assert holder in caplog.text
        assert held() == {}
    assert force_release("rag:/e") is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"key": ""}, "resource key"),
        ({"key": "x" * 301}, "resource key"),
        ({"key": "a\x00b"}, "resource key"),
        ({"holder_kind": "worker"}, "holder_kind"),
        ({"holder_kind": ""}, "holder_kind"),
        ({"ttl": 0.5}, "ttl"),
        ({"ttl": float("nan")}, "ttl"),
        ({"ttl": True}, "ttl"),
        ({"wait": -1}, "wait"),
    ],
)
def test_bad_arguments_are_refused_naming_the_problem(kwargs: dict[str, Any], message: str) -> None:
    args = {"key": "rag:/f", "holder_kind": "cli", "ttl": 10, "wait": 0, **kwargs}
    key = args.pop("key")
    with pytest.raises(ValueError, match=message), resource_lock(key, **args):
        pass
    assert held() == {}


# --- the claim ------------------------------------------------------------------------------


def test_a_held_key_keeps_its_jobs_queued_without_an_attempt_while_others_go_by(
    conn: psycopg.Connection[Any],
) -> None:
    keyed = [tasks.add.using(resource_key="rag:/g").enqueue(i, i) for i in range(3)]
    plain = tasks.add.enqueue(9, 9)
    with resource_lock("rag:/g", holder_kind="cli", ttl=30):
        claimed = claim(conn)
        assert [m.task_id for m in claimed] == [plain.task_id]
        assert set(
            Job.objects.filter(task_id__in=[h.task_id for h in keyed]).values_list(
                "attempts", "state"
            )
        ) == {(0, "ready")}
    # Free again: one job of the key per claim, with the lock row inserted in the claim.
    [first] = claim(conn)
    assert first.task_id == keyed[0].task_id
    assert held() == {"rag:/g": ("worker", first.task_id)}
    assert claim(conn) == []


def test_a_claim_takes_over_a_key_whose_outside_holder_let_it_expire(
    conn: psycopg.Connection[Any],
) -> None:
    ResourceLock.objects.create(
        resource_key="rag:/x",
        holder_id="crashed-cli",
        holder_kind="cli",
        expires_at=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=5),
    )
    handle = tasks.add.using(resource_key="rag:/x").enqueue(1, 1)
    [msg] = claim(conn)
    assert msg.task_id == handle.task_id
    assert held() == {"rag:/x": ("worker", handle.task_id)}


def test_the_maintenance_sweep_drops_expired_locks_and_locks_of_ended_jobs(
    conn: psycopg.Connection[Any],
) -> None:
    past = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=5)
    ResourceLock.objects.create(
        resource_key="rag:/y", holder_id="gone", holder_kind="cli", expires_at=past
    )
    ResourceLock.objects.create(
        resource_key="rag:/z", holder_id="w9", holder_kind="worker", task_id=uuid.uuid4()
    )
    with resource_lock("rag:/live", holder_kind="cli", ttl=30):
        swept = conn.execute(sql_workflows.LOCK_SWEEP).fetchall()
        assert sorted(row[0] for row in swept) == ["rag:/y", "rag:/z"]
        assert set(held()) == {"rag:/live"}


@pytest.mark.parametrize("finish", ["ack", "retry", "bury", "release"])
def test_every_finish_gives_the_key_back(conn: psycopg.Connection[Any], finish: str) -> None:
    tasks.add.using(resource_key="rag:/h").enqueue(1, 1)
    tasks.add.using(resource_key="rag:/h").enqueue(2, 2)
    [msg] = claim(conn)
    assert held() == {"rag:/h": ("worker", msg.task_id)}
    if finish == "ack":
        assert queries.job_ack(conn, [Success(msg, "2", msg.claimed_at)], ttl=60)
    elif finish == "retry":
        assert queries.job_retry(conn, [RetryLater(msg, 3600.0, "boom")])
    elif finish == "bury":
        assert queries.job_bury(conn, [Bury(msg, "failed", "boom", "", None)], ttl=60)
    else:
        assert queries.job_release(conn, {msg.msg_id: msg.lease_token})
    assert held() == {}
    assert len(claim(conn)) == 1  # the key's next job


def test_each_claim_takes_at_most_one_job_per_key(conn: psycopg.Connection[Any]) -> None:
    for key in ("k1", "k2"):
        for i in range(5):
            tasks.add.using(resource_key=key).enqueue(i, i)
    claimed = claim(conn)
    assert len(claimed) == 2
    assert set(held()) == {"k1", "k2"}


def parked() -> dict[int, bool]:
    """Each job's first argument and whether it is parked."""
    return {row.payload["args"][0]: row.parked for row in Job.objects.all()}


def test_a_keys_later_jobs_are_parked_and_each_finish_unparks_the_next(
    conn: psycopg.Connection[Any],
) -> None:
    enqueue_many([tasks.add.using(resource_key="rag:/p").job(i, i) for i in range(5)])
    tasks.add.using(resource_key="rag:/p").enqueue(5, 5)  # single enqueue: parked as well
    tasks.add.enqueue(9, 9)
    assert parked() == {0: False, 1: True, 2: True, 3: True, 4: True, 5: True, 9: False}
    order = []
    for _ in range(6):
        keyed = [m for m in claim(conn) if args_of(m) != [9, 9]]
        assert len(keyed) == 1  # one live job of the key at a time
        order.append(args_of(keyed[0])[0])
        assert queries.job_ack(conn, [Success(keyed[0], "0", keyed[0].claimed_at)], ttl=60)
    assert order == [0, 1, 2, 3, 4, 5]
    assert held() == {}


def test_a_delayed_job_of_a_key_parks_nothing_due_before_it() -> None:
    tasks.add.using(resource_key="rag:/q", delay=3600).enqueue(0, 0)
    tasks.add.using(resource_key="rag:/q").enqueue(1, 1)
    tasks.add.using(resource_key="rag:/q", delay=7200).enqueue(2, 2)
    assert parked() == {0: False, 1: False, 2: True}


def test_a_parked_job_whose_head_was_cancelled_is_unparked_by_the_sweep(
    conn: psycopg.Connection[Any],
) -> None:
    head = tasks.add.using(resource_key="rag:/r").enqueue(0, 0)
    tasks.add.using(resource_key="rag:/r").enqueue(1, 1)
    operations.jobs_cancel(task_ids=[head.task_id], actor="alice")
    assert claim(conn) == []  # the parked job is not a candidate
    assert conn.execute(sql_workflows.KEY_UNPARK_SWEEP).fetchall() == [("rag:/r",)]
    assert conn.execute(sql_workflows.KEY_UNPARK_SWEEP).fetchall() == []
    [msg] = claim(conn)
    assert args_of(msg) == [1, 1]


def test_a_claim_reads_one_row_of_a_key_however_long_its_backlog(
    conn: psycopg.Connection[Any],
) -> None:
    enqueue_many([tasks.add.using(resource_key="rag:/s").job(i, i) for i in range(2000)])
    enqueue_many([tasks.add.job(i, i) for i in range(10)])
    conn.execute("ANALYZE pg_queue_message")
    with resource_lock("rag:/s", holder_kind="cli", ttl=30), conn.transaction():
        plan = "\n".join(
            row[0]
            for row in conn.execute(
                "EXPLAIN (ANALYZE, COSTS OFF) " + sql_claim.JOB_CLAIM,
                {"queue": "default", "limit": 100, "lease": 30, "worker_id": "w"},
            ).fetchall()
        )
        conn.execute("ROLLBACK")  # leave the rows unclaimed
    # The held key's 1,999 parked jobs are not in the claim index: only its head is read and
    # filtered out.
    start = plan.index("Index Scan using pg_queue_msg_claim_idx")
    scan = plan[start : plan.index("CTE locked")]
    removed = re.search(r"Rows Removed by Filter: (\d+)", scan)
    assert removed is not None, plan
    assert int(removed.group(1)) == 1, plan


# --- @task(resource_key=...) ----------------------------------------------------------------


@task(name="tests.locks.keyed", resource_key=lambda db, doc: f"rag:{db}")
def keyed(db: str, doc: int) -> int:
    return doc


@task(name="tests.locks.bad_key", resource_key=lambda n: 1 / n and None)
def bad_key(n: int) -> int:
    return n


@task(name="tests.locks.int_key", resource_key=lambda n: n)
def int_key(n: int) -> int:
    return n


def test_a_task_key_comes_from_the_call_arguments_and_using_overrides_it() -> None:
    a = keyed.enqueue("/data/a", 1)
    b = keyed.using(resource_key="rag:/other").enqueue("/data/a", 2)
    keys = dict(Job.objects.values_list("task_id", "resource_key"))
    assert keys == {a.task_id: "rag:/data/a", b.task_id: "rag:/other"}


def test_a_key_function_that_raises_or_returns_a_non_string_queues_nothing() -> None:
    with pytest.raises(ValueError, match=r"tests.locks.bad_key: its resource_key function raised"):
        bad_key.enqueue(0)
    with pytest.raises(ValueError, match=r"returned 7 \(int\); it must return a str or None"):
        int_key.enqueue(7)
    assert Job.objects.count() == 0
    assert bad_key.enqueue(1) is not None  # None: no key
    assert Job.objects.get().resource_key is None


def test_a_bad_resource_key_option_fails_at_import() -> None:
    with pytest.raises(ConfigurationError, match="resource_key must be a str or a function"):

        @task(name="tests.locks.bad_option", resource_key=42)  # type: ignore[call-overload]
        def bad_option() -> None:
            pass
