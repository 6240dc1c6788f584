"""Periodic tasks in the admin: a read-only list with the next and last runs, and three logged
actions: enable, disable, run now.

Rows are not edited in a form: what a schedule is comes from ``PG_QUEUE["SCHEDULE"]`` (synced
at worker start), and the columns the scheduler owns (``next_run_at``, ``last_run_at``) must not
be written back stale. Each action is checked against the model's ``change`` permission and
recorded as one ``LogEntry`` per schedule, like the other operator actions.

- **Enable** drops the schedule's baseline: the leader computes the next tick from now and does
  not fire at once (a schedule disabled for a week does not fire for the missed week).
- **Disable** stops it at the next pass of the leader (a tick firing at that very moment
  commits first). A disabled schedule keeps its row and history.
- **Run now** enqueues one job on PostgreSQL at once, whatever the routing flag says, and
  records only the job's id: the ticks, ``last_run_at`` and ``last_fired_by`` (which the
  Celery hand-over fence reads) stay as they were.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.models import CHANGE
from django.db import connection, transaction
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse

from pg_queue.admin.base import BOTH, OperatorAdmin, action
from pg_queue.db import sql_schedule
from pg_queue.models import PeriodicTask
from pg_queue.producer import enqueue

#: Most schedules one "run now" enqueues (each is one job).
MAX_RUN_NOW = 100


@admin.register(PeriodicTask)
class PeriodicTaskAdmin(OperatorAdmin):
    list_display = (
        "name",
        "task_name",
        "cron",
        "timezone",
        "enabled",
        "next_run_at",
        "last_run_at",
        "last_fired_by",
        "in_settings",
    )
    list_filter = ("enabled", "in_settings", "last_fired_by")
    search_fields = ("name", "task_name")
    search_help_text = "Part of a schedule's name or of its task name."
    ordering = ("name",)
    actions = ("enable_schedules", "disable_schedules", "run_now")
    fieldsets = (
        (
            None,
            {
                "fields": (
                    "name",
                    "task_name",
                    "queue_name",
                    "args",
                    "kwargs",
                    "cron",
                    "timezone",
                    "enabled",
                    "in_settings",
                )
            },
        ),
        (
            "Runs",
            {"fields": ("next_run_at", "last_run_at", "last_fired_by", "last_task_id")},
        ),
    )

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # a schedule is disabled, never deleted: its history stays

    @action(
        permissions=["change"],
        description="Enable",
        description_plural="Enable selected schedules",
        location=BOTH,
    )
    def enable_schedules(
        self, request: HttpRequest, queryset: QuerySet[PeriodicTask]
    ) -> HttpResponse | None:
        rows = list(queryset.filter(enabled=False))
        # No baseline: the leader computes the next tick from now, without firing at once.
        PeriodicTask.objects.filter(pk__in=[r.pk for r in rows]).update(
            enabled=True, next_run_at=None
        )
        self._log(request, rows, CHANGE, f"Enabled by {self._actor(request)}")
        self.message_user(request, f"{len(rows)} schedule(s) enabled", messages.SUCCESS)
        return None

    @action(
        permissions=["change"],
        description="Disable",
        description_plural="Disable selected schedules",
        location=BOTH,
    )
    def disable_schedules(
        self, request: HttpRequest, queryset: QuerySet[PeriodicTask]
    ) -> HttpResponse | None:
        rows = list(queryset.filter(enabled=True))
        PeriodicTask.objects.filter(pk__in=[r.pk for r in rows]).update(enabled=False)
        self._log(request, rows, CHANGE, f"Disabled by {self._actor(request)}")
        self.message_user(request, f"{len(rows)} schedule(s) disabled", messages.SUCCESS)
        return None

    @action(
        permissions=["change"],
        description="Run now",
        description_plural="Run selected schedules now",
        location=BOTH,
    )
    def run_now(
        self, request: HttpRequest, queryset: QuerySet[PeriodicTask]
    ) -> HttpResponse | None:
        rows = list(queryset.order_by("name")[: MAX_RUN_NOW + 1])
        if len(rows) > MAX_RUN_NOW:
            self.message_user(
                request,
                f"more than {MAX_RUN_NOW} schedules selected; narrow the selection",
                messages.ERROR,
            )
            return None
        started: list[str] = []
        try:
            with transaction.atomic():
                for row in rows:
                    handle = enqueue(
                        row.task_name,
                        row.args,
                        row.kwargs,
                        queue=row.queue_name or None,
                        headers={"pg_queue_schedule": row.name, "run_now": True},
                    )
                    with connection.cursor() as cursor:
                        cursor.execute(
                            sql_schedule.SCHEDULE_RAN_NOW,
                            {"name": row.name, "task_id": handle.task_id},
                        )
                    started.append(f"{row.name}: {handle.task_id}")
        except ValueError as exc:  # arguments enqueue refuses: nothing was enqueued
            self.message_user(request, f"nothing enqueued: {exc}", messages.ERROR)
            return None
        self._log(request, rows, CHANGE, f"Run now by {self._actor(request)}")
        self.message_user(
            request, f"{len(started)} job(s) enqueued: " + "; ".join(started), messages.SUCCESS
        )
        return None
