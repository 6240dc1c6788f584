"""Jobs in the admin, with the queues overview page and its actions."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.models import CHANGE, DELETION
from django.core.exceptions import PermissionDenied
from django.db.models import Count, Q, QuerySet
from django.db.models.functions import Now
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString

from pg_queue.admin.base import (
    BOTH,
    CONFIRM_SAMPLE,
    AttemptsFilter,
    JobStateFilter,
    OperatorAdmin,
    PriorityForm,
    TenantFilter,
    _age,
    _ascii_int,
    _badge,
    _pre,
    _search_by_id,
    _short,
    action,
)
from pg_queue.models import Job, JobState
from pg_queue.ops import masking, operations, overview
from pg_queue.ops.overview import format_age

#: Longest auto-refresh period of the overview (``?refresh=N``), in seconds.
MAX_REFRESH_SECONDS = 3600


def refresh_seconds(raw: str) -> int:
    """The overview's ``?refresh=`` as whole seconds in 1..MAX_REFRESH_SECONDS; 0 (no
    auto-refresh) for anything else. Never raises."""
    seconds = _ascii_int(raw, len(str(MAX_REFRESH_SECONDS)))
    return seconds if seconds is not None and 1 <= seconds <= MAX_REFRESH_SECONDS else 0


# --- jobs --------------------------------------------------------------------------------------


def _job_refs(refs: Iterable[operations.JobRef]) -> list[Job]:
    """Unsaved instances carrying what a LogEntry needs (pk and ``str()``), no extra query."""
    return [
        Job(
            msg_id=r.msg_id,
            task_id=r.task_id,
            task_name=r.task_name,
            queue_name=r.queue_name,
            state=r.state,
        )
        for r in refs
    ]


@admin.register(Job)
class JobAdmin(OperatorAdmin):
    list_display = (
        "msg_id",
        "task_id",
        "task_name",
        "queue_name",
        "state_display",
        "priority",
        "attempts_display",
        "due_display",
        "worker_id",
        "tenant_key",
        "error_display",
    )
    list_display_links = ("msg_id", "task_id")
    list_filter = (
        "queue_name",
        JobStateFilter,
        "task_name",
        TenantFilter,
        AttemptsFilter,
    )
    search_fields = ("task_id",)  # see get_search_results
    search_help_text = "A full task id (UUID), a job (msg_id) number, a worker id or a dedup key."
    ordering = ("-priority", "available_at", "msg_id")
    list_defer = ("payload",)
    actions = ("run_now", "cancel_jobs", "change_priority")
    fieldsets = (
        (
            None,
            {
                "fields": (
                    "task_id",
                    "msg_id",
                    "task_name",
                    "queue_name",
                    "state_display",
                    "priority",
                    "tenant_key",
                    "resource_key",
                    "dedup_key",
                )
            },
        ),
        ("Timing", {"fields": ("enqueued_at", "available_at", "due_display")}),
        (
            "Attempts and lease",
            {
                "fields": (
                    "attempts_display",
                    "lease_display",
                    "vt",
                    "worker_id",
                    "lease_token",
                    "cancel_requested",
                )
            },
        ),
        ("Last error", {"fields": ("last_error_display",)}),
        ("Payload (secret values masked)", {"fields": ("payload_display",)}),
    )

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Deleting a raw row would skip the outcome and on_error callback: cancel instead (or
        # pg_queue_purge, which says it throws jobs away).
        return False

    def get_queryset(self, request: HttpRequest) -> QuerySet[Job]:
        # The database clock rides along with the rows: ages and "expired" need no extra query.
        return super().get_queryset(request).annotate(db_now=Now())

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Job], search_term: str
    ) -> tuple[QuerySet[Job], bool]:
        if not search_term.strip():
            return queryset, False
        found = _search_by_id(queryset, search_term, "msg_id")
        if found is None:  # a worker's id (its in-flight jobs) or a dedup key
            term = search_term.strip()
            found = queryset.filter(Q(worker_id=term) | Q(dedup_key=term))
        return found, False

    def get_urls(self) -> list[URLPattern]:
        overview_url = path(
            "overview/",
            self.admin_site.admin_view(self.overview_view),
            name="pg_queue_overview",
        )
        return [overview_url, *super().get_urls()]

    def overview_view(self, request: HttpRequest) -> HttpResponse:
        """The queues overview: counts per queue, workers, and what is stuck (in red)."""
        if not self.has_view_or_change_permission(request):
            raise PermissionDenied
        refused = self._refuse_nul(request, back_url=reverse("admin:pg_queue_overview"))
        if refused:
            return refused
        snapshot = overview.queue_overview()
        context = {
            **self.admin_site.each_context(request),
            "title": "Queues overview",
            "opts": self.opts,
            "overview": snapshot,
            "rows": [_queue_row(q) for q in snapshot.queues],
            "totals": _queue_row(snapshot.totals),
            "workers": [_worker_row(w) for w in snapshot.workers],
            "refresh": refresh_seconds(request.GET.get("refresh", "")),
            "messages_url": self._changelist_url(),
            "dead_letters_url": reverse("admin:pg_queue_deadletter_changelist"),
            "results_url": reverse("admin:pg_queue_taskresult_changelist"),
            "workers_url": reverse("admin:pg_queue_worker_changelist"),
        }
        return TemplateResponse(request, "admin/pg_queue/overview.html", context)

    # --- columns ------------------------------------------------------------------------------

    @admin.display(description="state", ordering="state")
    def state_display(self, obj: Job) -> SafeString:
        now = getattr(obj, "db_now", None)
        if obj.state == JobState.CLAIMED:
            if now is not None and obj.vt is not None and obj.vt < now:
                text = _badge("lease expired", "stuck")
            else:
                text = _badge("running", "running")
        elif now is not None and obj.available_at > now:
            text = _badge("delayed", "delayed")
        else:
            text = _badge("ready", "ready")
        if obj.cancel_requested:
            text = format_html("{} {}", text, _badge("cancel requested", "stuck"))
        return text

    @admin.display(description="attempts", ordering="attempts")
    def attempts_display(self, obj: Job) -> str:
        return f"{obj.attempts} / {obj.max_attempts}"

    @admin.display(description="due", ordering="available_at")
    def due_display(self, obj: Job) -> str:
        now = getattr(obj, "db_now", None)
        age = _age(now, obj.available_at)
        if age is None:
            return "-"
        return f"in {format_age(-age)}" if age < 0 else f"{format_age(age)} ago"

    @admin.display(description="lease")
    def lease_display(self, obj: Job) -> SafeString:
        left = _age(obj.vt, getattr(obj, "db_now", None))
        if obj.state != JobState.CLAIMED or left is None:
            return SafeString("-")
        if left < 0:
            return _badge(f"expired {format_age(-left)} ago", "stuck")
        return format_html("{} left", format_age(left))

    @admin.display(description="last error")
    def error_display(self, obj: Job) -> str:
        return _short(obj.last_error)

    @admin.display(description="last error")
    def last_error_display(self, obj: Job) -> SafeString:
        return _pre(obj.last_error)

    @admin.display(description="payload")
    def payload_display(self, obj: Job) -> SafeString:
        return _pre(masking.pretty_json(obj.payload))

    # --- actions ------------------------------------------------------------------------------

    @action(
        permissions=["change"],
        description="Run now (make delayed jobs due)",
        description_plural="Run selected jobs now (make delayed ones due)",
        location=BOTH,
    )
    def run_now(self, request: HttpRequest, queryset: QuerySet[Job]) -> None:
        ids = self._selected_ids(request, queryset)
        changed = operations.jobs_run_now(ids)
        self._log(request, _job_refs(changed), CHANGE, "Run now: made due immediately")
        skipped = len(ids) - len(changed)
        self.message_user(
            request,
            f"{len(changed)} delayed job(s) made due now"
            + (f"; {skipped} left as they were (already due, or running)" if skipped else ""),
            messages.SUCCESS,
        )

    @action(
        permissions=["change"],
        description="Cancel",
        description_plural="Cancel selected jobs",
        location=BOTH,
    )
    def cancel_jobs(self, request: HttpRequest, queryset: QuerySet[Job]) -> HttpResponse | None:
        ids = self._selected_ids(request, queryset)
        if self._too_many(request, ids):
            return None
        if request.POST.get("pgq_confirm") != "yes":
            counts = queryset.order_by().aggregate(
                queued=Count("pk", filter=Q(state=JobState.READY)),
                running=Count("pk", filter=Q(state=JobState.CLAIMED)),
            )
            return self._confirm(
                request,
                ids,
                action="cancel_jobs",
                title="Cancel jobs",
                question=f"Cancel {len(ids)} job(s)?",
                details=[
                    f"{counts['queued']} queued: removed now, with a 'cancelled' outcome; "
                    "their on_error callbacks are enqueued.",
                    f"{counts['running']} running: asked to stop; the worker ends them at the "
                    "next safe point with a 'cancelled' outcome.",
                ],
                sample=queryset.defer("payload")[:CONFIRM_SAMPLE],
                submit="Yes, cancel them",
            )
        report = operations.jobs_cancel(msg_ids=ids, actor=self._actor(request))
        by = f"by {self._actor(request)}"
        self._log(
            request,
            _job_refs(report.cancelled),
            DELETION,
            f"Cancelled {by}: removed from the queue with a 'cancelled' outcome",
        )
        self._log(
            request,
            _job_refs(report.requested),
            CHANGE,
            f"Cancel requested {by}: the worker stops it at its next safe point",
        )
        self.message_user(
            request,
            f"{len(report.cancelled)} queued job(s) cancelled, "
            f"{len(report.requested)} running job(s) asked to stop"
            + (
                f"; {report.continuations} on_error callback(s) enqueued"
                if report.continuations
                else ""
            ),
            messages.SUCCESS,
        )
        if report.continuation_error:
            self.message_user(
                request,
                f"on_error callbacks could not be enqueued: {report.continuation_error}",
                messages.WARNING,
            )
        return self._back(request, gone=bool(report.cancelled))

    @action(
        permissions=["change"],
        description="Change priority",
        description_plural="Change priority of selected jobs",
        location=BOTH,
    )
    def change_priority(self, request: HttpRequest, queryset: QuerySet[Job]) -> HttpResponse | None:
        ids = self._selected_ids(request, queryset)
        if self._too_many(request, ids):
            return None
        form = PriorityForm(request.POST if "pgq_confirm" in request.POST else None)
        if not form.is_valid():
            return self._confirm(
                request,
                ids,
                action="change_priority",
                title="Change priority",
                question=f"New priority for {len(ids)} job(s):",
                details=["Running jobs keep it for their retries."],
                sample=queryset.defer("payload")[:CONFIRM_SAMPLE],
                submit="Set priority",
                form=form,
            )
        priority = form.cleaned_data["priority"]
        changed = operations.jobs_set_priority(ids, priority)
        self._log(request, _job_refs(changed), CHANGE, f"Priority set to {priority}")
        self.message_user(
            request, f"Priority set to {priority} on {len(changed)} job(s)", messages.SUCCESS
        )
        return None


def _queue_row(q: overview.QueueStats) -> dict[str, Any]:
    return {
        "q": q,
        "oldest": format_age(q.oldest_ready_seconds),
        "queue_param": q.queue,
    }


def _worker_row(w: overview.WorkerStats) -> dict[str, Any]:
    return {
        "w": w,
        "heartbeat": format_age(w.heartbeat_age_seconds),
        "uptime": format_age(w.uptime_seconds),
        "queues": ", ".join(w.queues),
    }
