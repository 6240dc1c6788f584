"""The operator surface in the Django admin: queues overview, messages, dead letters, results,
workers.

Raw rows are never edited here: a saved form would write stale copies of columns a worker owns
(``vt``, ``lease_token``). Every change is an action from ``pg_queue.operations`` (set-based,
whatever the number of rows), checked against Django's model permissions (``change`` for run
now / priority / cancel / requeue, ``delete`` for discard) and recorded as ``LogEntry`` rows in
one batch: who did what to which job. List pages run a fixed number of queries, however many
rows they show (no per-row lookups: the database clock and in-flight counts are annotations).
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import ActionLocation
from django.contrib.admin.models import CHANGE, DELETION, LogEntry
from django.contrib.admin.views.main import ERROR_FLAG, PAGE_VAR
from django.core.exceptions import PermissionDenied
from django.db.models import Count, F, Model, OuterRef, Q, QuerySet, Subquery, Value
from django.db.models.functions import Coalesce, Now
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString

from pg_queue import operations
from pg_queue.models import DeadLetter, MessageState, QueueMessage, TaskResult, Worker
from pg_queue.operations import format_age

#: Both places an action can run from: the list (selected rows) and a row's detail page.
BOTH = [ActionLocation.CHANGE_LIST, ActionLocation.CHANGE_FORM]
#: Rows listed by name on a confirmation page (the rest are counted).
CONFIRM_SAMPLE = 20
#: Most rows one confirmed action may take: their ids travel in the confirmation form. Beyond
#: it, narrow the filter or use the management commands.
MAX_CONFIRM_ROWS = 50_000
#: Characters of an error shown in a list column.
ERROR_PREVIEW = 80


def _age(later: dt.datetime | None, earlier: dt.datetime | None) -> float | None:
    if later is None or earlier is None:
        return None
    return (later - earlier).total_seconds()


def _pre(text: str) -> SafeString:
    return format_html('<pre class="pgq-pre">{}</pre>', text) if text else SafeString("-")


def _short(text: str, limit: int = ERROR_PREVIEW) -> str:
    line = text.strip().splitlines()[-1] if text.strip() else ""
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _badge(text: str, kind: str) -> SafeString:
    return format_html('<span class="pgq-badge pgq-{}">{}</span>', kind, text)


def _search_by_id(queryset: QuerySet[Any], term: str, id_field: str) -> QuerySet[Any] | None:
    """A full task id (UUID) or a numeric row id; None when ``term`` is neither."""
    term = term.strip()
    try:
        return queryset.filter(task_id=uuid.UUID(term))
    except ValueError:
        pass
    if term.isdigit() and int(term) < 2**63:
        return queryset.filter(**{id_field: int(term)})
    return None


class InputFilter(admin.SimpleListFilter):
    """A free-text filter (exact match) for columns with too many values to list."""

    template = "admin/pg_queue/input_filter.html"
    field_name = ""

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("", "")]  # never shown; a filter needs at least one lookup to render

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        if value:
            return queryset.filter(**{self.field_name: value.strip()})
        return queryset

    def choices(self, changelist: Any) -> Iterator[Any]:
        # The template needs the other parameters to keep them, and a link to clear this one.
        yield {
            "value": self.value() or "",
            "parameter_name": self.parameter_name,
            "others": [  # everything else on the page (filters, search, ordering), not the page
                (k, v)
                for k, values in changelist.params.items()
                if k not in (self.parameter_name, PAGE_VAR, ERROR_FLAG)
                for v in (values if isinstance(values, list) else [values])
            ],
            "clear_query_string": changelist.get_query_string(remove=[self.parameter_name]),
        }


class TenantFilter(InputFilter):
    title = "tenant"
    parameter_name = "tenant"
    field_name = "tenant_key"


class QueueInputFilter(InputFilter):
    title = "queue"
    parameter_name = "queue"
    field_name = "queue_name"


class TaskInputFilter(InputFilter):
    title = "task"
    parameter_name = "task"
    field_name = "task_name"


class MessageStateFilter(admin.SimpleListFilter):
    """The state column, split the way operators think: due, delayed, running, stuck."""

    title = "state"
    parameter_name = "state"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [
            ("ready", "ready (due or delayed)"),
            ("due", "ready, due now"),
            ("delayed", "ready, delayed"),
            ("claimed", "claimed (running)"),
            ("lease_expired", "claimed, lease expired"),
            ("cancel_requested", "cancel requested"),
        ]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        now = Now()
        conditions = {
            "ready": Q(state=MessageState.READY),
            "due": Q(state=MessageState.READY, available_at__lte=now),
            "delayed": Q(state=MessageState.READY, available_at__gt=now),
            "claimed": Q(state=MessageState.CLAIMED),
            "lease_expired": Q(state=MessageState.CLAIMED, vt__lt=now),
            "cancel_requested": Q(cancel_requested=True),
        }
        condition = conditions.get(self.value() or "")
        return queryset if condition is None else queryset.filter(condition)


class AttemptsFilter(admin.SimpleListFilter):
    title = "attempts"
    parameter_name = "attempts"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [
            ("0", "not started yet"),
            ("1", "1"),
            ("retried", "more than 1"),
            ("last", "on its last attempt (retried)"),
        ]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        if value in ("0", "1"):
            return queryset.filter(attempts=int(value))
        if value == "retried":
            return queryset.filter(attempts__gt=1)
        if value == "last":  # a failure now would dead-letter it (retried jobs only)
            return queryset.filter(
                Q(state=MessageState.READY, attempts__gte=F("max_attempts") - 1)
                | Q(state=MessageState.CLAIMED, attempts__gte=F("max_attempts")),
                attempts__gt=0,
            )
        return queryset


class PriorityForm(forms.Form):
    priority = forms.IntegerField(
        min_value=-32768,
        max_value=32767,
        help_text="higher runs first among due jobs of a queue (-32768..32767)",
    )


if TYPE_CHECKING:
    _ModelAdmin = admin.ModelAdmin[Any]
else:  # ModelAdmin is generic only in the stubs
    _ModelAdmin = admin.ModelAdmin


class OperatorAdmin(_ModelAdmin):
    """Read-only rows; changes only through logged, permission-checked actions."""

    #: Columns left out of list pages (big JSON / text); detail pages load them.
    list_defer: tuple[str, ...] = ()
    show_full_result_count = False  # one count(*) per page is enough
    list_per_page = 100

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Actions check the model permission (obj None). A row's form stays view-only: saving
        # it would write stale copies of columns the worker owns.
        return obj is None and super().has_change_permission(request)

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        queryset = super().get_queryset(request)
        match = request.resolver_match
        if self.list_defer and match is not None and (match.url_name or "").endswith("_changelist"):
            queryset = queryset.defer(*self.list_defer)
        return queryset

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        fields: list[str] = []
        for fieldset in self.get_fieldsets(request, obj):
            fields += [f for f in fieldset[1]["fields"] if isinstance(f, str)]
        return fields

    # --- helpers for actions ------------------------------------------------------------------

    def _log(self, request: HttpRequest, objects: Sequence[Model], flag: int, message: str) -> None:
        """One batch of LogEntry rows: who (the user) did what (message) to which rows."""
        if objects:
            LogEntry.objects.log_actions(
                user_id=request.user.pk or 0,  # admin views require a logged-in user
                queryset=objects,  # any iterable of instances; only pk and str() are read
                action_flag=flag,
                change_message=message,
            )

    def _actor(self, request: HttpRequest) -> str:
        return request.user.get_username() or f"user {request.user.pk}"

    def _changelist_url(self) -> str:
        return reverse(f"admin:{self.opts.app_label}_{self.opts.model_name}_changelist")

    def _selected_ids(self, request: HttpRequest, queryset: QuerySet[Any]) -> list[int]:
        """The confirmed ids (frozen when the confirmation page was shown), or the selection."""
        raw = request.POST.get("pgq_ids")
        if raw is not None:
            try:
                return [int(i) for i in raw.split(",") if i]
            except ValueError:
                raise PermissionDenied("malformed confirmation") from None
        return list(queryset.values_list("pk", flat=True))

    def _confirm(
        self,
        request: HttpRequest,
        ids: list[int],
        *,
        action: str,
        title: str,
        question: str,
        details: list[str],
        sample: Iterable[Any],
        submit: str,
        form: forms.Form | None = None,
    ) -> HttpResponse:
        """An intermediate page that posts the action back with the ids it showed."""
        on_form = f"{ActionLocation.CHANGE_FORM.value}-action" in request.POST
        echo = (
            [(f"{ActionLocation.CHANGE_FORM.value}-action", action)]
            if on_form
            else [("action", action), ("select_across", "1")]
        )
        echo += [("_selected_action", str(ids[0])), ("pgq_ids", ",".join(map(str, ids)))]
        context = {
            **self.admin_site.each_context(request),
            "title": title,
            "opts": self.opts,
            "question": question,
            "details": details,
            "sample": list(sample),
            "more": max(0, len(ids) - CONFIRM_SAMPLE),
            "echo": echo,
            "form": form,
            "submit": submit,
            "back_url": request.get_full_path(),
        }
        return TemplateResponse(request, "admin/pg_queue/confirm_action.html", context)

    def _too_many(self, request: HttpRequest, ids: list[int]) -> bool:
        if len(ids) > MAX_CONFIRM_ROWS:
            self.message_user(
                request,
                f"{len(ids)} rows selected; at most {MAX_CONFIRM_ROWS} per confirmed action. "
                "Narrow the filter, or use the pg_queue_* management commands.",
                messages.ERROR,
            )
            return True
        return False

    def _back(self, request: HttpRequest, gone: bool) -> HttpResponse | None:
        """After an action on a detail page whose row is gone, go to the list instead."""
        if gone and f"{ActionLocation.CHANGE_FORM.value}-action" in request.POST:
            return HttpResponseRedirect(self._changelist_url())
        return None


# --- messages ----------------------------------------------------------------------------------


def _ref_messages(refs: Iterable[operations.MessageRef]) -> list[QueueMessage]:
    """Unsaved instances carrying what a LogEntry needs (pk and ``str()``), no extra query."""
    return [
        QueueMessage(
            msg_id=r.msg_id,
            task_id=r.task_id,
            task_name=r.task_name,
            queue_name=r.queue_name,
            state=r.state,
        )
        for r in refs
    ]


@admin.register(QueueMessage)
class QueueMessageAdmin(OperatorAdmin):
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
        MessageStateFilter,
        "task_name",
        TenantFilter,
        AttemptsFilter,
    )
    search_fields = ("task_id",)  # see get_search_results
    search_help_text = "A full task id (UUID), a message id, a worker id or a dedup key."
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

    def get_queryset(self, request: HttpRequest) -> QuerySet[QueueMessage]:
        # The database clock rides along with the rows: ages and "expired" need no extra query.
        return super().get_queryset(request).annotate(db_now=Now())

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[QueueMessage], search_term: str
    ) -> tuple[QuerySet[QueueMessage], bool]:
        if not search_term.strip():
            return queryset, False
        found = _search_by_id(queryset, search_term, "msg_id")
        if found is None:  # a worker's id (its in-flight jobs) or a dedup key
            term = search_term.strip()
            found = queryset.filter(Q(worker_id=term) | Q(dedup_key=term))
        return found, False

    def get_urls(self) -> list[URLPattern]:
        overview = path(
            "overview/",
            self.admin_site.admin_view(self.overview_view),
            name="pg_queue_overview",
        )
        return [overview, *super().get_urls()]

    def overview_view(self, request: HttpRequest) -> HttpResponse:
        """The queues overview: counts per queue, workers, and what is stuck (in red)."""
        if not self.has_view_or_change_permission(request):
            raise PermissionDenied
        overview = operations.queue_overview()
        refresh = request.GET.get("refresh", "")
        context = {
            **self.admin_site.each_context(request),
            "title": "Queues overview",
            "opts": self.opts,
            "overview": overview,
            "rows": [_queue_row(q) for q in overview.queues],
            "totals": _queue_row(overview.totals),
            "workers": [_worker_row(w) for w in overview.workers],
            "refresh": int(refresh) if refresh.isdigit() and 1 <= int(refresh) <= 3600 else 0,
            "messages_url": self._changelist_url(),
            "dead_letters_url": reverse("admin:pg_queue_deadletter_changelist"),
            "results_url": reverse("admin:pg_queue_taskresult_changelist"),
            "workers_url": reverse("admin:pg_queue_worker_changelist"),
        }
        return TemplateResponse(request, "admin/pg_queue/overview.html", context)

    # --- columns ------------------------------------------------------------------------------

    @admin.display(description="state", ordering="state")
    def state_display(self, obj: QueueMessage) -> SafeString:
        now = getattr(obj, "db_now", None)
        if obj.state == MessageState.CLAIMED:
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
    def attempts_display(self, obj: QueueMessage) -> str:
        return f"{obj.attempts} / {obj.max_attempts}"

    @admin.display(description="due", ordering="available_at")
    def due_display(self, obj: QueueMessage) -> str:
        now = getattr(obj, "db_now", None)
        age = _age(now, obj.available_at)
        if age is None:
            return "-"
        return f"in {format_age(-age)}" if age < 0 else f"{format_age(age)} ago"

    @admin.display(description="lease")
    def lease_display(self, obj: QueueMessage) -> SafeString:
        left = _age(obj.vt, getattr(obj, "db_now", None))
        if obj.state != MessageState.CLAIMED or left is None:
            return SafeString("-")
        if left < 0:
            return _badge(f"expired {format_age(-left)} ago", "stuck")
        return format_html("{} left", format_age(left))

    @admin.display(description="last error")
    def error_display(self, obj: QueueMessage) -> str:
        return _short(obj.last_error)

    @admin.display(description="last error")
    def last_error_display(self, obj: QueueMessage) -> SafeString:
        return _pre(obj.last_error)

    @admin.display(description="payload")
    def payload_display(self, obj: QueueMessage) -> SafeString:
        return _pre(operations.pretty_json(obj.payload))

    # --- actions ------------------------------------------------------------------------------

    @admin.action(
        permissions=["change"],
        description="Run now (make delayed jobs due)",
        description_plural="Run selected messages now (make delayed ones due)",
        location=BOTH,
    )
    def run_now(self, request: HttpRequest, queryset: QuerySet[QueueMessage]) -> None:
        ids = self._selected_ids(request, queryset)
        changed = operations.messages_run_now(ids)
        self._log(request, _ref_messages(changed), CHANGE, "Run now: made due immediately")
        skipped = len(ids) - len(changed)
        self.message_user(
            request,
            f"{len(changed)} delayed job(s) made due now"
            + (f"; {skipped} left as they were (already due, or running)" if skipped else ""),
            messages.SUCCESS,
        )

    @admin.action(
        permissions=["change"],
        description="Cancel",
        description_plural="Cancel selected messages",
        location=BOTH,
    )
    def cancel_jobs(
        self, request: HttpRequest, queryset: QuerySet[QueueMessage]
    ) -> HttpResponse | None:
        ids = self._selected_ids(request, queryset)
        if self._too_many(request, ids):
            return None
        if request.POST.get("pgq_confirm") != "yes":
            counts = queryset.order_by().aggregate(
                queued=Count("pk", filter=Q(state=MessageState.READY)),
                running=Count("pk", filter=Q(state=MessageState.CLAIMED)),
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
        report = operations.messages_cancel(msg_ids=ids, actor=self._actor(request))
        by = f"by {self._actor(request)}"
        self._log(
            request,
            _ref_messages(report.cancelled),
            DELETION,
            f"Cancelled {by}: removed from the queue with a 'cancelled' outcome",
        )
        self._log(
            request,
            _ref_messages(report.requested),
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

    @admin.action(
        permissions=["change"],
        description="Change priority",
        description_plural="Change priority of selected messages",
        location=BOTH,
    )
    def change_priority(
        self, request: HttpRequest, queryset: QuerySet[QueueMessage]
    ) -> HttpResponse | None:
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
        changed = operations.messages_set_priority(ids, priority)
        self._log(request, _ref_messages(changed), CHANGE, f"Priority set to {priority}")
        self.message_user(
            request, f"Priority set to {priority} on {len(changed)} job(s)", messages.SUCCESS
        )
        return None


def _queue_row(q: operations.QueueStats) -> dict[str, Any]:
    return {
        "q": q,
        "oldest": format_age(q.oldest_ready_seconds),
        "queue_param": q.queue,
    }


def _worker_row(w: operations.WorkerStats) -> dict[str, Any]:
    return {
        "w": w,
        "heartbeat": format_age(w.heartbeat_age_seconds),
        "uptime": format_age(w.uptime_seconds),
        "queues": ", ".join(w.queues),
    }


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
        return _pre(operations.pretty_json(obj.payload))

    @admin.action(
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
            "Requeued as a fresh message (same task id, attempts 0)",
        )
        self.message_user(
            request,
            f"{len(requeued)} dead letter(s) requeued with fresh attempts"
            + (f"; {len(skipped)} skipped (task id already live in the queue)" if skipped else ""),
            messages.SUCCESS,
        )
        return self._back(request, gone=bool(requeued))

    @admin.action(
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
        return _pre(operations.pretty_json(obj.result))


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
            QueueMessage.objects.filter(state=MessageState.CLAIMED, worker_id=OuterRef("pk"))
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
        if age is not None and age > operations.worker_stale_seconds():
            return _badge(f"stale: {text}", "stuck")
        return format_html("{}", text)

    @admin.display(description="in flight", ordering="in_flight")
    def in_flight_display(self, obj: Worker) -> int:
        return int(getattr(obj, "in_flight", 0))
