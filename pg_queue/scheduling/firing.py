"""One pass of the leader over due schedules; each tick is decided and fired in one transaction.

For every enabled schedule whose ``next_run_at`` has passed, in one transaction:
``SCHEDULE_ADVANCE`` moves it to the first tick after the database's ``now()`` (so after an
outage it fires once, not once per missed tick) and, when it fires, the job is inserted. The
advance is conditional on the tick read and on the leader lease, so a crash never fires a tick
twice nor skips it (before the commit nothing happened; after it, both did), and a second
firer racing on the same tick matches nothing.

A tick fires only when the ``pg_queue_enabled`` flag gives the task to Postgres; otherwise it
is passed over (Celery beat, with ``pg_queue.scheduling.beat.PgQueueBeatScheduler``, fires
it). A schedule without a baseline (new, or its cron changed) gets its first tick computed
and does not fire at once; a tick that Celery beat fired less than 0.9 period ago is passed
over too (the hand-over fence: no tick on both sides when the flag turns).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pg_queue.core.conf import NOTIFY_CHANNEL, queue_settings
from pg_queue.db import queries, sql, sql_schedule
from pg_queue.jobspec import new_task_id
from pg_queue.producer import bulk_params, job
from pg_queue.scheduling.cron import CronError, next_after, period

if TYPE_CHECKING:
    import psycopg

logger = logging.getLogger("pg_queue.scheduling")

#: Due schedules one pass reads.
DUE_BATCH = 100
#: The hand-over fence as a share of the schedule's period: a tick is not fired on one side
#: when the other side fired the schedule less than this many periods ago.
FENCE_SHARE = 0.9

#: (task name, queue) -> does the flag give it to Postgres?
Decide = Callable[[str, str], bool]


def flag_decide(task_name: str, queue: str) -> bool:
    """The routing flag, as ``RoutingDispatcher`` evaluates it (no tenant: a schedule has none)."""
    from pg_queue.routing.flags import use_postgres

    return use_postgres(task_name=task_name, queue=queue).use_postgres


@dataclass(slots=True)
class FirePass:
    """What one pass did, by schedule name."""

    fired: dict[str, Any] = field(default_factory=dict)  # name -> task id
    passed_to_celery: list[str] = field(default_factory=list)
    fenced: list[str] = field(default_factory=list)
    baselined: list[str] = field(default_factory=list)
    not_ours: list[str] = field(default_factory=list)  # another firer won, or lease lost


def schedule_fire_due(
    conn: psycopg.Connection[Any],
    *,
    holder: str,
    role: str,
    decide: Decide = flag_decide,
    limit: int = DUE_BATCH,
) -> FirePass:
    """Fire (or pass over) every due schedule once; see the module docstring."""
    result = FirePass()
    rows = conn.execute(sql_schedule.SCHEDULE_DUE, {"limit": limit}).fetchall()
    default_queue = queue_settings().default_queue
    for name, task_name, queue_name, args, kwargs, cron, timezone, due, now in rows:
        try:
            following = next_after(cron, timezone, now)
            fence = FENCE_SHARE * period(cron, timezone, now)
        except CronError as exc:
            logger.error("schedule skipped name=%s cron=%r error=%s", name, cron, exc)
            continue
        fire = due is not None and decide(task_name, queue_name or default_queue)
        spec = None
        params: dict[str, Any] = {}
        if fire:
            spec = job(
                task_name,
                args,
                kwargs,
                queue=queue_name or None,
                headers={"pg_queue_schedule": name},
                task_id=new_task_id(),
            )
            try:
                params = bulk_params([spec])
            except ValueError as exc:
                logger.error("schedule cannot enqueue name=%s error=%s", name, exc)
                fire = False
        task_id = spec.task_id if spec is not None and fire else new_task_id()
        with conn.transaction():
            row = conn.execute(
                sql_schedule.SCHEDULE_ADVANCE,
                {
                    "name": name,
                    "due": due,
                    "next_run_at": following,
                    "fire": fire,
                    "fence": fence,
                    "task_id": task_id,
                    "role": role,
                    "holder": holder,
                },
            ).fetchone()
            if row is None:
                result.not_ours.append(name)
                continue
            if row[0]:
                queries.job_insert_many(conn, params)
                if queue_settings().notify:
                    queue = str(params["queues"][0])
                    conn.execute(sql.NOTIFY, {"channel": NOTIFY_CHANNEL, "queue": queue})
        _record(result, name, due, fired=bool(row[0]), fire=fire, task_id=task_id)
        if row[0]:
            logger.info(
                "schedule fired name=%s task_name=%s task_id=%s tick=%s next_run_at=%s",
                name,
                task_name,
                task_id,
                _iso(due),
                _iso(following),
            )
    return result


def _record(
    result: FirePass, name: str, due: dt.datetime | None, *, fired: bool, fire: bool, task_id: Any
) -> None:
    if fired:
        result.fired[name] = task_id
    elif due is None:
        result.baselined.append(name)
    elif fire:
        result.fenced.append(name)
    else:
        result.passed_to_celery.append(name)


def _iso(value: dt.datetime | None) -> str:
    return "-" if value is None else value.isoformat()


def schedule_next_wait(conn: psycopg.Connection[Any]) -> float | None:
    """Seconds until the next enabled tick (may be negative); None when none is scheduled."""
    row = conn.execute(sql_schedule.SCHEDULE_NEXT_WAIT).fetchone()
    return None if row is None or row[0] is None else float(row[0])
