"""Connections for the worker and the other long-lived users of the queue (listeners, metrics).

Not Django's connection: autocommit psycopg connections of their own, so that a statement
commits as soon as it returns and no transaction is held while a task runs. They bound every
wait (network keepalives and ``tcp_user_timeout``, ``lock_timeout``, ``statement_timeout``) and
hold no session state at all behind a transaction pooler.
"""

from __future__ import annotations

import uuid
from typing import Any

import orjson
import psycopg
from django.db import connections
from psycopg.types.json import set_json_loads

from pg_queue.core.conf import queue_settings

#: Seconds the pooling self-probe waits for its own NOTIFY.
PROBE_TIMEOUT = 1.0


def worker_connection(
    alias: str = "default", *, pooled: bool = False, claims: bool = False
) -> psycopg.Connection[Any]:
    """A fresh autocommit psycopg connection to the database Django's ``alias`` points at.

    Session settings bound every wait: ``lock_timeout`` and ``statement_timeout`` (settings of
    the same names), and per-execution planning for prepared statements. ``pooled`` (the worker
    found a transaction-pooling PgBouncer in front of the database) turns all session state
    off: no prepared statements and no ``SET``, which such a pooler would leak onto other
    clients' server connections or lose between statements.

    ``claims``: the connection that claims jobs commits without waiting for its WAL flush
    (``synchronous_commit = off``). A claim lost to a server crash leaves its job ready, to be
    claimed again, which at-least-once delivery allows anyway; the ack that follows is written
    with a normal commit, which flushes the claim's WAL with it.
    """
    conf = queue_settings()
    params = dict(connections[alias].get_connection_params())
    for django_only in ("context", "cursor_factory", "server_side_binding"):
        params.pop(django_only, None)
    params.pop("prepare_threshold", None)
    # Bound every network wait: a partition must not block a service thread for the kernel's
    # default of many minutes.
    lease_ms = int(conf.lease_seconds * 1000)
    params.setdefault("connect_timeout", 10)
    params.setdefault("keepalives", 1)
    params.setdefault("keepalives_idle", 10)
    params.setdefault("keepalives_interval", 5)
    params.setdefault("keepalives_count", 3)
    params.setdefault("tcp_user_timeout", lease_ms)
    conn = psycopg.connect(**params, autocommit=True)
    if pooled:
        conn.prepare_threshold = None
        return conn
    conn.prepare_threshold = None  # the session SETs below are never prepared
    # A lock wait must never outlast a lease: capped at a quarter of it (0 = no limit).
    lock_timeout = min(conf.lock_timeout, conf.lease_seconds / 4) if conf.lock_timeout else 0
    # No JIT: the queue's statements are short, and a misestimated plan would otherwise pay
    # hundreds of milliseconds of compilation per execution (seen once: 430 ms per claim).
    conn.execute(
        f"SET lock_timeout = {_millis(lock_timeout)}; "
        f"SET statement_timeout = {_millis(conf.statement_timeout)}; SET jit = off"
        + ("; SET synchronous_commit = off" if claims else "")
    )
    if conf.prepared_statements:
        # PostgreSQL switches a prepared statement to a generic plan after five executions,
        # costed from the table's size at that moment and then kept. Made while the queue was
        # empty (a fresh start, a drained queue after VACUUM), it seq-scans once the queue is
        # deep: measured, claims took 1.3 s each and a 6,000 jobs/s stream backed up. Custom
        # plans are made per execution from the current size; preparing still saves the parse.
        conn.execute("SET plan_cache_mode = force_custom_plan")
        conn.prepare_threshold = 0
    # jsonb columns other than payloads (which the claim loop decodes itself) parse with orjson.
    set_json_loads(orjson.loads, conn)
    return conn


def _millis(seconds: float) -> int:
    """A timeout setting in whole milliseconds (0 = none), for a SET that takes no parameters."""
    return max(0, round(float(seconds) * 1000))


def transaction_pooling(alias: str = "default") -> bool:
    """Is a transaction-pooling proxy (PgBouncer) between us and the server?

    LISTEN on one connection, NOTIFY from another: a session-level LISTEN behind transaction
    pooling is left on a server connection that goes back to the pool, so the notification
    never comes back. Costs two short connections and, behind such a pooler, one probe timeout.
    """
    channel = f"pg_queue_probe_{uuid.uuid4().hex}"
    with worker_connection(alias, pooled=True) as listening:
        listening.execute(f"LISTEN {channel}")
        with worker_connection(alias, pooled=True) as other:
            other.execute("SELECT pg_notify(%s, 'probe')", [channel])
        return not any(True for _ in listening.notifies(timeout=PROBE_TIMEOUT, stop_after=1))
