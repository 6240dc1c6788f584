"""A job before it is written: ``JobSpec`` (what a caller asks for) and ``JobRow`` (the checked
row the producer writes).

``validate_spec`` is the one validation every entry point goes through (``enqueue``,
``Task.enqueue``, ``job``/``enqueue_many``, the worker's continuations): task defaults applied,
every option and value checked, the payload encoded. Input the database would refuse or change
is a ``ValueError`` (``PayloadError`` for values) naming the argument or option, before any SQL
runs, so a refusal never aborts the caller's transaction. Pure: no database access.
"""

from __future__ import annotations

import datetime as dt
import os
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from pg_queue.celery_compat import celery_max_attempts
from pg_queue.core.conf import queue_settings
from pg_queue.core.options import (
    NO_OPTIONS,
    EnqueueOptions,
    JobSpec,
    check_max_attempts,
    check_queue_name,
)
from pg_queue.core.payload import (
    ContinuationSpec,
    TaskPayload,
    check_text,
    coerce_json,
    dumps_payload,
    validate_delay,
)
from pg_queue.registry import celery_task, native_task

if TYPE_CHECKING:
    from pg_queue.tasks import Task


class JobRow(NamedTuple):
    """A validated row, ready for INSERT or COPY (a tuple: built once per job, kept cheap)."""

    task_id: uuid.UUID
    queue: str
    task_name: str
    payload: str
    priority: int
    delay: float
    eta: dt.datetime | None
    max_attempts: int
    tenant_key: str
    resource_key: str | None
    dedup_key: str | None
    resolved: Resolved


#: Column widths of pg_queue_message; checked here so a long name is a ValueError at the call,
#: not a DataError that aborts the caller's transaction.
QUEUE_NAME_MAX, TASK_NAME_MAX, TENANT_KEY_MAX, KEY_MAX = 200, 300, 200, 300


_V7_CLEAR = ~((0xF << 76) | (0x3 << 62))
_V7_SET = (0x7 << 76) | (0x2 << 62)
_new_uuid = object.__new__
_set_slot = object.__setattr__


