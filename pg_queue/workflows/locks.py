"""Resource locks: at most one holder per key, across workers, processes and machines.

A job takes its key with its claim (``@task(resource_key=...)``, ``.using(resource_key=...)``)
and gives it back with its finish; jobs whose key is held simply wait in the queue, without
losing an attempt, while other jobs go by. Code outside the worker takes a key with
``resource_lock``: the lock expires after ``ttl`` unless renewed, and it is renewed by a thread
while the block runs, so a long block is never taken over and a crashed holder blocks for at
most ``ttl``. ``force_release`` is the operator's escape hatch, logged with the holder it threw
out.

Each call opens its own short connection (``worker_connection``), so taking a lock never
touches the caller's transaction.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from pg_queue.core.exceptions import ResourceLocked
from pg_queue.db import sql_workflows

logger = logging.getLogger("pg_queue.locks")

#: Shortest lock a holder may take (seconds): renewal runs every ttl/3.
MIN_TTL = 1.0
#: First and longest sleep between two tries while waiting for a held key.
WAIT_POLL_MIN, WAIT_POLL_MAX = 0.05, 1.0
#: How long the end of a block waits for its renewal thread (one renewal's worth at most).
RENEW_JOIN = 10.0
#: Longest key a lock can name (the column's width).
KEY_MAX = 300


@dataclass(frozen=True, slots=True)
class LockInfo:
    """One row of ``pg_resource_lock``, as ``locks()`` and ``pg_queue_locks`` show it."""

    resource_key: str
    holder_kind: str
    holder_id: str
    task_id: uuid.UUID | None
    acquired_at: Any
    expires_at: Any
    age_seconds: float
    expired: bool


def _check(key: object, holder_kind: object, ttl: object, wait: object) -> None:
    if not isinstance(key, str) or not key or len(key) > KEY_MAX or "\x00" in key:
        raise ValueError(f"resource key must be a non-empty string of at most {KEY_MAX} chars")
    if not isinstance(holder_kind, str) or not holder_kind or holder_kind == "worker":
        raise ValueError(
            f"holder_kind must name who holds the lock (not 'worker'): {holder_kind!r}"
        )
    if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not ttl >= MIN_TTL:
        raise ValueError(f"ttl must be a number of seconds >= {MIN_TTL:g}, got {ttl!r}")
    if isinstance(wait, bool) or not isinstance(wait, int | float) or not wait >= 0:
        raise ValueError(f"wait must be a number of seconds >= 0 (0: try once), got {wait!r}")


@contextmanager
def resource_lock(
    key: str,
    *,
    holder_kind: str,
    ttl: float = 600.0,
    wait: float = 0.0,
    meta: dict[str, Any] | None = None,
    using: str = "default",
) -> Iterator[str]:
    """Hold ``key`` for the block; yields the holder id.

    Waits up to ``wait`` seconds for a held key (0: try once), then raises ``ResourceLocked``
    naming the holder. The lock is renewed every ``ttl``/3 while the block runs and released at
    its end, however it ends.
    """
    _check(key, holder_kind, ttl, wait)
    from pg_queue.db.connection import worker_connection

    holder_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    params = {
        "key": key,
        "holder_id": holder_id,
        "holder_kind": holder_kind,
        "ttl": float(ttl),
        "meta": json.dumps(meta or {}),
    }
    with worker_connection(using) as conn:
        _acquire(conn, params, wait)
    stop = threading.Event()
    renewer = threading.Thread(
        target=_renew_until,
        args=(stop, using, params),
        name=f"pg-queue-lock-{key[:40]}",
        daemon=True,
    )
    renewer.start()
    try:
        yield holder_id
    finally:
        stop.set()
        renewer.join(timeout=RENEW_JOIN)
        _release(using, params)


def _release(using: str, params: dict[str, Any]) -> None:
    """Give the lock back on a fresh connection (the block may have outlived a database
    restart). A release that fails is logged, never raised over the block's own outcome: the
    lock then expires by itself within its ttl."""
    from pg_queue.db.connection import worker_connection

    try:
        with worker_connection(using) as conn:
            conn.execute(sql_workflows.LOCK_RELEASE, params)
    except Exception as exc:
        logger.error(
            "resource lock not released (it expires within its ttl) key=%s holder_id=%s error=%s",
            params["key"],
            params["holder_id"],
            exc,
        )


def _acquire(conn: Any, params: dict[str, Any], wait: float) -> None:
    deadline = time.monotonic() + wait
    sleep = WAIT_POLL_MIN
    while True:
        if conn.execute(sql_workflows.LOCK_ACQUIRE, params).fetchone() is not None:
            logger.info(
                "resource locked key=%s holder_kind=%s holder_id=%s ttl=%gs",
                params["key"],
                params["holder_kind"],
                params["holder_id"],
                params["ttl"],
            )
            return
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            row = conn.execute(sql_workflows.LOCK_HOLDER, params).fetchone()
            if row is None:
                raise ResourceLocked(params["key"])
            raise ResourceLocked(params["key"], row[0], row[1], row[2])
        time.sleep(min(sleep, remaining))
        sleep = min(sleep * 2, WAIT_POLL_MAX)


def _renew_until(stop: threading.Event, using: str, params: dict[str, Any]) -> None:
    """Renew the lock every ttl/3 until ``stop``; a failed renewal is logged and retried."""
    from pg_queue.db.connection import worker_connection

    interval = params["ttl"] / 3
    while not stop.wait(interval):
        try:
            with worker_connection(using) as conn:
                if conn.execute(sql_workflows.LOCK_RENEW, params).fetchone() is None:
                    logger.error(
                        "resource lock lost (force-released or expired) key=%s holder_id=%s",
                        params["key"],
                        params["holder_id"],
                    )
                    return
        except Exception as exc:  # the block goes on; the next renewal may work
            logger.warning("resource lock renewal failed key=%s error=%s", params["key"], exc)


def force_release(key: str, *, actor: str = "", using: str = "default") -> LockInfo | None:
    """Delete the lock on ``key`` whoever holds it; returns who held it (None: nobody).

    Logged at WARNING with the holder thrown out. A job whose lock this was keeps running; the
    next job of that key may start alongside it: use this for a holder that is really gone.
    """
    from pg_queue.db.connection import worker_connection

    with worker_connection(using) as conn:
        row = conn.execute(sql_workflows.LOCK_FORCE_RELEASE, {"key": key}).fetchone()
    if row is None:
        return None
    kind, holder_id, acquired_at, task_id = row
    logger.warning(
        "resource lock force-released key=%s by=%s previous_holder_kind=%s "
        "previous_holder_id=%s task_id=%s held_since=%s",
        key,
        actor or "-",
        kind,
        holder_id,
        task_id,
        acquired_at,
    )
    return LockInfo(key, kind, holder_id, task_id, acquired_at, None, 0.0, False)


def locks(using: str = "default") -> list[LockInfo]:
    """Every lock, oldest first."""
    from pg_queue.db.connection import worker_connection

    with worker_connection(using) as conn:
        rows = conn.execute(sql_workflows.LOCK_LIST).fetchall()
    return [LockInfo(r[0], r[1], r[2], r[3], r[4], r[5], float(r[6]), bool(r[7])) for r in rows]
