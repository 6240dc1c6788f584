"""The hot path's SQL (claim, ack, retry, bury, extend, release, re-arm) on a real PostgreSQL.

Rows are enqueued through Django's connection and committed (``transaction=True``), then
claimed on separate autocommit ``worker_connection()``s, exactly as a worker does.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import random
import re
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
import pytest
from django.db import connection

from pg_queue.core.outcomes import Bury, ClaimedJob, RetryLater, Success
from pg_queue.core.payload import loads
from pg_queue.db import connection as db_connection
from pg_queue.db import queries, sql, sql_claim, sql_worker
from pg_queue.models import DeadLetter, Job, TaskResult
from pg_queue.producer import enqueue, enqueue_many, job
from workers import tasks

pytestmark = pytest.mark.django_db(transaction=True)

LEASE = 60.0


@pytest.fixture
def conn() -> Iterator[psycopg.Connection[Any]]:
    with db_connection.worker_connection() as c:
        yield c


def claim_one(conn: psycopg.Connection[Any], worker_id: str = "w1", **kw: Any) -> ClaimedJob:
    messages = queries.job_claim(
        conn,
        queue=kw.get("queue", "default"),
        limit=kw.get("limit", 1),
        lease=kw.get("lease", LEASE),
        worker_id=worker_id,
    )
    assert len(messages) == 1, messages
    return messages[0]


def claim_all(conn: psycopg.Connection[Any], queue: str = "default") -> list[ClaimedJob]:
    return queries.job_claim(conn, queue=queue, limit=1000, lease=LEASE, worker_id="w")


def args_of(msg: ClaimedJob) -> list[Any]:
    return loads(msg.payload_text)["args"]


def db_now() -> dt.datetime:
    with connection.cursor() as cursor:
        cursor.execute("SELECT now()")
        return cursor.fetchone()[0]


def expire_lease(msg_id: int) -> None:
    """Simulate a worker that stopped renewing: its lease ran out a minute ago."""
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE pg_queue_message SET vt = now() - interval '1 minute' WHERE msg_id = %s",
            [msg_id],
        )


def rearm(conn: psycopg.Connection[Any]) -> tuple[int, int]:
    """One re-arm sweep as any worker runs it: (re-armed, dead-lettered)."""
    rearmed = queries.job_rearm(conn, limit=100)
    buried = queries.job_rearm_exhausted(conn, limit=100, ttl=60)
    return rearmed, len(buried)


def test_enqueue_claim_ack_round_trip(conn):
    handle = tasks.add.enqueue(2, 3)
    msg = claim_one(conn, "worker-a", limit=10)
    assert msg.task_id == handle.task_id
    assert (msg.task_name, msg.queue_name) == ("workers.tasks.add", "default")
    assert loads(msg.payload_text) == {"args": [2, 3], "kwargs": {}}
    assert (msg.attempts, msg.max_attempts) == (1, 3)
    row = Job.objects.get(msg_id=msg.msg_id)
    assert (row.state, row.worker_id, row.lease_token) == ("claimed", "worker-a", msg.lease_token)
    assert row.vt is not None
    assert row.vt - msg.claimed_at == dt.timedelta(seconds=LEASE)
    assert handle.status() == "running"
    assert claim_all(conn) == []  # a claimed row is not claimable again

    acked = queries.job_ack(conn, [Success(msg, "5", msg.claimed_at)], ttl=3600)
    assert acked == {msg.msg_id}
    assert not Job.objects.exists()
    result = TaskResult.objects.get(task_id=handle.task_id)
    assert (result.status, result.result, result.attempts) == ("succeeded", 5, 1)
    assert (result.task_name, result.queue_name) == ("workers.tasks.add", "default")
    assert result.started_at == msg.claimed_at
    assert result.expires_at - result.finished_at == dt.timedelta(seconds=3600)
    outcome = handle.outcome()
    assert (outcome.status, outcome.result, outcome.ok) == ("succeeded", 5, True)
    # A second ack of the same message is a no-op, not an error.
    assert queries.job_ack(conn, [Success(msg, "6", msg.claimed_at)], ttl=3600) == set()
    assert TaskResult.objects.get(task_id=handle.task_id).result == 5


def test_ack_of_a_task_without_stored_results_deletes_the_row_and_writes_no_result(conn):
    handle = tasks.noop.enqueue(1)
    msg = claim_one(conn)
    assert queries.job_ack(conn, [Success(msg, None, msg.claimed_at)], ttl=60) == {msg.msg_id}
    assert not Job.objects.exists()
    assert not TaskResult.objects.exists()
    assert handle.status() == "unknown"


def test_ack_is_batched_and_acks_only_the_owned_messages(conn):
    enqueue_many(job("workers.tasks.echo", [i]) for i in range(5))
    msgs = claim_all(conn)
    assert len(msgs) == 5
    stale = dataclasses.replace(msgs[0], lease_token=uuid.uuid4())
    items = [Success(stale, "0", msgs[0].claimed_at)]
    items += [Success(m, str(args_of(m)[0]), m.claimed_at) for m in msgs[1:]]
    assert queries.job_ack(conn, items, ttl=60) == {m.msg_id for m in msgs[1:]}
    assert list(Job.objects.values_list("msg_id", flat=True)) == [msgs[0].msg_id]
    assert TaskResult.objects.count() == 4
    for m in msgs[1:]:
        assert TaskResult.objects.get(task_id=m.task_id).result == args_of(m)[0]


def test_ack_of_a_batch_too_big_for_one_notify_payload_still_wakes_waiters(conn):
    # 300 task ids do not fit NOTIFY's 8000-byte payload; the ack must not fail on it.
    enqueue_many(job("workers.tasks.echo", [i]) for i in range(300))
    msgs = queries.job_claim(conn, queue="default", limit=300, lease=30, worker_id="w")
    assert len(msgs) == 300
    listener = db_connection.worker_connection()
    listener.execute("LISTEN pg_queue_result")
    items = [Success(m, str(args_of(m)[0]), m.claimed_at) for m in msgs]
    assert len(queries.job_ack(conn, items, ttl=60, notify=True)) == 300
    payloads = [n.payload for n in listener.notifies(timeout=2, stop_after=1)]
    listener.close()
    assert payloads == ["*"]
    assert TaskResult.objects.count() == 300


@pytest.mark.parametrize(
    ("results", "carries_results"),
    [
        (["2", '"two"', "null"], True),  # request-reply sized: the results ride along
        (["1"] * 9, False),  # more than 8: ids only
        (['"' + "x" * 4100 + '"'], False),  # too big to carry: ids only
    ],
)
def test_ack_notify_carries_small_batches_results_and_otherwise_ids(conn, results, carries_results):
    enqueue_many(job("workers.tasks.echo", [i]) for i in range(len(results)))
    msgs = claim_all(conn)
    listener = db_connection.worker_connection()
    listener.execute("LISTEN pg_queue_result")
    items = [Success(m, r, m.claimed_at) for m, r in zip(msgs, results, strict=True)]
    assert len(queries.job_ack(conn, items, ttl=60, notify=True)) == len(results)
    [payload] = [n.payload for n in listener.notifies(timeout=2, stop_after=1)]
    listener.close()
    if carries_results:
        carried = {task_id: (attempts, result) for task_id, attempts, result in json.loads(payload)}
        expected = {str(m.task_id): (1, json.loads(r)) for m, r in zip(msgs, results, strict=True)}
        assert carried == expected
    else:
        assert set(payload.split(",")) == {str(m.task_id) for m in msgs}


def test_ack_with_a_stale_lease_token_does_nothing(conn):
    enqueue("workers.tasks.echo", [1])
    msg = claim_one(conn)
    stale = dataclasses.replace(msg, lease_token=uuid.uuid4())
    assert queries.job_ack(conn, [Success(stale, "1", msg.claimed_at)], ttl=60) == set()
    row = Job.objects.get()
    assert (row.state, row.lease_token) == ("claimed", msg.lease_token)
    assert not TaskResult.objects.exists()


def test_lease_reclaimed_by_another_worker_cannot_be_touched_with_the_old_token(conn):
    handle = enqueue("workers.tasks.echo", [1])
    old = claim_one(conn, "worker-old")
    expire_lease(old.msg_id)
    assert rearm(conn) == (1, 0)
    with db_connection.worker_connection() as other:
        new = claim_one(other, "worker-new")
    assert new.msg_id == old.msg_id
    assert new.task_id == handle.task_id
    assert new.lease_token != old.lease_token
    assert new.attempts == 2

    def unchanged() -> Job:
        row = Job.objects.get(msg_id=new.msg_id)
        assert (row.state, row.lease_token, row.worker_id) == (
            "claimed",
            new.lease_token,
            "worker-new",
        )
        return row

    vt_before = unchanged().vt
    assert queries.job_ack(conn, [Success(old, "1", old.claimed_at)], ttl=60) == set()
    unchanged()
    assert queries.job_retry(conn, [RetryLater(old, 0.0, "old worker failed")]) == set()
    unchanged()
    assert queries.job_bury(conn, [Bury(old, "exhausted", "x", "", None)], ttl=60) == set()
    unchanged()
    assert queries.lease_extend(conn, {old.msg_id: old.lease_token}, lease=999) == set()
    assert unchanged().vt == vt_before
    assert queries.job_release(conn, {old.msg_id: old.lease_token}) == set()
    assert unchanged().attempts == 2
    assert not DeadLetter.objects.exists()
    assert not TaskResult.objects.exists()
    # The new owner still finishes it.
    assert queries.job_ack(conn, [Success(new, "1", new.claimed_at)], ttl=60) == {new.msg_id}
    assert TaskResult.objects.get(task_id=handle.task_id).attempts == 2


def test_lease_extend_renews_only_leases_still_held(conn):
    enqueue_many(job("workers.tasks.echo", [i]) for i in range(3))
    msgs = queries.job_claim(conn, queue="default", limit=3, lease=5, worker_id="w")
    held = {m.msg_id: m.lease_token for m in msgs}
    held[msgs[2].msg_id] = uuid.uuid4()  # lost this one
    assert queries.lease_extend(conn, held, lease=LEASE) == {msgs[0].msg_id, msgs[1].msg_id}
    rows = {r.msg_id: r for r in Job.objects.all()}
    now = db_now()
    assert rows[msgs[0].msg_id].vt - now > dt.timedelta(seconds=30)
    assert rows[msgs[2].msg_id].vt - now <= dt.timedelta(seconds=5)
    assert queries.lease_extend(conn, {}, lease=LEASE) == set()


def test_lease_renewal_skips_a_row_locked_elsewhere_and_keeps_it_ours(conn):
    enqueue_many(job("workers.tasks.echo", [i]) for i in range(2))
    locked, free = queries.job_claim(conn, queue="default", limit=2, lease=5, worker_id="w")
    held = {locked.msg_id: locked.lease_token, free.msg_id: free.lease_token}
    with db_connection.worker_connection() as operator, operator.transaction():
        operator.execute(
            "SELECT 1 FROM pg_queue_message WHERE msg_id = %s FOR UPDATE", [locked.msg_id]
        )
        renewal = queries.lease_renew(conn, held, lease=LEASE)
    assert renewal.renewed == {free.msg_id}
    assert renewal.busy == {locked.msg_id}  # not lost: renewed again next beat
    assert renewal.lost == set()
    assert queries.lease_renew(conn, held, lease=LEASE).renewed == set(held)


def test_lease_renewals_are_hot_updates(conn):
    """Renewing a lease changes only vt, which no index covers: the update stays on its page
    and touches no index (a HOT update), however many leases a worker renews each beat."""
    # Five rows: their claimed versions and two renewals' fit on the page they were written to
    # (with ten, the second renewal ran out of room on it; then an update cannot be HOT).
    enqueue_many(job("workers.tasks.echo", [i]) for i in range(5))
    msgs = queries.job_claim(conn, queue="default", limit=5, lease=5, worker_id="w")
    held = {m.msg_id: m.lease_token for m in msgs}
    # This backend's counts not yet flushed to the cumulative statistics (the claim's too).
    counts = (
        "SELECT pg_stat_get_xact_tuples_updated('pg_queue_message'::regclass), "
        "pg_stat_get_xact_tuples_hot_updated('pg_queue_message'::regclass)"
    )
    with conn.transaction():
        updated_before, hot_before = conn.execute(counts).fetchone()
        for lease in (LEASE, LEASE + 1):  # now() is fixed in a transaction: a new vt each time
            assert queries.lease_renew(conn, held, lease=lease).renewed == set(held)
        updated, hot = conn.execute(counts).fetchone()
    assert (updated - updated_before, hot - hot_before) == (10, 10)


def test_retry_puts_the_job_back_after_its_delay_with_the_error(conn):
    enqueue("workers.tasks.echo", [1])
    msg = claim_one(conn)
    assert queries.job_retry(conn, [RetryLater(msg, 3600.0, "ValueError: no")]) == {msg.msg_id}
    row = Job.objects.get()
    assert (row.state, row.lease_token, row.vt, row.worker_id) == ("ready", None, None, "")
    assert (row.attempts, row.last_error) == (1, "ValueError: no")
    assert row.available_at - db_now() > dt.timedelta(seconds=3500)
    assert row.scheduled  # an hour away: out of the claim index until promoted
    assert claim_all(conn) == []  # not due yet

    msg2 = dataclasses.replace(msg)
    assert queries.job_retry(conn, [RetryLater(msg2, 0.0, "again")]) == set()  # not claimed
    Job.objects.update(available_at=db_now())
    assert queries.job_promote(conn, limit=10) == 1  # the maintenance pass's promotion
    again = claim_one(conn)
    assert (again.msg_id, again.attempts) == (msg.msg_id, 2)


def test_bury_moves_the_job_to_dead_letter_with_a_failed_outcome(conn):
    handle = enqueue("workers.tasks.echo", [1], priority=4, tenant_key="org-9")
    (msg,) = queries.job_claim_fair(conn, queue="default", limit=1, lease=LEASE, worker_id="w").jobs
    started = msg.claimed_at
    buried = queries.job_bury(
        conn, [Bury(msg, "exhausted", "ValueError: x", "Traceback ...", started)], ttl=60
    )
    assert buried == {msg.msg_id}
    assert not Job.objects.exists()
    letter = DeadLetter.objects.get()
    assert (letter.task_id, letter.reason, letter.last_error) == (
        handle.task_id,
        "exhausted",
        "ValueError: x",
    )
    assert (letter.traceback, letter.attempts, letter.priority, letter.tenant_key) == (
        "Traceback ...",
        1,
        4,
        "org-9",
    )
    assert letter.payload == {"args": [1], "kwargs": {}}
    outcome = handle.outcome()
    assert (outcome.status, outcome.error, outcome.traceback) == (
        "failed",
        "ValueError: x",
        "Traceback ...",
    )


def test_release_hands_the_job_back_without_counting_the_attempt(conn):
    enqueue("workers.tasks.echo", [1])
    msg = claim_one(conn)
    assert queries.job_release(conn, {msg.msg_id: msg.lease_token}) == {msg.msg_id}
    row = Job.objects.get()
    assert (row.state, row.attempts, row.lease_token) == ("ready", 0, None)
    assert claim_one(conn).attempts == 1


def test_expired_lease_is_rearmed_by_any_worker(conn):
    handle = enqueue("workers.tasks.echo", [1])
    msg = claim_one(conn, "crashed-worker")
    assert rearm(conn) == (0, 0)  # lease still valid
    expire_lease(msg.msg_id)
    with db_connection.worker_connection() as other:
        assert rearm(other) == (1, 0)
    row = Job.objects.get()
    assert (row.state, row.lease_token, row.attempts) == ("ready", None, 1)
    assert "crashed-worker" in row.last_error
    assert handle.status() == "queued"


def test_expired_lease_on_the_last_attempt_is_dead_lettered(conn):
    handle = enqueue("workers.tasks.echo", [1], max_attempts=1)
    msg = claim_one(conn, "crashed-worker")
    expire_lease(msg.msg_id)
    assert rearm(conn) == (0, 1)
    assert not Job.objects.exists()
    assert DeadLetter.objects.get().reason == "lease_expired"
    outcome = handle.outcome()
    assert outcome.status == "failed"
    assert "lease expired" in outcome.error


def test_claim_never_returns_more_than_its_limit_or_another_queue(conn):
    enqueue_many(job("workers.tasks.echo", [i]) for i in range(10))
    enqueue("workers.tasks.echo", [99], queue="elsewhere")
    sizes = []
    for limit in (3, 1, 4, 5, 5):
        got = queries.job_claim(conn, queue="default", limit=limit, lease=LEASE, worker_id="w")
        assert len(got) <= limit
        assert all(m.queue_name == "default" for m in got)
        sizes.append(len(got))
    assert sizes == [3, 1, 4, 2, 0]
    assert [args_of(m) for m in claim_all(conn, "elsewhere")] == [[99]]


def test_two_concurrent_claimers_never_share_a_message():
    total = 2000
    enqueue_many(job("workers.tasks.echo", [i]) for i in range(total))
    all_ids = set(Job.objects.values_list("msg_id", flat=True))
    assert len(all_ids) == total
    start = threading.Barrier(2, timeout=30)

    def claimer(name: str, seed: int) -> tuple[list[int], list[tuple[int, int]], set[int]]:
        rng = random.Random(seed)
        claimed: list[int] = []
        over_limit: list[tuple[int, int]] = []
        acked: set[int] = set()
        with db_connection.worker_connection() as own:
            start.wait()
            for _ in range(total):  # bounded: each useful round claims at least one row
                limit = rng.randint(1, 40)
                got = queries.job_claim(
                    own, queue="default", limit=limit, lease=LEASE, worker_id=name
                )
                if len(got) > limit:
                    over_limit.append((limit, len(got)))
                if not got:
                    break
                claimed.extend(m.msg_id for m in got)
                if rng.random() < 0.5:  # ack some at once, like a worker would
                    acked |= queries.job_ack(
                        own, [Success(m, None, m.claimed_at) for m in got], ttl=60
                    )
        return claimed, over_limit, acked

    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = [pool.submit(claimer, f"claimer-{i}", i) for i in range(2)]
        results = [f.result(timeout=120) for f in futures]

    (a, over_a, acked_a), (b, over_b, acked_b) = results
    assert over_a == []
    assert over_b == []
    assert len(a) == len(set(a))
    assert len(b) == len(set(b))
    assert set(a).isdisjoint(b)
    assert set(a) | set(b) == all_ids
    assert acked_a <= set(a)
    assert acked_b <= set(b)
    assert not Job.objects.filter(state="ready").exists()
    assert Job.objects.count() == total - len(acked_a) - len(acked_b)
    # Every remaining row is claimed by the claimer that got it.
    owner = {i: "claimer-0" for i in a} | {i: "claimer-1" for i in b}
    for msg_id, worker_id in Job.objects.values_list("msg_id", "worker_id"):
        assert owner[msg_id] == worker_id


def test_delayed_job_is_not_claimable_before_its_time(conn):
    enqueue("workers.tasks.echo", [1], delay=3600)
    assert claim_all(conn) == []
    Job.objects.update(available_at=db_now() - dt.timedelta(seconds=1))
    assert claim_all(conn) == []  # scheduled: no claim reads it until it is promoted
    assert queries.job_promote(conn, limit=10) == 1
    assert len(claim_all(conn)) == 1


def test_a_job_is_scheduled_only_when_due_beyond_the_promotion_horizon(conn):
    """Jobs due within SCHEDULE_AHEAD go straight into the claim index; later ones wait out of
    it, whichever enqueue path wrote them, and are promoted before they are due."""
    enqueue("workers.tasks.echo", [1], delay=sql.SCHEDULE_AHEAD - 5)
    enqueue("workers.tasks.echo", [2], delay=sql.SCHEDULE_AHEAD + 5)
    enqueue("workers.tasks.echo", [3], eta=db_now() + dt.timedelta(days=1))
    enqueue_many(
        [job("workers.tasks.echo", [4], delay=30), job("workers.tasks.echo", [5], delay=86_400)]
    )
    enqueue_many([job("workers.tasks.echo", [6], delay=86_400, resource_key="k")])
    scheduled = dict(Job.objects.values_list("payload__args__0", "scheduled"))
    assert scheduled == {1: False, 2: True, 3: True, 4: False, 5: True, 6: True}
    # Promotion takes what is due within the horizon, earliest first, and nothing else.
    Job.objects.filter(payload__args__0=2).update(available_at=db_now() + dt.timedelta(seconds=30))
    assert queries.job_promote(conn, limit=10) == 1
    assert set(Job.objects.filter(scheduled=True).values_list("payload__args__0", flat=True)) == {
        3,
        5,
        6,
    }


def test_a_claim_reads_no_scheduled_job(conn):
    """20,000 jobs delayed by a day beside 50 due ones: the claim's index scan returns the 50
    due rows and reads nothing else (before scheduled jobs left the index, it walked all 20,000
    future rows on every claim that found fewer due jobs than its limit)."""
    enqueue_many(job("workers.tasks.echo", [i], delay=86_400) for i in range(20_000))
    enqueue_many(job("workers.tasks.echo", [i]) for i in range(50))
    conn.execute("VACUUM ANALYZE pg_queue_message")
    with conn.transaction():
        plan = "\n".join(
            row[0]
            for row in conn.execute(
                "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) " + sql_claim.JOB_CLAIM,
                {"queue": "default", "limit": 100, "lease": LEASE, "worker_id": "w"},
            ).fetchall()
        )
        conn.execute("ROLLBACK")
    scan = plan[plan.index("Index Scan using pg_queue_msg_claim_idx") :]
    assert "rows=50 loops=1" in scan.splitlines()[0], plan
    buffers = re.search(r"Buffers: shared hit=(\d+)(?: read=(\d+))?", scan)
    assert buffers is not None, plan
    assert int(buffers.group(1)) + int(buffers.group(2) or 0) < 20, plan


def test_delayed_job_becomes_claimable_once_due(conn):
    handle = enqueue("workers.tasks.echo", [1], delay=0.3)
    available_at = Job.objects.get().available_at
    got: list[ClaimedJob] = []
    for _ in range(500):  # bounded wait, well over the delay
        got = claim_all(conn)
        if got:
            break
        threading.Event().wait(0.01)
    assert [m.task_id for m in got] == [handle.task_id]
    assert got[0].claimed_at >= available_at  # never claimed before it was due


def test_eta_in_the_future_is_not_claimable_and_in_the_past_is(conn):
    now = db_now()
    enqueue("workers.tasks.echo", ["later"], eta=now + dt.timedelta(hours=1))
    enqueue("workers.tasks.echo", ["earlier"], eta=now - dt.timedelta(minutes=1))
    assert [args_of(m) for m in claim_all(conn)] == [["earlier"]]


def test_claim_order_is_priority_then_age(conn):
    specs = [("p0-a", 0), ("p5-a", 5), ("neg", -3), ("p10", 10), ("p5-b", 5), ("p0-b", 0)]
    for name, priority in specs:
        enqueue("workers.tasks.echo", [name], priority=priority)
    order = []
    for _ in specs:
        order.append(args_of(claim_one(conn))[0])
    assert order == ["p10", "p5-a", "p5-b", "p0-a", "p0-b", "neg"]


def test_claim_with_a_limit_takes_the_highest_priority_rows(conn):
    enqueue_many(job("workers.tasks.echo", [i], priority=i) for i in range(20))
    got = queries.job_claim(conn, queue="default", limit=5, lease=LEASE, worker_id="w")
    assert sorted(args_of(m)[0] for m in got) == [15, 16, 17, 18, 19]


def test_worker_connections_plan_every_claim_for_the_current_table_size():
    """A generic plan (PostgreSQL's default after five executions of a prepared statement) is
    costed once, from the table's size at that moment: one made while the queue was empty
    scans the whole table once the queue is deep. The worker's statements must stay custom."""
    with db_connection.worker_connection() as conn:
        for _ in range(8):
            queries.job_claim(conn, queue="default", limit=10, lease=30, worker_id="w")
        plans = conn.execute(
            "SELECT generic_plans, custom_plans FROM pg_prepared_statements "
            "WHERE statement LIKE '%FOR UPDATE OF m SKIP LOCKED%' "
            "AND statement NOT LIKE '%pg_prepared_statements%'"
        ).fetchall()
    assert plans == [(0, 8)]


def test_vacuum_warning_names_what_keeps_the_queue_table_from_being_vacuumed(conn):
    server_off, table_off = conn.execute(sql_worker.QUEUE_VACUUM_STATE).fetchone()
    assert server_off is (conn.execute("SHOW autovacuum").fetchone()[0] == "off")
    assert table_off is False
    expected = "autovacuum is off on this server" if server_off else None
    assert queries.vacuum_warning(conn) == expected
    conn.execute("ALTER TABLE pg_queue_message SET (autovacuum_enabled = false)")
    try:
        assert conn.execute(sql_worker.QUEUE_VACUUM_STATE).fetchone()[1] is True
        assert queries.vacuum_warning(conn) == (
            expected or "autovacuum is disabled for pg_queue_message (autovacuum_enabled=false)"
        )
    finally:
        conn.execute("ALTER TABLE pg_queue_message RESET (autovacuum_enabled)")
    assert conn.execute(sql_worker.QUEUE_VACUUM_STATE).fetchone()[1] is False


def test_a_claimed_batch_comes_back_in_claim_order(conn):
    """The batch runs in the order the claim returns it: highest priority first, then due
    time, then enqueue order (RETURNING alone keeps no order)."""
    enqueue_many(job("workers.tasks.echo", [i], priority=i % 3) for i in range(30))
    got = queries.job_claim(conn, queue="default", limit=30, lease=LEASE, worker_id="w")
    assert [args_of(m)[0] for m in got] == [
        *range(2, 30, 3),
        *range(1, 30, 3),
        *range(0, 30, 3),
    ]


def test_a_worker_promotes_and_runs_a_scheduled_job_once_its_time_comes(run_worker):
    handle = enqueue("workers.tasks.echo", [7], delay=86_400)
    Job.objects.update(available_at=db_now() - dt.timedelta(seconds=1))  # its day has passed
    assert Job.objects.get().scheduled
    code, output = run_worker()
    assert code == 0, output
    assert TaskResult.objects.get(task_id=handle.task_id).status == "succeeded", output
