"""Groups and chains (read-only, with their children) and resource locks (force release) in the
admin.

A group row is never edited or deleted here: its counters are the fan-in, changed only in the
transaction of each child's finish. A lock is released only by the "Force release" action,
which goes through ``pg_queue.workflows.locks.force_release`` (logged on ``pg_queue.locks``
with the holder it threw out) and writes one ``LogEntry`` per key it released.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.admin.models import DELETION
from django.contrib.admin.utils import quote
from django.db.models import QuerySet
from django.db.models.functions import Now
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString

from pg_queue.admin.base import (
    BOTH,
    CONFIRM_SAMPLE,
    ActionLocation,
    OperatorAdmin,
    _age,
    _badge,
    _pre,
    _short,
    action,
)
from pg_queue.models import (
    DeadLetter,
    GroupKind,
    GroupStatus,
    Job,
    JobGroup,
    JobState,
    ResourceLock,
    TaskResult,
)
from pg_queue.ops import masking
from pg_queue.ops.overview import format_age
from pg_queue.ops.workflow_overview import format_expiry
from pg_queue.workflows import locks as workflow_locks
from pg_queue.workflows.locks import LockInfo

#: Children shown on a group's page (by their place in it); the rest are counted.
CHILDREN_SHOWN = 100
#: Most locks one force release may take: each is its own short connection and log line.
MAX_FORCE_RELEASE = 100

# --- groups and chains -----------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class Child:
    """One child of a group (or step of a chain) as its page lists it."""

    index: int | None
    task_id: str
    task_name: str
    state: str  # queued, delayed, running, lease expired, succeeded, failed, cancelled...
    badge: str  # the pgq-* class of its badge
    url: str  # its row: the job, the outcome or the dead letter
    error: str = ""
    dead_letter_url: str = ""


def _change_url(model: str, pk: Any) -> str:
    return reverse(f"admin:pg_queue_{model}_change", args=[quote(pk)])


def _job_state(job: Job) -> tuple[str, str]:
    now = getattr(job, "db_now", None)
    if job.state == JobState.CLAIMED:
        if now is not None and job.vt is not None and job.vt < now:
            return "lease expired", "stuck"
        return "running", "running"
    if now is not None and job.available_at > now:
        return "delayed", "delayed"
    return "queued", "ready"


def group_children(group: JobGroup) -> tuple[list[Child], int]:
    """The first ``CHILDREN_SHOWN`` children by their place in the group, and how many of its
    ``total`` are not listed (beyond the first ones, or gone: their outcomes expired).

    Three bounded queries (live jobs, outcomes, dead letters); a dead-lettered child has a
    failed outcome too and is listed once, with both links. A chain's steps not queued yet come
    from the chain row itself.
    """
    gid = group.group_id
    jobs = (
        Job.objects.filter(group_id=gid)
        .annotate(db_now=Now())
        .only(
            "msg_id",
            "task_id",
            "task_name",
            "state",
            "available_at",
            "vt",
            "last_error",
            "group_index",
        )
        .order_by("group_index", "msg_id")
    )
    outcomes = (
        TaskResult.objects.filter(group_id=gid)
        .only("task_id", "task_name", "status", "error", "group_index")
        .order_by("group_index", "task_id")
    )
    letters = (
        DeadLetter.objects.filter(group_id=gid)
        .only("id", "task_id", "task_name", "reason", "group_index")
        .order_by("group_index", "id")
    )
    found: dict[str, Child] = {}
    dead = {str(d.task_id): d for d in letters[:CHILDREN_SHOWN]}
    for r in outcomes[:CHILDREN_SHOWN]:
        kind = {"succeeded": "ok", "failed": "stuck"}.get(r.status, "delayed")
        key = str(r.task_id)
        found[key] = Child(
            index=r.group_index,
            task_id=key,
            task_name=r.task_name,
            state=r.status,
            badge=kind,
            url=_change_url("taskresult", r.pk),
            error=_short(r.error),
            dead_letter_url=_change_url("deadletter", dead[key].pk) if key in dead else "",
        )
    for key, letter in dead.items():
        if key not in found:  # its outcome expired, the dead letter stays
            url = _change_url("deadletter", letter.pk)
            found[key] = Child(
                index=letter.group_index,
                task_id=key,
                task_name=letter.task_name,
                state=f"dead letter ({letter.reason})",
                badge="stuck",
                url=url,
                dead_letter_url=url,
            )
    for job in jobs[:CHILDREN_SHOWN]:  # a live job wins: it runs (again) now
        state, kind = _job_state(job)
        key = str(job.task_id)
        found[key] = Child(
            index=job.group_index,
            task_id=key,
            task_name=job.task_name,
            state=state,
            badge=kind,
            url=_change_url("job", job.pk),
            error=_short(job.last_error),
        )
    if group.kind == GroupKind.CHAIN and isinstance(group.steps, list):
        running = group.status == GroupStatus.RUNNING
        for i, step in enumerate(group.steps[:CHILDREN_SHOWN]):
            key = str(step.get("task_id", "")) if isinstance(step, dict) else ""
            if key and key not in found:
                found[key] = Child(
                    index=i,
                    task_id=key,
                    task_name=str(step.get("task_name", "")),
                    state="not queued yet" if running else "no outcome left (expired)",
                    badge="delayed",
                    url="",
                )
    children = sorted(found.values(), key=lambda c: (c.index is None, c.index or 0, c.task_id))[
        :CHILDREN_SHOWN
    ]
    return children, max(0, group.total - len(children))


@admin.register(JobGroup)
class JobGroupAdmin(OperatorAdmin):
    list_display = (
        "group_id",
        "kind",
        "status_display",
        "progress_display",
        "failed",
        "created_at",
        "finished_at",
    )
    list_filter = ("kind", "status")
    search_fields = ("group_id",)  # see get_search_results
    search_help_text = "A full group or chain id (UUID)."
    ordering = ("-created_at", "-group_id")
    list_defer = ("on_success", "on_error", "steps")
    actions = None
    # Flat in templates/admin/pg_queue/, where the wheel's package data takes templates from.
    change_form_template = "admin/pg_queue/group_change_form.html"
    fieldsets = (
        (
            None,
            {
                "fields": (
                    "group_id",
                    "kind",
                    "status_display",
                    "progress_display",
                    "failed",
                    "created_at",
                    "finished_at",
                )
            },
        ),
        (
            "Callbacks (secret values masked)",
            {"fields": ("on_success_display", "on_error_display"), "classes": ("collapse",)},
        ),
        (
            "Chain steps (secret values masked)",
            {"fields": ("steps_display",), "classes": ("collapse",)},
        ),
    )

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # the row is the fan-in: without it, the group would never end

    def get_fieldsets(self, request: HttpRequest, obj: Any = None) -> Any:
        fieldsets = super().get_fieldsets(request, obj)
        if obj is not None and obj.kind != GroupKind.CHAIN:
            return [f for f in fieldsets if f[0] != "Chain steps (secret values masked)"]
        return fieldsets

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[JobGroup], search_term: str
    ) -> tuple[QuerySet[JobGroup], bool]:
        if not search_term.strip():
            return queryset, False
        try:
            return queryset.filter(group_id=uuid.UUID(search_term.strip())), False
        except ValueError:
            return queryset.none(), False

    def render_change_form(
        self,
        request: HttpRequest,
        context: dict[str, Any],
        add: bool = False,
        change: bool = False,
        form_url: str = "",
        obj: Any = None,
    ) -> HttpResponse:
        if obj is not None:
            children, missing = group_children(obj)
            context.update(
                children=children,
                children_missing=missing,
                children_capped=len(children) >= CHILDREN_SHOWN,
            )
        return super().render_change_form(request, context, add, change, form_url, obj)

    @admin.display(description="status", ordering="status")
    def status_display(self, obj: JobGroup) -> SafeString:
        kind = {"succeeded": "ok", "failed": "stuck"}.get(obj.status, "running")
        return _badge(obj.status, kind)

    @admin.display(description="finished / total")
    def progress_display(self, obj: JobGroup) -> str:
        return f"{obj.finished} / {obj.total}"

    @admin.display(description="on_success")
    def on_success_display(self, obj: JobGroup) -> SafeString:
        return _pre(masking.pretty_json(obj.on_success)) if obj.on_success else SafeString("-")

    @admin.display(description="on_error")
    def on_error_display(self, obj: JobGroup) -> SafeString:
        return _pre(masking.pretty_json(obj.on_error)) if obj.on_error else SafeString("-")

    @admin.display(description="steps")
    def steps_display(self, obj: JobGroup) -> SafeString:
        return _pre(masking.pretty_json(obj.steps)) if obj.steps else SafeString("-")


# --- resource locks ----------------------------------------------------------------------------


def _released_lock(info: LockInfo) -> ResourceLock:
    """An unsaved row carrying what a LogEntry needs (pk and ``str()``), no extra query."""
    return ResourceLock(
        resource_key=info.resource_key,
        holder_kind=info.holder_kind,
        holder_id=info.holder_id,
        task_id=info.task_id,
    )


@admin.register(ResourceLock)
class ResourceLockAdmin(OperatorAdmin):
    list_display = (
        "resource_key",
        "holder_kind",
        "holder_id",
        "task_display",
        "age_display",
        "expires_display",
        "expired_display",
    )
    list_filter = ("holder_kind",)
    search_fields = ("resource_key", "holder_id")
    search_help_text = "Part of a resource key or of a holder id."
    ordering = ("acquired_at", "resource_key")
    list_defer = ("holder_meta",)
    actions = ("force_release",)
    fieldsets = (
        (
            None,
            {
                "fields": (
                    "resource_key",
                    "holder_kind",
                    "holder_id",
                    "task_display",
                    "acquired_at",
                    "age_display",
                    "expires_at",
                    "expires_display",
                    "expired_display",
                )
            },
        ),
        ("Holder details (secret values masked)", {"fields": ("holder_meta_display",)}),
    )

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # The action checks the model permission (obj None). No delete page for a row: a lock
        # goes through force_release, which logs the holder it threw out.
        return obj is None and super().has_delete_permission(request)

    def get_actions(self, request: HttpRequest, action_location: Any = None) -> dict[str, Any]:
        kwargs = {} if action_location is None else {"action_location": action_location}
        actions = super().get_actions(request, **kwargs)
        actions.pop("delete_selected", None)  # "force release" does it, logged
        return actions

    def get_queryset(self, request: HttpRequest) -> QuerySet[ResourceLock]:
        # The database clock rides along: ages and "expired" need no extra query.
        return super().get_queryset(request).annotate(db_now=Now())

    def _refuse_bad_selection(self, request: HttpRequest) -> HttpResponse | None:
        """Keys are text: a NUL in a posted selection could match nothing (PostgreSQL text
        cannot hold one) and would fail in the database."""
        if request.method == "POST" and any(
            "\x00" in value for value in request.POST.getlist(ACTION_CHECKBOX_NAME)
        ):
            return self._bad_request(
                request, "The selection holds a NUL character, which no resource key has.", None
            )
        return super()._refuse_bad_selection(request)

    # --- columns ------------------------------------------------------------------------------

    @admin.display(description="task")
    def task_display(self, obj: ResourceLock) -> SafeString:
        if obj.task_id is None:
            return SafeString("-")
        url = reverse("admin:pg_queue_job_changelist")
        return format_html('<a href="{}?q={}">{}</a>', url, obj.task_id, obj.task_id)

    @admin.display(description="age", ordering="acquired_at")
    def age_display(self, obj: ResourceLock) -> str:
        return format_age(_age(getattr(obj, "db_now", None), obj.acquired_at))

    def _left(self, obj: ResourceLock) -> float | None:
        return _age(obj.expires_at, getattr(obj, "db_now", None))

    @admin.display(description="expires", ordering="expires_at")
    def expires_display(self, obj: ResourceLock) -> SafeString:
        if obj.expires_at is None:
            return format_html("{}", format_expiry(None))
        left = self._left(obj)
        if left is not None and left <= 0:
            return _badge(format_expiry(left), "stuck")
        return format_html("{}", format_expiry(left))

    @admin.display(description="expired", boolean=True)
    def expired_display(self, obj: ResourceLock) -> bool:
        left = self._left(obj)
        return left is not None and left <= 0

    @admin.display(description="holder details")
    def holder_meta_display(self, obj: ResourceLock) -> SafeString:
        return _pre(masking.pretty_json(obj.holder_meta)) if obj.holder_meta else SafeString("-")

    # --- the action ---------------------------------------------------------------------------

    @action(
        permissions=["delete"],
        description="Force release",
        description_plural="Force release selected locks",
        location=BOTH,
    )
    def force_release(
        self, request: HttpRequest, queryset: QuerySet[ResourceLock]
    ) -> HttpResponse | None:
        keys = list(queryset.order_by("acquired_at", "resource_key").values_list("pk", flat=True))
        if len(keys) > MAX_FORCE_RELEASE:
            self.message_user(
                request,
                f"{len(keys)} locks selected; at most {MAX_FORCE_RELEASE} per force release. "
                "Narrow the filter, or use pg_queue_locks --release KEY --force.",
                messages.ERROR,
            )
            return None
        if request.POST.get("pgq_confirm") != "yes":
            return self._confirm_keys(request, keys, queryset)
        actor = f"admin:{self._actor(request)}"
        released: list[LockInfo] = []
        for key in keys:
            info = workflow_locks.force_release(key, actor=actor)
            if info is not None:
                released.append(info)
        # One batch: an entry per key, whose description names the holder thrown out.
        self._log(
            request,
            [_released_lock(info) for info in released],
            DELETION,
            f"Force-released by {actor}",
        )
        gone = len(keys) - len(released)
        self.message_user(
            request,
            f"{len(released)} lock(s) force-released"
            + (f"; {gone} no longer held" if gone else ""),
            messages.SUCCESS,
        )
        return self._back(request, gone=bool(released))

    def _confirm_keys(
        self, request: HttpRequest, keys: list[str], queryset: QuerySet[ResourceLock]
    ) -> HttpResponse:
        """Ask first, naming the holders; the answer posts back the keys it showed.

        The base class's confirmation carries integer ids joined by commas; keys are text (a
        comma is a valid key character), so each travels as its own selected value.
        """
        on_form = f"{ActionLocation.CHANGE_FORM.value}-action" in request.POST
        echo = (
            [(f"{ActionLocation.CHANGE_FORM.value}-action", "force_release")]
            if on_form
            else [("action", "force_release"), ("select_across", "0")]
        )
        echo += [("_selected_action", key) for key in keys]
        sample: Iterable[ResourceLock] = queryset.defer("holder_meta").order_by(
            "acquired_at", "resource_key"
        )[:CONFIRM_SAMPLE]
        context = {
            **self.admin_site.each_context(request),
            "title": "Force release locks",
            "opts": self.opts,
            "question": f"Force release {len(keys)} lock(s), whoever holds them?",
            "details": [
                "Use this for a holder that is really gone (its worker or process died and the "
                "lock outlived it).",
                "A job holding one of these locks keeps running, and the next job of that key "
                "may start alongside it; a resource_lock() block keeps running too (its next "
                "renewal finds the lock lost). Two holders would then run together.",
                "Each release is logged with the holder it threw out.",
            ],
            "sample": list(sample),
            "more": max(0, len(keys) - CONFIRM_SAMPLE),
            "echo": echo,
            "form": None,
            "submit": "Yes, force release them",
            "back_url": request.get_full_path(),
        }
        return TemplateResponse(request, "admin/pg_queue/confirm_action.html", context)
