"""``PgQueueBeatScheduler``: Celery beat hands schedules over to pg_queue one by one.

Run beat with it (``celery -A proj beat -S pg_queue.scheduling.beat:PgQueueBeatScheduler``,
or ``beat_scheduler`` in the Celery config) and declare the same schedules, under the same
names, in ``PG_QUEUE["SCHEDULE"]``. Then at every tick of a beat entry:

- the ``pg_queue_enabled`` flag is evaluated for the entry's task, as ``RoutingDispatcher``
  does; if it gives the task to Postgres and pg_queue has a schedule of that name, beat skips
  the tick (pg_queue's leader fires it). With no such schedule beat fires it anyway, and logs a
  warning, so that a flag turned on before the schedule was declared loses no tick;
- if the flag gives the task to Celery, beat claims the tick in ``pg_periodic_task`` with one
  conditional UPDATE (``SCHEDULE_CLAIM_FOR_CELERY``) and fires only if pg_queue did not fire
  that schedule less than 0.9 period ago. pg_queue's firing statement checks the same fence
  the other way, under the same row lock, so a tick is never fired on both sides when the flag
  turns between the two sides' looks at it. (At a turn, the first tick of the new side may be
  passed over by that fence: at most one tick is lost, none is doubled.)

Entries with no pg_queue schedule of their name and a Celery flag answer run as in plain beat.
Celery is the optional ``pg-queue[celery]`` extra and croniter the ``schedule`` extra; this
is the only module of pg_queue that imports ``celery.beat``.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from celery.beat import PersistentScheduler, ScheduleEntry
from django.db import DatabaseError, close_old_connections, connection

from pg_queue.core.conf import queue_settings
from pg_queue.db import sql_schedule
from pg_queue.scheduling.cron import CronError, period, require_croniter
from pg_queue.scheduling.firing import FENCE_SHARE

logger = logging.getLogger("pg_queue.scheduling")


class PgQueueBeatScheduler(PersistentScheduler):
    """Celery's default (shelve-backed) beat scheduler, minus the ticks pg_queue fires."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        require_croniter()
        _django_setup()
        self._warned: set[str] = set()
        super().__init__(*args, **kwargs)

    def apply_entry(self, entry: ScheduleEntry, producer: Any = None) -> None:
        if self.celery_fires(entry):
            super().apply_entry(entry, producer=producer)

    def celery_fires(self, entry: ScheduleEntry) -> bool:
        """Should this tick of ``entry`` be sent by beat? Never raises (see module docstring)."""
        from pg_queue.routing.flags import use_postgres

        name, task = entry.name or "", entry.task or ""
        queue = str((entry.options or {}).get("queue") or queue_settings().default_queue)
        to_postgres = use_postgres(task_name=task, queue=queue).use_postgres
        try:
            row = self._schedule_row(name)
            if to_postgres:
                if row is not None:
                    logger.info(
                        "beat skipped name=%s task_name=%s: pg_queue fires it",
                        name,
                        task,
                    )
                    return False
                if name not in self._warned:
                    self._warned.add(name)
                    logger.warning(
                        "beat entry %s: the flag gives %s to Postgres but PG_QUEUE['SCHEDULE'] "
                        "has no schedule of that name; beat keeps firing it",
                        name,
                        task,
                    )
                return True
            if row is None:
                return True
            claimed = self._claim(name, row[0], row[1])
        except (DatabaseError, CronError) as exc:
            close_old_connections()
            logger.warning(
                "beat entry %s: could not check pg_queue (%s); %s",
                name,
                exc,
                "skipped" if to_postgres else "fired on Celery",
            )
            return not to_postgres
        if not claimed:
            logger.info("beat skipped name=%s: pg_queue fired this tick", name)
        return claimed

    @staticmethod
    def _schedule_row(name: str) -> tuple[str, str, bool] | None:
        with connection.cursor() as cursor:
            cursor.execute(sql_schedule.SCHEDULE_GET, {"name": name})
            row = cursor.fetchone()
        return None if row is None else (row[0], row[1], row[2])

    @staticmethod
    def _claim(name: str, cron: str, timezone: str) -> bool:
        fence = FENCE_SHARE * period(cron, timezone, dt.datetime.now(dt.UTC))
        with connection.cursor() as cursor:
            cursor.execute(sql_schedule.SCHEDULE_CLAIM_FOR_CELERY, {"name": name, "fence": fence})
            return cursor.fetchone() is not None

    @property
    def info(self) -> str:
        return f"{super().info}\n    . pg_queue hand-over: ticks the flag gives to Postgres skipped"


def _django_setup() -> None:
    from django.apps import apps

    if not apps.ready:
        import django

        django.setup()
