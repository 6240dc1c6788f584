"""Shared pieces of the pg_queue admin: filters, formatting helpers, the OperatorAdmin base."""

from __future__ import annotations

import datetime as dt
import enum
import functools
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.admin.models import LogEntry
from django.contrib.admin.views.main import ERROR_FLAG, PAGE_VAR
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import F, Model, Q, QuerySet
from django.db.models.functions import Now
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString

from pg_queue.models import JobState

#: Whether this Django runs admin actions from a row's detail page too (``ActionLocation``,
#: Django 6.1+). Older ones offer pg_queue's actions on the list pages only, and
#: ``manage.py check`` says so (``pg_queue.I001``).
ACTIONS_ON_CHANGE_FORM = hasattr(admin, "ActionLocation")


class _ActionLocation(enum.Enum):
    """Django 6.1's ``ActionLocation``, for older Django (which knows only the list)."""

    CHANGE_FORM = "CHANGE_FORM"
    CHANGE_LIST = "CHANGE_LIST"


ActionLocation: Any = admin.ActionLocation if ACTIONS_ON_CHANGE_FORM else _ActionLocation


def _accept_our_locations(django_action: Callable[..., Any]) -> Callable[..., Any]:
    """``admin.action`` for Django < 6.1 that also takes 6.1's ``location=`` (of
    ``_ActionLocation``) and ``description_plural=``.

    Older Django runs actions from the list page only, which is where they stay: the location
    is dropped, and the plural description (the list's wording, for the selected rows) becomes
    the description. A call without such a location goes to Django unchanged, so other apps
    see no change.
    """

    def ours(location: Any) -> bool:
        values = location if isinstance(location, list | tuple) else [location]
        return all(isinstance(value, _ActionLocation) for value in values)

    @functools.wraps(django_action)
    def action(function: Any = None, **options: Any) -> Any:
        if "location" in options and ours(options["location"]):
            del options["location"]
            plural = options.pop("description_plural", None)
            if plural is not None:
                options["description"] = plural
        return django_action(function, **options)

    return action


#: ``admin.action`` that takes ``location=`` on every supported Django.
action = admin.action if ACTIONS_ON_CHANGE_FORM else _accept_our_locations(admin.action)


#: Both places an action can run from: the list (selected rows) and a row's detail page.
BOTH = [ActionLocation.CHANGE_LIST, ActionLocation.CHANGE_FORM]
#: Rows listed by name on a confirmation page (the rest are counted).
CONFIRM_SAMPLE = 20
#: Most rows one confirmed action may take: their ids travel in the confirmation form. Beyond
#: it, narrow the filter or use the management commands.
MAX_CONFIRM_ROWS = 50_000
#: Characters of an error shown in a list column.
ERROR_PREVIEW = 80
#: Digits of the largest row id (bigint, 2**63 - 1): a longer number names no row.
ID_DIGITS = 19


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


def _ascii_int(text: str, max_digits: int) -> int | None:
    """``text`` as an int when it is ASCII digits only, at most ``max_digits`` of them; else None.

    Never raises. ``str.isdigit()`` alone is true for ``²`` and ``①`` (``int()`` refuses them)
    and for other scripts' digits (``int()`` takes them); past 4300 digits ``int()`` refuses
    any text. An operator typing a number types ASCII digits.
    """
    if text.isascii() and text.isdigit() and len(text) <= max_digits:
        return int(text)
    return None


def _row_id(text: str) -> int | None:
    """A bigint row id from request text, or None (never raises)."""
    number = _ascii_int(text, ID_DIGITS)
    return number if number is not None and number < 2**63 else None


def _search_by_id(queryset: QuerySet[Any], term: str, id_field: str) -> QuerySet[Any] | None:
    """A full task id (UUID) or a numeric row id; None when ``term`` is neither."""
    term = term.strip()
    try:
        return queryset.filter(task_id=uuid.UUID(term))
    except ValueError:
        pass
    row_id = _row_id(term)
    if row_id is not None:
        return queryset.filter(**{id_field: row_id})
    return None


def _nul_in(request: HttpRequest) -> str | None:
    """Where the address carries a NUL character (PostgreSQL text cannot hold one), or None."""
    if "\x00" in request.path:
        return "the path"
    for key, values in request.GET.lists():
        if "\x00" in key or any("\x00" in value for value in values):
            name = key.replace("\x00", "%00")
            return f"parameter {name}"
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


class JobStateFilter(admin.SimpleListFilter):
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
            "ready": Q(state=JobState.READY),
            "due": Q(state=JobState.READY, available_at__lte=now),
            "delayed": Q(state=JobState.READY, available_at__gt=now),
            "claimed": Q(state=JobState.CLAIMED),
            "lease_expired": Q(state=JobState.CLAIMED, vt__lt=now),
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
                Q(state=JobState.READY, attempts__gte=F("max_attempts") - 1)
                | Q(state=JobState.CLAIMED, attempts__gte=F("max_attempts")),
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

    # --- bad input: a clear 400, never a database error ----------------------------------------
    # Every view of the model goes through one of these four (the change view is
    # changeform_view); the overview calls _refuse_nul itself.

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        refused = self._refuse_nul(request) or self._refuse_bad_selection(request)
        return refused or super().changelist_view(request, extra_context)

    def changeform_view(
        self,
        request: HttpRequest,
        object_id: str | None = None,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        refused = self._refuse_nul(request)
        return refused or super().changeform_view(request, object_id, form_url, extra_context)

    def history_view(
        self, request: HttpRequest, object_id: str, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        refused = self._refuse_nul(request)
        return refused or super().history_view(request, object_id, extra_context)

    def delete_view(
        self, request: HttpRequest, object_id: str, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        refused = self._refuse_nul(request)
        return refused or super().delete_view(request, object_id, extra_context)

    def _refuse_nul(self, request: HttpRequest, back_url: str | None = None) -> HttpResponse | None:
        """A 400 page when the address has a NUL character, else None.

        PostgreSQL refuses NUL in text, so a filter, search or id holding one would fail in the
        database (a 500). Nothing can match it: say so, and link to the page without it.
        """
        where = _nul_in(request)
        if where is None:
            return None
        return self._bad_request(
            request,
            f"The address has a NUL character (%00) in {where}. PostgreSQL text cannot hold "
            "one, so no row can match it.",
            back_url,
        )

    def _refuse_bad_selection(self, request: HttpRequest) -> HttpResponse | None:
        """A 400 page when a posted row selection holds something that is no id of this model.

        Django would hand it to the database (``pk__in``) and fail there; a browser never
        sends one, a hand-made request may.
        """
        if request.method != "POST":
            return None
        for value in request.POST.getlist(ACTION_CHECKBOX_NAME):
            try:
                self.opts.pk.clean(value, None)
            except ValidationError:
                shown = _short(value.replace("\x00", "%00"), limit=40)
                return self._bad_request(
                    request, f"The selection holds {shown!r}, which is no row id.", None
                )
        return None

    def _bad_request(
        self, request: HttpRequest, problem: str, back_url: str | None
    ) -> HttpResponse:
        context = {
            **self.admin_site.each_context(request),
            "title": "Bad request",
            "opts": self.opts,
            "problem": problem,
            "back_url": back_url or self._changelist_url(),
        }
        return TemplateResponse(request, "admin/pg_queue/bad_request.html", context, status=400)

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
            ids = [_row_id(i) for i in raw.split(",") if i]
            if None in ids:
                raise PermissionDenied("malformed confirmation")
            return [i for i in ids if i is not None]
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
