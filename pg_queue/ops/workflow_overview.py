"""Held resource locks and running groups/chains, bounded: the workflow half of
``pg_queue_status``.

One statement per section, whatever the number of rows: the oldest ``limit`` rows and, on each
row, how many there are in all (so the command can say "and N more"). Read on Django's
connection, like the queues overview.
"""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass
from typing import Any

from django.db import connections

from pg_queue.db import sql_ops
from pg_queue.ops.overview import format_age

#: Rows shown per section: enough to see what is going on, few enough for a terminal.
SHOWN = 20


def format_expiry(seconds_left: float | None) -> str:
    """``with its job`` (a job's lock: no expiry), ``in 4m 05s``, or ``expired 12s ago``."""
    if seconds_left is None:
        return "with its job"
    if seconds_left <= 0:
        return f"expired {format_age(-seconds_left)} ago"
    return f"in {format_age(seconds_left)}"


@dataclass(frozen=True, kw_only=True, slots=True)
class HeldLock:
    """One row of ``pg_resource_lock`` as the status shows it."""

    resource_key: str
    holder_kind: str  # "worker" for a job's lock; cli, web, admin... for resource_lock()
    holder_id: str
    task_id: uuid.UUID | None  # the job holding it, if any
    age_seconds: float
    expires_in_seconds: float | None  # None: a job's lock, held as long as the job runs

    @property
    def expired(self) -> bool:
        """Past its ttl: anyone may take it over; the next maintenance sweep deletes it."""
        return self.expires_in_seconds is not None and self.expires_in_seconds <= 0

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(task_id=None if self.task_id is None else str(self.task_id))
        data.update(expired=self.expired)
        return data


@dataclass(frozen=True, kw_only=True, slots=True)
class RunningGroup:
    """One running group or chain as the status shows it."""

    group_id: uuid.UUID
    kind: str  # group | chain
    finished: int
    total: int
    failed: int
    age_seconds: float

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "group_id": str(self.group_id)}


@dataclass(frozen=True, kw_only=True, slots=True)
class WorkflowOverview:
    """The oldest held locks and running groups, and how many of each there are in all."""

    locks: list[HeldLock]
    locks_total: int
    groups: list[RunningGroup]
    groups_total: int

    @property
    def locks_more(self) -> int:
        return self.locks_total - len(self.locks)

    @property
    def groups_more(self) -> int:
        return self.groups_total - len(self.groups)

    def to_json(self) -> dict[str, Any]:
        return {
            "locks": {"total": self.locks_total, "shown": [x.to_json() for x in self.locks]},
            "running_groups": {
                "total": self.groups_total,
                "shown": [g.to_json() for g in self.groups],
            },
        }


def workflow_overview(*, limit: int = SHOWN, using: str = "default") -> WorkflowOverview:
    """The oldest ``limit`` held locks and running groups/chains: two statements."""
    with connections[using].cursor() as cursor:
        cursor.execute(sql_ops.LOCK_OVERVIEW, {"limit": limit})
        lock_rows = cursor.fetchall()
        cursor.execute(sql_ops.GROUP_RUNNING_OVERVIEW, {"limit": limit})
        group_rows = cursor.fetchall()
    locks = [
        HeldLock(
            resource_key=r[0],
            holder_kind=r[1],
            holder_id=r[2],
            task_id=r[3],
            age_seconds=r[4],
            expires_in_seconds=r[5],
        )
        for r in lock_rows
    ]
    groups = [
        RunningGroup(
            group_id=r[0], kind=r[1], finished=r[2], total=r[3], failed=r[4], age_seconds=r[5]
        )
        for r in group_rows
    ]
    return WorkflowOverview(
        locks=locks,
        locks_total=lock_rows[0][6] if lock_rows else 0,
        groups=groups,
        groups_total=group_rows[0][6] if group_rows else 0,
    )
