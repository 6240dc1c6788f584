"""``PG_QUEUE["SCHEDULE"]`` -> ``pg_periodic_task``, run at the start of every worker that runs
the scheduler (and by tests). Idempotent: workers starting together converge on one state.

- a new name is inserted, enabled as declared, with no baseline: the leader computes its first
  tick from the database clock and does not fire it at once;
- a declared name whose definition changed is updated (a new cron or time zone drops the
  baseline); its ``enabled`` is the operator's (the admin) and is kept;
- a name no longer declared is disabled and kept (history, last run), never deleted; declaring
  it again enables it as declared. Schedules created in the admin are never touched.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pg_queue.db import sql_schedule
from pg_queue.scheduling.cron import validate

if TYPE_CHECKING:
    import psycopg

logger = logging.getLogger("pg_queue.scheduling")

_KEYS = {"task", "cron", "args", "kwargs", "queue", "timezone", "enabled"}


@dataclass(frozen=True, kw_only=True, slots=True)
class ScheduleSpec:
    """One declared schedule, validated."""

    name: str
    task: str
    cron: str
    args: list[Any]
    kwargs: dict[str, Any]
    queue: str = ""
    timezone: str = "UTC"
    enabled: bool = True


@dataclass(frozen=True, slots=True)
class SyncReport:
    inserted: list[str]
    updated: list[str]
    retired: list[str]


def parse_schedule(raw: dict[str, Any]) -> list[ScheduleSpec]:
    """Validate ``PG_QUEUE["SCHEDULE"]``; ``ValueError`` names the schedule and the problem."""
    if not isinstance(raw, dict):
        raise ValueError(f"PG_QUEUE['SCHEDULE'] must be a dict of name -> schedule, got {raw!r}")
    specs = []
    for name, entry in raw.items():
        where = f"PG_QUEUE['SCHEDULE'][{name!r}]"
        if not isinstance(name, str) or not name or len(name) > 200:
            raise ValueError(f"{where}: a name must be a non-empty string of <= 200 characters")
        if not isinstance(entry, dict):
            raise ValueError(f"{where} must be a dict, got {type(entry).__name__}")
        unknown = sorted(set(entry) - _KEYS)
        if unknown:
            raise ValueError(f"{where}: unknown keys {unknown}; known: {sorted(_KEYS)}")
        for key in ("task", "cron"):
            if not isinstance(entry.get(key), str) or not entry[key].strip():
                raise ValueError(f"{where}: {key!r} is required (a string)")
        args, kwargs = entry.get("args", []), entry.get("kwargs", {})
        if not isinstance(args, list | tuple) or not isinstance(kwargs, dict):
            raise ValueError(f"{where}: 'args' must be a list and 'kwargs' a dict")
        try:
            json.dumps([args, kwargs], allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{where}: args and kwargs must be JSON: {exc}") from None
        spec = ScheduleSpec(
            name=name,
            task=entry["task"],
            cron=" ".join(entry["cron"].split()),
            args=list(args),
            kwargs=dict(kwargs),
            queue=str(entry.get("queue") or ""),
            timezone=str(entry.get("timezone") or "UTC"),
            enabled=bool(entry.get("enabled", True)),
        )
        try:
            validate(spec.cron, spec.timezone)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
        specs.append(spec)
    return specs


def schedule_sync(conn: psycopg.Connection[Any], specs: list[ScheduleSpec]) -> SyncReport:
    """Write the declared schedules in one transaction (see the module docstring)."""
    inserted: list[str] = []
    updated: list[str] = []
    with conn.transaction():
        for spec in specs:
            row = conn.execute(
                sql_schedule.SCHEDULE_UPSERT,
                {
                    "name": spec.name,
                    "task_name": spec.task,
                    "queue_name": spec.queue,
                    "args": json.dumps(spec.args),
                    "kwargs": json.dumps(spec.kwargs),
                    "cron": spec.cron,
                    "timezone": spec.timezone,
                    "enabled": spec.enabled,
                },
            ).fetchone()
            if row is not None:
                (inserted if row[1] else updated).append(spec.name)
        retired = [
            r[0]
            for r in conn.execute(
                sql_schedule.SCHEDULE_RETIRE, {"names": [s.name for s in specs]}
            ).fetchall()
        ]
    if inserted or updated or retired:
        logger.info(
            "schedules synced from settings inserted=%s updated=%s disabled_removed=%s",
            ",".join(inserted) or "-",
            ",".join(updated) or "-",
            ",".join(retired) or "-",
        )
    return SyncReport(inserted, updated, retired)
