"""Tenant fairness: the round-robin claim (``sql_claim.JOB_CLAIM_FAIR``) against real PostgreSQL,
and a real worker process that switches to it."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from pg_queue.core.conf import KEY_WAKE, NOTIFY_CHANNEL, TENANT_WAKE
from pg_queue.core.outcomes import ClaimedJob
from pg_queue.core.payload import loads
from pg_queue.db import connection as db_connection
from pg_queue.db import queries, sql_claim
from pg_queue.models import Job, TaskResult
from pg_queue.producer import enqueue, enqueue_many, job

pytestmark = pytest.mark.django_db(transaction=True)

LEASE = 60.0
ADD = "workers.tasks.add"


@pytest.fixture
def conn() -> Iterator[psycopg.Connection[Any]]:
    with db_connection.worker_connection() as c:
        yield c


def fair(
    conn: psycopg.Connection[Any], limit: int = 100, start: str = "", tenants: int = 1
) -> queries.FairClaim:
    return queries.job_claim_fair(
        conn, queue="default", limit=limit, lease=LEASE, worker_id="w", start=start, tenants=tenants
    )


def tenant_of(msg: ClaimedJob) -> str:
    return str(Job.objects.values_list("tenant_key", flat=True).get(msg_id=msg.msg_id))


def flood(tenant: str, n: int, **options: Any) -> None:
    enqueue_many([job(ADD, [i, 0], tenant_key=tenant, **options) for i in range(n)])


def test_a_tenants_flood_of_50000_costs_another_tenant_one_turn(conn) -> None:
    flood("tenant-a", 50_000)
    flood("tenant-b", 100)
    conn.execute("ANALYZE pg_queue_message")
    a_claimed = b_claimed = 0
    order: dict[str, list[int]] = {"tenant-a": [], "tenant-b": []}
    start, tenants = "", 1
    for _ in range(1_000):  # bounded; the loop ends when B is through
        claim = fair(conn, start=start, tenants=tenants)
        start, tenants = claim.next_start, claim.tenants
        assert claim.jobs, "the claim came back empty with jobs due"
        rows = dict(
            Job.objects.filter(msg_id__in=[m.msg_id for m in claim.jobs]).values_list(
                "msg_id", "tenant_key"
            )
        )
        for msg in claim.jobs:
            order[rows[msg.msg_id]].append(loads(msg.payload_text)["args"][0])
        a_claimed = len(order["tenant-a"])
        b_claimed = len(order["tenant-b"])
        if b_claimed == 100:
            break
    assert b_claimed == 100
    # Every one of B's jobs was taken before 5 % of A's (2,500): in fact within B's 100 turns.
    assert a_claimed <= 100, a_claimed
    # Each tenant's own jobs keep their order.
    assert order["tenant-a"] == sorted(order["tenant-a"])
    assert order["tenant-b"] == list(range(100))


def test_jobs_without_a_tenant_are_one_tenant_beside_the_others(conn) -> None:
    flood("", 300)
    flood("acme", 10)
    claim = fair(conn, limit=20)
    assert sorted(tenant_of(m) for m in claim.jobs) == [""] * 10 + ["acme"] * 10
    # First turns first: the batch alternates between the two.
    assert [tenant_of(m) for m in claim.jobs[:2]] in (["", "acme"], ["acme", ""])


def test_a_higher_priority_job_never_waits_behind_another_tenants_lower_one(conn) -> None:
    flood("low", 50, priority=0)
    flood("high", 3, priority=5)
    claim = fair(conn, limit=100)
    assert [tenant_of(m) for m in claim.jobs] == ["high"] * 3
    assert len(fair(conn, limit=100).jobs) == 50


def test_every_tenant_gets_a_turn_when_there_are_more_tenants_than_a_batch(conn) -> None:
    enqueue_many([job(ADD, [t, j], tenant_key=f"t{t:03d}") for t in range(250) for j in (0, 1)])
    served: set[str] = set()
    start, tenants = "", 1
    for _ in range(3):
        claim = fair(conn, limit=100, start=start, tenants=tenants)
        start, tenants = claim.next_start, claim.tenants
        served.update(tenant_of(m) for m in claim.jobs)
    assert len(served) == 250
    Job.objects.all().delete()
    # An empty claim keeps the last tenant count (a reset to 1 would make the next claim read
    # a whole batch from each of up to a batch of tenants).
    assert tenants > 1
    assert fair(conn, limit=100, tenants=tenants).tenants == tenants
    # ... also when that count filled the batch (the next claim then starts from the top).
    empty = fair(conn, limit=100, start="t199", tenants=100)
    assert (empty.jobs, empty.tenants, empty.next_start) == ([], 100, "")


def test_the_plain_claim_leaves_tenants_jobs_to_the_fair_one(conn) -> None:
    enqueue(ADD, [1, 1], tenant_key="acme")
    enqueue(ADD, [2, 2])
    assert queries.queue_kinds(conn, ["default", "other"]).tenants == {"default"}
    plain = queries.job_claim(conn, queue="default", limit=10, lease=LEASE, worker_id="w")
    assert [loads(m.payload_text)["args"] for m in plain] == [[2, 2]]
    assert [loads(m.payload_text)["args"] for m in fair(conn).jobs] == [[1, 1]]
    assert queries.queue_kinds(conn, ["default"]).tenants == set()


def test_a_tenant_job_with_a_resource_key_still_holds_its_key(conn) -> None:
    enqueue_many([job(ADD, [i, 0], tenant_key="acme", resource_key="printer") for i in range(3)])
    enqueue_many([job(ADD, [i, 0], tenant_key="other", resource_key="printer") for i in range(3)])
    first = fair(conn)
    assert len(first.jobs) == 1  # one job per key, whichever tenant
    assert fair(conn).jobs == []


def waiting(conn: psycopg.Connection[Any]) -> None:
    """A worker waits on "default": the next lone enqueue there sends a NOTIFY."""
    queries.waiter_mark(conn, worker_id="w", queues=["default"], takeable=False)


def test_a_tenants_enqueue_announces_itself_to_the_workers(conn) -> None:
    conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
    waiting(conn)
    enqueue(ADD, [1, 1], tenant_key="acme")
    waiting(conn)
    enqueue(ADD, [1, 1])
    enqueue_many([job(ADD, [i, 0], tenant_key="b") for i in range(3)])
    payloads = [n.payload for n in conn.notifies(timeout=2.0, stop_after=3)]
    assert payloads == ["default" + TENANT_WAKE, "default", "default" + TENANT_WAKE]


def test_a_worker_runs_a_late_tenant_before_5_percent_of_an_earlier_flood(run_worker) -> None:
    flood("tenant-a", 5_000)
    late = {h.task_id for h in enqueue_many([job(ADD, [i, 0], tenant_key="b") for i in range(50)])}
    code, output = run_worker("--concurrency", "4")
    assert code == 0, output
    starts = sorted(TaskResult.objects.values_list("started_at", "task_id"))
    assert len(starts) == 5_050, output
    last_late = max(i for i, (_, task_id) in enumerate(starts) if task_id in late)
    a_before = last_late + 1 - len(late)
    assert a_before < 250, f"{a_before} of tenant A's jobs started before tenant B's last one"


# --- what the worker's claim must handle, per queue -----------------------------------------


def test_the_keyless_claim_leaves_keyed_jobs_and_the_probe_finds_them(conn) -> None:
    enqueue(ADD, [1, 1])
    enqueue(ADD, [2, 2], resource_key="printer")
    assert queries.queue_kinds(conn, ["default", "other"]).keyed == {"default"}
    keyless = queries.job_claim(
        conn, queue="default", limit=10, lease=LEASE, worker_id="w", keyed=False
    )
    assert [loads(m.payload_text)["args"] for m in keyless] == [[1, 1]]
    assert keyless[0].resource_key is None
    (keyed,) = queries.job_claim(conn, queue="default", limit=10, lease=LEASE, worker_id="w")
    assert keyed.resource_key == "printer"
    # Claimed, the keyed job still makes its queue keyed: its finish unparks the next one.
    enqueue(ADD, [3, 3], resource_key="printer")
    assert queries.queue_kinds(conn, ["default"]).keyed == {"default"}


def test_a_keyed_enqueue_announces_its_key_to_the_workers(conn) -> None:
    conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
    waiting(conn)
    enqueue(ADD, [1, 1], resource_key="printer")
    waiting(conn)
    enqueue(ADD, [1, 1], resource_key="scanner", tenant_key="acme")
    enqueue_many([job(ADD, [i, 0], resource_key=f"k{i}") for i in range(2)])
    payloads = [n.payload for n in conn.notifies(timeout=2.0, stop_after=3)]
    assert payloads == [
        "default" + KEY_WAKE,
        "default" + TENANT_WAKE + KEY_WAKE,
        "default" + KEY_WAKE,
    ]


def test_the_kinds_probe_reads_one_index_entry_per_queue_whatever_other_queues_hold(conn) -> None:
    """5,000 live keyed jobs (one key each) in another queue: the probe of a queue without keyed
    jobs still reads nothing of theirs (before its index it walked every live keyed row)."""
    enqueue_many(
        [job(ADD, [i, 0], queue="per-user", resource_key=f"user:{i}") for i in range(5000)]
    )
    enqueue(ADD, [1, 1])
    conn.execute("VACUUM ANALYZE pg_queue_message")
    plan = "\n".join(
        row[0]
        for row in conn.execute(
            "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) " + sql_claim.QUEUE_KINDS,
            {"queues": ["default"]},
        ).fetchall()
    )
    assert "Seq Scan" not in plan, plan
    assert "pg_queue_msg_keyed_queue_idx" in plan, plan
    first = re.search(r"Buffers: shared hit=(\d+)", plan)  # the whole statement's
    assert first is not None, plan
    assert int(first.group(1)) < 30, plan
    assert queries.queue_kinds(conn, ["default", "per-user"]).keyed == {"per-user"}
