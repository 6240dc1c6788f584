"""The hot path: claim, ack, retry, bury, extend, release and re-arm, each one statement.

Functions take a psycopg connection in autocommit mode (the worker's own, not Django's), so a
statement commits as soon as it returns and no transaction is held while a task runs. Batched
operations take parallel lists so one round trip serves a whole batch.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from pg_queue.core.conf import RESULT_CHANNEL
from pg_queue.core.outcomes import Bury, Cancelled, ClaimedJob, RetryLater, Success
from pg_queue.db import sql, sql_claim, sql_worker

if TYPE_CHECKING:  # psycopg is imported by whoever opens the connection
    import psycopg


def job_claim(
    conn: psycopg.Connection[Any],
    *,
    queue: str,
    limit: int,
    lease: float,
    worker_id: str,
    keyed: bool = True,
) -> list[ClaimedJob]:
    """Claim up to ``limit`` due jobs of ``queue`` without a tenant; never more, never one
    held elsewhere. ``keyed=False``: leave jobs with a resource key alone (a cheaper claim for
    a queue that has none)."""
    rows = conn.execute(
        sql_claim.JOB_CLAIM if keyed else sql_claim.JOB_CLAIM_KEYLESS,
        {"queue": queue, "limit": limit, "lease": lease, "worker_id": worker_id},
    ).fetchall()
    # RETURNING keeps no order: the batch runs in claim order (priority, due time, msg_id),
    # sorted here rather than by a wrapping SELECT that would cost every claim a plan node.
    rows.sort(key=lambda r: (-r[-1], r[9], r[0]))
    return [ClaimedJob(*row[:-1]) for row in rows]  # payloads as text: decoded one by one


@dataclass(frozen=True, slots=True)
class FairClaim:
    """A round-robin claim's jobs (first turns first) and where the next claim starts."""

    jobs: list[ClaimedJob]
    next_start: str
    tenants: int  # how many tenants the claim listed (pass it to the next one)


