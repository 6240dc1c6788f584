"""The hot path: claim, ack, retry, bury, extend, release and re-arm, each one statement.

Functions take a psycopg connection in autocommit mode (the worker's own, not Django's), so a
statement commits as soon as it returns and no transaction is held while a task runs. Batched
operations take parallel lists so one round trip serves a whole batch.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from typing import Any

import orjson
import psycopg
from django.db import connections
from psycopg.types.json import set_json_loads

from pg_queue import sql
from pg_queue.conf import RESULT_CHANNEL, queue_settings
from pg_queue.payload import ContinuationSpec


@dataclass(frozen=True, slots=True)
class ClaimedMessage:
    """A message this worker holds a lease on."""

    msg_id: int
    task_id: uuid.UUID
    task_name: str
    queue_name: str
    payload: Any
    attempts: int
    max_attempts: int
    lease_token: uuid.UUID
    enqueued_at: dt.datetime
    available_at: dt.datetime  # when it became due (enqueue time unless delayed or retried)
    claimed_at: dt.datetime  # database clock at claim
    cancel_requested: bool = False  # an operator cancelled it before this claim


@dataclass(frozen=True, slots=True)
class Success:
    msg: ClaimedMessage
    result_json: str | None  # None: the task does not store results
    started_at: dt.datetime
    on_success: ContinuationSpec | None = None
    value: Any = None  # the JSON-coerced result, kept only when on_success needs it


@dataclass(frozen=True, slots=True)
class RetryLater:
    msg: ClaimedMessage
    delay: float
    error: str
    # Raise the row's max_attempts to at least this (a Celery task's own self.retry(max_retries=)
    # is the bound there; Celery already refused when it was exhausted). 0 = unchanged.
    min_max_attempts: int = 0


@dataclass(frozen=True, slots=True)
class Bury:
    msg: ClaimedMessage
    reason: str
    error: str
    traceback: str
    started_at: dt.datetime | None
    on_error: ContinuationSpec | None = None


@dataclass(frozen=True, slots=True)
class Cancelled:
    """An operator cancelled the job; it ends with a 'cancelled' outcome and fires on_error."""

    msg: ClaimedMessage
    error: str
    on_error: ContinuationSpec | None = None


def worker_connection(alias: str = "default") -> psycopg.Connection[Any]:
    """A fresh autocommit psycopg connection to the database Django's ``alias`` points at.

    Prepared statements follow ``PG_QUEUE['PREPARED_STATEMENTS']`` (turn them off behind a
    PgBouncer that does not support them).
    """
    params = dict(connections[alias].get_connection_params())
    for django_only in ("context", "cursor_factory", "server_side_binding"):
        params.pop(django_only, None)
    params.pop("prepare_threshold", None)
    # Bound every network wait: a partition must not block the heartbeat (which holds the
    # in-flight lock while renewing) for the kernel's default of many minutes.
    lease_ms = int(queue_settings().lease_seconds * 1000)
    params.setdefault("connect_timeout", 10)
    params.setdefault("keepalives", 1)
    params.setdefault("keepalives_idle", 10)
    params.setdefault("keepalives_interval", 5)
    params.setdefault("keepalives_count", 3)
    params.setdefault("tcp_user_timeout", lease_ms)
    conn = psycopg.connect(**params, autocommit=True)
    if queue_settings().prepared_statements:
        conn.prepare_threshold = 0
        # PostgreSQL switches a prepared statement to a generic plan after five executions,
        # costed from the table's size at that moment and then kept. Made while the queue was
        # empty (a fresh start, a drained queue after VACUUM), it seq-scans once the queue is
        # deep: measured, claims took 1.3 s each and a 6,000 jobs/s stream backed up. Custom
        # plans are made per execution from the current size; preparing still saves the parse.
        conn.execute("SET plan_cache_mode = force_custom_plan")
    else:
        conn.prepare_threshold = None
    # Payloads arrive as jsonb on every claim: orjson parses them several times faster.
    set_json_loads(orjson.loads, conn)
    return conn


def message_claim(
    conn: psycopg.Connection[Any], *, queue: str, limit: int, lease: float, worker_id: str
) -> list[ClaimedMessage]:
    """Claim up to ``limit`` due messages of ``queue``; never more, never one held elsewhere."""
    rows = conn.execute(
        sql.MESSAGE_CLAIM,
        {"queue": queue, "limit": limit, "lease": lease, "worker_id": worker_id},
    ).fetchall()
    return [ClaimedMessage(*row) for row in rows]


def message_due_soon(
    conn: psycopg.Connection[Any], *, queues: list[str], lookahead: float, lease: float
) -> bool:
    """Anything a --burst worker should still wait for (see ``sql.MESSAGE_DUE_SOON``)."""
    row = conn.execute(
        sql.MESSAGE_DUE_SOON, {"queues": queues, "lookahead": lookahead, "lease": lease}
    ).fetchone()
    return bool(row and row[0])


def message_ack(
    conn: psycopg.Connection[Any], items: list[Success], *, ttl: float, notify: bool = False
) -> set[int]:
    """Delete acked messages and store their outcomes in one statement; returns acked ids."""
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
    rows = conn.execute(
        sql.MESSAGE_ACK,
        {
            "batch": batch,
            "ttl": ttl,
            "notify": notify,
            "channel": RESULT_CHANNEL,
        },
    ).fetchall()
    return {r[0] for r in rows}


def message_retry(conn: psycopg.Connection[Any], items: list[RetryLater]) -> set[int]:
    rows = conn.execute(
        sql.MESSAGE_RETRY,
        {
            "msg_ids": [r.msg.msg_id for r in items],
            "tokens": [r.msg.lease_token for r in items],
            "delays": [r.delay for r in items],
            "errors": [r.error for r in items],
            "min_max": [r.min_max_attempts for r in items],
        },
    ).fetchall()
    return {r[0] for r in rows}


def message_bury(
    conn: psycopg.Connection[Any], items: list[Bury], *, ttl: float, notify: bool = False
) -> set[int]:
    """Dead-letter messages and record failed outcomes in one statement; returns moved ids."""
    rows = conn.execute(
        sql.MESSAGE_BURY,
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


def lease_extend(
    conn: psycopg.Connection[Any], held: dict[int, uuid.UUID], *, lease: float
) -> set[int]:
    """Renew every lease in ``held`` (msg_id -> token); returns the ids still ours."""
    return set(lease_extend_flags(conn, held, lease=lease))


def lease_extend_flags(
    conn: psycopg.Connection[Any], held: dict[int, uuid.UUID], *, lease: float
) -> dict[int, bool]:
    """Renew like ``lease_extend``; maps each id still ours to its ``cancel_requested``."""
    if not held:
        return {}
    rows = conn.execute(
        sql.LEASE_EXTEND,
        {"msg_ids": list(held), "tokens": list(held.values()), "lease": lease},
    ).fetchall()
    return {r[0]: bool(r[1]) for r in rows}


def message_cancel(
    conn: psycopg.Connection[Any], items: list[Cancelled], *, ttl: float, notify: bool = False
) -> set[int]:
    """Finish operator-cancelled jobs with a 'cancelled' outcome; returns the ids finished."""
    rows = conn.execute(
        sql.MESSAGE_CANCEL,
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


def message_release(conn: psycopg.Connection[Any], held: dict[int, uuid.UUID]) -> set[int]:
    """Hand claimed-but-unstarted or abandoned messages back without counting an attempt."""
    if not held:
        return set()
    rows = conn.execute(
        sql.MESSAGE_RELEASE, {"msg_ids": list(held), "tokens": list(held.values())}
    ).fetchall()
    return {r[0] for r in rows}


def message_rearm(conn: psycopg.Connection[Any], *, limit: int) -> int:
    """Return expired claims with attempts left to ready; returns how many."""
    return len(conn.execute(sql.MESSAGE_REARM, {"limit": limit}).fetchall())


def message_rearm_exhausted(
    conn: psycopg.Connection[Any], *, limit: int, ttl: float
) -> list[tuple[uuid.UUID, str, str, Any, str]]:
    """Dead-letter expired claims on their last attempt.

    Returns (task_id, task_name, queue_name, payload, error) per row so the caller can fire
    ``on_error`` continuations in the same transaction.
    """
    return conn.execute(sql.MESSAGE_REARM_EXHAUSTED, {"limit": limit, "ttl": ttl}).fetchall()


def message_insert_many(conn: psycopg.Connection[Any], params: dict[str, Any]) -> None:
    """Insert rows prepared by ``producer.bulk_params`` (continuations from the worker)."""
    conn.execute(sql.MESSAGE_INSERT_MANY, params)


def result_sweep(conn: psycopg.Connection[Any], *, limit: int) -> int:
    """Delete up to ``limit`` expired results."""
    return conn.execute(sql.RESULT_SWEEP, {"limit": limit}).rowcount


def vacuum_warning(conn: psycopg.Connection[Any]) -> str | None:
    """Why the queue table will not be autovacuumed, or None if nothing stops it."""
    row = conn.execute(sql.QUEUE_VACUUM_STATE).fetchone()
    if row is None:
        return None
    server_off, table_off = row
    if server_off:
        return "autovacuum is off on this server"
    if table_off:
        return "autovacuum is disabled for pg_queue_message (autovacuum_enabled=false)"
    return None
