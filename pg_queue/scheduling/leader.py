"""The leader lease: one row per role, on the database clock (``sql_schedule.LEADER_*``)."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

from pg_queue.db import sql_schedule

if TYPE_CHECKING:
    import psycopg

#: The scheduler's role name in ``pg_leader_lease``.
SCHEDULER_ROLE = "scheduler"


def leader_acquire(
    conn: psycopg.Connection[Any], *, role: str, holder: str, ttl: float
) -> dt.datetime | None:
    """Take (or keep) the lease; its expiry if ours, None if another holder's is still valid."""
    row = conn.execute(
        sql_schedule.LEADER_ACQUIRE, {"role": role, "holder": holder, "ttl": ttl}
    ).fetchone()
    return None if row is None else row[0]


def leader_renew(
    conn: psycopg.Connection[Any], *, role: str, holder: str, ttl: float
) -> dt.datetime | None:
    """Extend a lease still ours and unexpired; None means it is lost: stop acting."""
    row = conn.execute(
        sql_schedule.LEADER_RENEW, {"role": role, "holder": holder, "ttl": ttl}
    ).fetchone()
    return None if row is None else row[0]


def leader_release(conn: psycopg.Connection[Any], *, role: str, holder: str) -> bool:
    """Give the lease up (at shutdown); true if it was ours."""
    return conn.execute(sql_schedule.LEADER_RELEASE, {"role": role, "holder": holder}).rowcount == 1