def new_task_id() -> uuid.UUID:
    """A time-ordered UUID (RFC 9562 version 7: 48-bit Unix milliseconds, then 74 random bits).

    Ids that grow with time keep inserts into the unique ``task_id`` index and the result
    table's primary key at the right edge of the b-tree instead of at random pages: measured,
    COPY of 100,000 jobs went from ~11-15 to ~8 µs per row.
    """
    value = (time.time_ns() // 1_000_000) << 80 | int.from_bytes(os.urandom(10), "big")
    # uuid.UUID(int=...) re-checks the range and costs ~1 µs; ours is in range by construction.
    task_id = _new_uuid(uuid.UUID)
    _set_slot(task_id, "int", (value & _V7_CLEAR) | _V7_SET)
    _set_slot(task_id, "is_safe", uuid.SafeUUID.unknown)
    return task_id


def _check_length(label: str, value: str, limit: int) -> None:
    if len(value) > limit:
        raise ValueError(f"{label} is {len(value)} characters long; the limit is {limit}")


def _check_key(label: str, value: object, limit: int) -> None:
    """A text column: a string PostgreSQL can store, within the column's width."""
    _check_length(label, check_text(label, value), limit)


def _check_eta(eta: object) -> None:
    if not isinstance(eta, dt.datetime):
        raise ValueError(f"eta must be a timezone-aware datetime, got {type(eta).__name__} {eta!r}")
    if eta.utcoffset() is None:
        raise ValueError("eta must be timezone-aware (naive datetimes are ambiguous)")
    try:
        eta.astimezone(dt.UTC)
    except OverflowError:  # e.g. 9999-12-31 23:00-05:00 is in year 10000 in UTC
        raise ValueError(
            f"eta {eta.isoformat()} falls outside years 1..9999 in UTC, which a due time "
            "cannot represent"
        ) from None


def _check_continuation(role: str, spec: object) -> None:
    """Names the worker will enqueue after the job: refused now, not logged then."""
    if not isinstance(spec, ContinuationSpec):
        raise ValueError(f"{role} must be a ContinuationSpec or None, got {type(spec).__name__}")
    _check_key(f"{role} task name", spec.task_name, TASK_NAME_MAX)
    _check_length(f"{role} queue", check_queue_name(spec.queue, f"{role} queue"), QUEUE_NAME_MAX)


@dataclass(frozen=True, slots=True)
class Resolved:
    """Options of one (task name, options) pair after defaults and checks."""

    queue: str
    priority: int
    delay: float
    max_attempts: int
    #: The COPY text line of a job around its id and payload, formatted once per batch.
    copy_head: str
    copy_tail: str


def _copy_field(value: str) -> str:
    """``value`` escaped for COPY's text format (backslash, tab, newline, carriage return)."""
    if "\\" in value or "\t" in value or "\n" in value or "\r" in value:
        value = value.replace("\\", "\\\\").replace("\t", "\\t")
        return value.replace("\n", "\\n").replace("\r", "\\r")
    return value


def _resolve(task_name: Any, opts: EnqueueOptions) -> Resolved:
    """Apply task defaults and check every option; errors name the problem."""
    if not isinstance(task_name, str) or not task_name:
        raise ValueError(f"task name must be a non-empty string, got {task_name!r}")
    _check_key("task name", task_name, TASK_NAME_MAX)
    conf = queue_settings()
    known = native_task(task_name)
    queue = opts.queue or (known.queue if known else conf.default_queue)
    priority = opts.priority if opts.priority is not None else (known.priority if known else 0)
    max_attempts = (
        _default_max_attempts(task_name, known) if opts.max_attempts is None else opts.max_attempts
    )
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise ValueError(f"priority must be an int, got {type(priority).__name__} {priority!r}")
    if not -32768 <= priority <= 32767:
        raise ValueError(f"priority must fit a smallint (-32768..32767), got {priority}")
    check_max_attempts(max_attempts)
    delay = 0.0 if opts.delay is None else validate_delay(opts.delay, "delay")
    _check_length("queue", check_queue_name(queue), QUEUE_NAME_MAX)
    tenant_key = opts.tenant_key or ""
    _check_key("tenant_key", tenant_key, TENANT_KEY_MAX)
    for label, key in (("dedup_key", opts.dedup_key), ("resource_key", opts.resource_key)):
        if key is not None:
            if not isinstance(key, str) or not key:
                raise ValueError(f"{label} must be a non-empty string or None, got {key!r}")
            _check_key(label, key, KEY_MAX)
    if opts.eta is not None:
        if opts.delay is not None:
            raise ValueError("give delay or eta, not both")
        _check_eta(opts.eta)
    resource = "\\N" if opts.resource_key is None else _copy_field(opts.resource_key)
    tenant = _copy_field(tenant_key)
    return Resolved(
        queue,
        priority,
        delay,
        max_attempts,
        copy_head=f"\t{_copy_field(queue)}\t{_copy_field(task_name)}\t",
        copy_tail=f"\t{priority}\t{max_attempts}\t{tenant}\t{resource}\n",
    )


def validate_spec(
    spec: JobSpec, cache: dict[str | tuple[str, EnqueueOptions], Resolved] | None = None
) -> JobRow:
    """A checked, JSON-encoded row for ``spec``; ``cache`` shares option checks in a batch.

    Bulk enqueue calls this once per job, so the common case is kept to exact type checks
    (an ABC ``isinstance`` alone costs ~0.3 µs) and positional construction.
    """
    args, kwargs = spec.args, spec.kwargs
    if type(args) is not list and not isinstance(args, list | tuple):
        raise ValueError(
            f"args for {spec.task_name!r} must be a list or tuple, got {type(spec.args).__name__}"
        )
    if type(kwargs) is not dict and not isinstance(kwargs, Mapping):
        raise ValueError(
            f"kwargs for {spec.task_name!r} must be a dict, got {type(spec.kwargs).__name__}"
        )
    opts = spec.options
    if cache is None:
        resolved = _resolve(spec.task_name, opts)
    else:
        # Hashing an EnqueueOptions costs ~0.5 µs; the common "no options" case skips it.
        key = spec.task_name if opts is NO_OPTIONS else (spec.task_name, opts)
        try:
            found = cache.get(key)
        except TypeError:  # an unhashable name or option: _resolve says which is wrong
            found = _resolve(spec.task_name, opts)
        resolved = cache[key] = found if found is not None else _resolve(spec.task_name, opts)
    if spec.headers or spec.on_success or spec.on_error or spec.reply_key:
        payload = _full_payload(spec)
    else:  # the common case, without building a TaskPayload
        payload = {
            "args": coerce_json(args, "args"),
            "kwargs": coerce_json(kwargs, "kwargs") if kwargs else {},
        }
    if spec.task_id is None:
        task_id = new_task_id()
    elif isinstance(spec.task_id, uuid.UUID):
        task_id = spec.task_id
    else:
        raise ValueError(f"task_id must be a uuid.UUID or None, got {spec.task_id!r}")
    return JobRow(
        task_id,
        resolved.queue,
        spec.task_name,
        dumps_payload(payload),
        resolved.priority,
        resolved.delay,
        opts.eta,
        resolved.max_attempts,
        opts.tenant_key or "",
        opts.resource_key,
        opts.dedup_key,
        resolved,
    )


def _full_payload(spec: JobSpec) -> dict[str, Any]:
    """The payload object of a spec with headers, continuations or a reply key."""
    if not isinstance(spec.headers, Mapping):
        raise ValueError(f"headers must be a dict, got {type(spec.headers).__name__}")
    if spec.on_success is not None:
        _check_continuation("on_success", spec.on_success)
    if spec.on_error is not None:
        _check_continuation("on_error", spec.on_error)
    if spec.reply_key:
        check_text("reply_key", spec.reply_key)
    return TaskPayload(
        args=list(spec.args),
        kwargs=dict(spec.kwargs),
        headers=dict(spec.headers),
        on_success=spec.on_success,
        on_error=spec.on_error,
        reply_key=spec.reply_key,
    ).to_json()


def _default_max_attempts(task_name: str, known: Task | None) -> int:
    """A native task's own setting; a Celery task's ``max_retries + 1``; else the setting."""
    if known is not None:
        return known.max_attempts
    celery = celery_task(task_name)
    if celery is not None:
        return celery_max_attempts(celery)
    return queue_settings().max_attempts
