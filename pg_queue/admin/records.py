"""Dead letters (requeue, discard), results (read-only) and workers in the admin."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.models import DELETION
from django.db.models import Count, OuterRef, QuerySet, Subquery, Value
from django.db.models.functions import Coalesce, Now
from django.http import HttpRequest, HttpResponse
from django.utils.html import format_html
from django.utils.safestring import SafeString

from pg_queue.admin.base import (
    BOTH,
    CONFIRM_SAMPLE,
    OperatorAdmin,
    QueueInputFilter,
    TaskInputFilter,
    _age,
    _badge,
    _pre,
    _search_by_id,
    _short,
    action,
)
from pg_queue.models import DeadLetter, Job, JobState, TaskResult, Worker
from pg_queue.ops import masking, operations, overview
from pg_queue.ops.overview import format_age

# --- dead letters ------------------------------------------------------------------------------


def _ref_letters(refs: Iterable[operations.DeadLetterRef]) -> list[DeadLetter]:
    return [
        DeadLetter(
            id=r.id,
            task_id=r.task_id,
            task_name=r.task_name,
            queue_name=r.queue_name,
            reason=r.reason,
        )
        for r in refs
    ]


@admin.register(DeadLetter)
class DeadLetterAdmin(OperatorAdmin):
    list_display = (
        "id",
        "task_id",
        "task_name",
        "queue_name",
        "reason",
        "attempts",
        "failed_at",
        "error_display",
    )
    list_display_links = ("id", "task_id")
    list_filter = ("queue_name", "reason", "task_name")
    search_fields = ("task_id",)
    search_help_text = "A full task id (UUID) or a dead letter id."
    ordering = ("-failed_at", "-id")
    list_defer = ("payload", "traceback")
    actions = ("requeue", "discard")
    fieldsets = (
        (
            None,
            {
                "fields": (
                    "task_id",
                    "id",
                    "task_name",
                    "queue_name",
                    "reason",
                    "attempts",
                    "max_attempts",
                    "priority",
                    "tenant_key",
                    "enqueued_at",
                    "failed_at",
                )
            },
        ),
        ("Error", {"fields": ("last_error_display", "traceback_display")}),
        ("Payload (secret values masked)", {"fields": ("payload_display",)}),
    )

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[DeadLetter], search_term: str
    ) -> tuple[QuerySet[DeadLetter], bool]:
        if not search_term.strip():
            return queryset, False
        found = _search_by_id(queryset, search_term, "id")
        return (queryset.none() if found is None else found), False

    def get_actions(self, request: HttpRequest, action_location: Any = None) -> dict[str, Any]:
        kwargs = {} if action_location is None else {"action_location": action_location}
        actions = super().get_actions(request, **kwargs)
        actions.pop("delete_selected", None)  # "discard" does it set-based, with a count
        return actions

    @admin.display(description="last error")
    def error_display(self, obj: DeadLetter) -> str:
        return _short(obj.last_error)

    @admin.display(description="last error")
    def last_error_display(self, obj: DeadLetter) -> SafeString:
        return _pre(obj.last_error)

    @admin.display(description="traceback")
    def traceback_display(self, obj: DeadLetter) -> SafeString:
        return _pre(obj.traceback)

    @admin.display(description="payload")
    def payload_display(self, obj: DeadLetter) -> SafeString:
        return _pre(masking.pretty_json(obj.payload))

    @action(
        permissions=["change"],
        description="Requeue with fresh attempts",
        description_plural="Requeue selected dead letters with fresh attempts",
        location=BOTH,
    )
    def requeue(self, request: HttpRequest, queryset: QuerySet[DeadLetter]) -> HttpResponse | None:
        ids = self._selected_ids(request, queryset)
        requeued, skipped = operations.dead_letters_requeue(ids)
        self._log(
            request,
            _ref_letters(requeued),
            DELETION,
            "Requeued as a fresh job (same task id, attempts 0)",
        )
        self.message_user(
            request,
            f"{len(requeued)} dead letter(s) requeued with fresh attempts"
            + (f"; {len(skipped)} skipped (task id already live in the queue)" if skipped else ""),
            messages.SUCCESS,
        )
        return self._back(request, gone=bool(requeued))

    @action(
        permissions=["delete"],
        description="Discard (delete for good)",
        description_plural="Discard selected dead letters (delete for good)",
        location=BOTH,
    )
    def discard(self, request: HttpRequest, queryset: QuerySet[DeadLetter]) -> HttpResponse | None:
        ids = self._selected_ids(request, queryset)
        if self._too_many(request, ids):
            return None
        if request.POST.get("pgq_confirm") != "yes":
            return self._confirm(
                request,
                ids,
                action="discard",
                title="Discard dead letters",
                question=f"Delete {len(ids)} dead letter(s) for good?",
                details=["Their jobs will not run again. Their failed outcomes are kept."],
                sample=queryset.defer("payload", "traceback")[:CONFIRM_SAMPLE],
                submit="Yes, discard them",
            )
        gone = operations.dead_letters_discard(ids)
        self._log(request, _ref_letters(gone), DELETION, "Discarded")
        self.message_user(request, f"{len(gone)} dead letter(s) discarded", messages.SUCCESS)
        return self._back(request, gone=bool(gone))


# --- results -----------------------------------------------------------------------------------


@admin.register(TaskResult)
class TaskResultAdmin(OperatorAdmin):
    list_display = (
        "task_id",
        "status_display",
        "task_name",
        "queue_name",
        "attempts",
        "finished_at",
        "duration_display",
        "error_display",
    )
    list_filter = ("status", QueueInputFilter, TaskInputFilter)
    search_fields = ("task_id",)
    search_help_text = "A full task id (UUID)."
    ordering = ("-finished_at",)
    list_defer = ("result", "traceback")
    actions = None
    fieldsets = (
        (
            None,
            {
                "fields": (
                    "task_id",
                    "status_display",
                    "task_name",
                    "queue_name",
                    "attempts",
                    "enqueued_at",
                    "started_at",
                    "finished_at",
                    "duration_display",
                    "expires_at",
                )
            },
        ),
        ("Error", {"fields": ("error_display_full", "traceback_display")}),
        ("Result (secret values masked)", {"fields": ("result_display",)}),
    )

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # outcomes expire by themselves (RESULT_TTL_SECONDS)

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[TaskResult], search_term: str
    ) -> tuple[QuerySet[TaskResult], bool]:
        if not search_term.strip():
            return queryset, False
        try:
            return queryset.filter(task_id=uuid.UUID(search_term.strip())), False
        except ValueError:
            return queryset.none(), False

    @admin.display(description="status", ordering="status")
    def status_display(self, obj: TaskResult) -> SafeString:
        kind = {"succeeded": "ok", "failed": "stuck"}.get(obj.status, "delayed")
        return _badge(obj.status, kind)

    @admin.display(description="run time")
    def duration_display(self, obj: TaskResult) -> str:
        return format_age(_age(obj.finished_at, obj.started_at))

    @admin.display(description="error")
    def error_display(self, obj: TaskResult) -> str:
        return _short(obj.error)

    @admin.display(description="error")
    def error_display_full(self, obj: TaskResult) -> SafeString:
        return _pre(obj.error)

    @admin.display(description="traceback")
    def traceback_display(self, obj: TaskResult) -> SafeString:
        return _pre(obj.traceback)

    @admin.display(description="result")
    def result_display(self, obj: TaskResult) -> SafeString:
        return _pre(masking.pretty_json(obj.result))


# --- workers -----------------------------------------------------------------------------------


@admin.register(Worker)
class WorkerAdmin(OperatorAdmin):
    list_display = (
        "worker_id",
        "hostname",
        "pid",
        "queues_display",
        "concurrency",
        "state",
        "heartbeat_display",
        "in_flight_display",
        "started_at",
    )
    list_filter = ("state", "hostname")
    search_fields = ("worker_id", "hostname")
    ordering = ("hostname", "worker_id")
    actions = None
    fieldsets = (
        (
            None,
            {
                "fields": (
                    "worker_id",
                    "hostname",
                    "pid",
                    "queues_display",
                    "concurrency",
                    "state",
                    "started_at",
                    "heartbeat_at",
                    "heartbeat_display",
                    "in_flight_display",
                )
            },
        ),
    )

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # workers prune rows of dead processes themselves

    def get_queryset(self, request: HttpRequest) -> QuerySet[Worker]:
        in_flight = (
            Job.objects.filter(state=JobState.CLAIMED, worker_id=OuterRef("pk"))
            .order_by()
            .values("worker_id")
            .annotate(n=Count("pk"))
            .values("n")
        )
        return (
            super()
            .get_queryset(request)
            .annotate(in_flight=Coalesce(Subquery(in_flight), Value(0)), db_now=Now())
        )

    @admin.display(description="queues")
    def queues_display(self, obj: Worker) -> str:
        return ", ".join(str(q) for q in obj.queues) if isinstance(obj.queues, list) else ""

    @admin.display(description="heartbeat", ordering="heartbeat_at")
    def heartbeat_display(self, obj: Worker) -> SafeString:
        age = _age(getattr(obj, "db_now", None), obj.heartbeat_at)
        text = f"{format_age(age)} ago"
        if age is not None and age > overview.worker_stale_seconds():
            return _badge(f"stale: {text}", "stuck")
        return format_html("{}", text)

    @admin.display(description="in flight", ordering="in_flight")
    def in_flight_display(self, obj: Worker) -> int:
        return int(getattr(obj, "in_flight", 0))