def job_claim_fair(
    conn: psycopg.Connection[Any],
    *,
    queue: str,
    limit: int,
    lease: float,
    worker_id: str,
    start: str = "",
    tenants: int = 1,
) -> FairClaim:
    """Claim up to ``limit`` due jobs of ``queue`` round-robin across tenants, the tenants
    from ``start`` on (see ``sql_claim.JOB_CLAIM_FAIR``); ``tenants`` is how many the last
    claim listed (``FairClaim.tenants``), which sets how deep each tenant is read."""
    rows = conn.execute(
        sql_claim.JOB_CLAIM_FAIR,
        {
            "queue": queue,
            "limit": limit,
            "per_tenant": -(-limit // max(1, min(tenants, limit))),
            "lease": lease,
            "worker_id": worker_id,
            "start": start,
        },
    ).fetchall()
    rows.sort(key=lambda r: (r[-3], r[9], r[0]))
    # An empty claim says nothing about the tenants: the next one reads as deep as this one.
    listed = rows[0][-1] if rows else tenants
    # The tenant list was cut at ``limit``: the next claim goes on from its last tenant.
    next_start = rows[0][-2] if rows and listed >= limit else ""
    return FairClaim([ClaimedJob(*row[:-3]) for row in rows], next_start, listed)


@dataclass(frozen=True, slots=True)
class QueueKinds:
    """Which queues hold a tenant's ready job, and which a live job with a resource key."""

    tenants: set[str]
    keyed: set[str]


def queue_kinds(conn: psycopg.Connection[Any], queues: list[str]) -> QueueKinds:
    """What the claim of each of ``queues`` must handle (``sql_claim.QUEUE_KINDS``)."""
    rows = conn.execute(sql_claim.QUEUE_KINDS, {"queues": queues}).fetchall()
    return QueueKinds({q for q, t, _ in rows if t}, {q for q, _, k in rows if k})


@dataclass(frozen=True, slots=True)
class Marked:
    """What ``waiter_mark`` did: the queues now marked as asked, and whether a job waits."""

    queues: set[str]
    jobs_waiting: bool


def waiter_mark(
    conn: psycopg.Connection[Any], *, worker_id: str, queues: list[str], takeable: bool
) -> Marked:
    """Set this worker's wake-up marks on ``queues`` (``sql_worker.WAITER_MARK``)."""
    row = conn.execute(
        sql_worker.WAITER_MARK, {"worker_id": worker_id, "queues": queues, "takeable": takeable}
    ).fetchone()
    assert row is not None  # one row, always
    return Marked(set(row[0]), bool(row[1]))


def job_due_soon(
    conn: psycopg.Connection[Any], *, queues: list[str], lookahead: float, lease: float
) -> bool:
    """Anything a --burst worker should still wait for (see ``sql_worker.JOB_DUE_SOON``)."""
    row = conn.execute(
        sql_worker.JOB_DUE_SOON, {"queues": queues, "lookahead": lookahead, "lease": lease}
    ).fetchone()
    return bool(row and row[0])


def job_ack(
    conn: psycopg.Connection[Any], items: list[Success], *, ttl: float, notify: bool = False
) -> set[int]:
    """Delete acked jobs and store their outcomes in one statement; returns acked ids."""
    batch = orjson.dumps(
        [
            {
                "i": s.msg.msg_id,
                "t": s.msg.lease_token,
                "s": s.started_at.timestamp(),
                "k": s.result_json is not None,
                "r": None if s.result_json is None else orjson.Fragment(s.result_json),
            }
            for s in items
        ]
    ).decode()
    keyed = any(s.msg.resource_key is not None for s in items)
    rows = conn.execute(
        sql.JOB_ACK if keyed else sql.JOB_ACK_KEYLESS,
        {
            "batch": batch,
            "ttl": ttl,
            "notify": notify,
            "channel": RESULT_CHANNEL,
        },
    ).fetchall()
    return {r[0] for r in rows}


def job_retry(conn: psycopg.Connection[Any], items: list[RetryLater]) -> set[int]:
    rows = conn.execute(
        sql.JOB_RETRY,
        {
            "msg_ids": [r.msg.msg_id for r in items],
            "tokens": [r.msg.lease_token for r in items],
            "delays": [r.delay for r in items],
            "errors": [r.error for r in items],
            "min_max": [r.min_max_attempts for r in items],
        },
    ).fetchall()
    return {r[0] for r in rows}


def job_bury(
    conn: psycopg.Connection[Any], items: list[Bury], *, ttl: float, notify: bool = False
) -> set[int]:
    """Dead-letter jobs and record failed outcomes in one statement; returns moved ids."""
    rows = conn.execute(
        sql.JOB_BURY,
        {
            "msg_ids": [b.msg.msg_id for b in items],
            "tokens": [b.msg.lease_token for b in items],
            "reasons": [b.reason for b in items],
            "errors": [b.error for b in items],
            "tracebacks": [b.traceback for b in items],
            "started": [b.started_at for b in items],
            "ttl": ttl,
            "notify": notify,
            "channel": RESULT_CHANNEL,
        },
    ).fetchall()
    return {r[0] for r in rows}


@dataclass(frozen=True, slots=True)
class LeaseRenewal:
    """What one renewal found: renewed ids (and which of them an operator cancelled), ids
    locked by someone else right now (still ours: retried next beat), and ids lost to us."""

    renewed: set[int]
    cancel_requested: set[int]
    busy: set[int]
    lost: set[int]


def lease_renew(
    conn: psycopg.Connection[Any], held: dict[int, uuid.UUID], *, lease: float
) -> LeaseRenewal:
    """Renew every lease in ``held`` (msg_id -> token) that nobody else has locked right now."""
    if not held:
        return LeaseRenewal(set(), set(), set(), set())
    rows = conn.execute(
        sql.LEASE_EXTEND,
        {"msg_ids": list(held), "tokens": list(held.values()), "lease": lease},
    ).fetchall()
    renewal = LeaseRenewal(set(), set(), set(), set())
    for msg_id, renewed, cancel, ours in rows:
        if renewed:
            renewal.renewed.add(msg_id)
            if cancel:
                renewal.cancel_requested.add(msg_id)
        elif ours:
            renewal.busy.add(msg_id)
        else:
            renewal.lost.add(msg_id)
    return renewal


def lease_extend(
    conn: psycopg.Connection[Any], held: dict[int, uuid.UUID], *, lease: float
) -> set[int]:
    """Renew like ``lease_renew``; returns the ids renewed."""
    return lease_renew(conn, held, lease=lease).renewed


def job_cancel(
    conn: psycopg.Connection[Any], items: list[Cancelled], *, ttl: float, notify: bool = False
) -> set[int]:
    """Finish operator-cancelled jobs with a 'cancelled' outcome; returns the ids finished."""
    rows = conn.execute(
        sql.JOB_CANCEL,
        {
            "msg_ids": [c.msg.msg_id for c in items],
            "tokens": [c.msg.lease_token for c in items],
            "errors": [c.error for c in items],
            "ttl": ttl,
            "notify": notify,
            "channel": RESULT_CHANNEL,
        },
    ).fetchall()
    return {r[0] for r in rows}


def job_release(
    conn: psycopg.Connection[Any],
    held: dict[int, uuid.UUID],
    *,
    started: set[int] | frozenset[int] = frozenset(),
) -> set[int]:
    """Hand claimed jobs back to the queue (graceful shutdown).

    A job that never started gets its attempt back; one in ``started`` keeps it (attempts
    count executions started, whether or not they finished).
    """
    if not held:
        return set()
    rows = conn.execute(
        sql.JOB_RELEASE,
        {
            "msg_ids": list(held),
            "tokens": list(held.values()),
            "refund": [msg_id not in started for msg_id in held],
        },
    ).fetchall()
    return {r[0] for r in rows}


def job_rearm(conn: psycopg.Connection[Any], *, limit: int) -> int:
    """Return expired claims with attempts left to ready; returns how many."""
    return len(conn.execute(sql.JOB_REARM, {"limit": limit}).fetchall())


def job_rearm_exhausted(
    conn: psycopg.Connection[Any], *, limit: int, ttl: float, notify: bool = False
) -> list[tuple[uuid.UUID, str, str, str, str, uuid.UUID | None, int | None]]:
    """Dead-letter expired claims on their last attempt; waiters on them are woken.

    Returns (task_id, task_name, queue_name, payload as JSON text, error, group_id, group_index)
    per row, so the caller can fire ``on_error`` continuations and count the job into its group
    in the same transaction, decoding each payload inside its own guard.
    """
    return conn.execute(
        sql.JOB_REARM_EXHAUSTED,
        {"limit": limit, "ttl": ttl, "notify": notify, "channel": RESULT_CHANNEL},
    ).fetchall()


def job_insert_many(conn: psycopg.Connection[Any], params: dict[str, Any]) -> None:
    """Insert rows prepared by ``producer.bulk_params`` (continuations from the worker)."""
    conn.execute(sql.insert_many(params), params)


def job_promote(conn: psycopg.Connection[Any], *, limit: int) -> int:
    """Promote up to ``limit`` scheduled jobs due within ``sql.SCHEDULE_AHEAD``; how many."""
    return conn.execute(
        sql_worker.JOB_PROMOTE, {"ahead": sql.SCHEDULE_AHEAD, "limit": limit}
    ).rowcount


def result_sweep(conn: psycopg.Connection[Any], *, limit: int) -> int:
    """Delete up to ``limit`` expired results."""
    return conn.execute(sql_worker.RESULT_SWEEP, {"limit": limit}).rowcount


def vacuum_warning(conn: psycopg.Connection[Any]) -> str | None:
    """Why the queue table will not be autovacuumed, or None if nothing stops it."""
    row = conn.execute(sql_worker.QUEUE_VACUUM_STATE).fetchone()
    if row is None:
        return None
    server_off, table_off = row
    if server_off:
        return "autovacuum is off on this server"
    if table_off:
        return "autovacuum is disabled for pg_queue_message (autovacuum_enabled=false)"
    return None
