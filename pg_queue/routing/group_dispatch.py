"""A group dispatched through the routing dispatcher: one flag decision (or the execution's
pin) for the whole group, so a group is never split across transports.

On Celery it is ``chord(signatures, on_success)`` with ``on_error`` linked to the chord's body
(Celery's own semantics, unchanged; it needs a result backend that supports chords). On
Postgres it is a pg_queue group: ``on_success(results, *own_args)`` with the results in
signature order, or ``on_error(group_id, failures, *own_args)``, exactly once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from pg_queue.core.options import EnqueueOptions, JobSpec
from pg_queue.core.payload import ContinuationSpec, coerce_json
from pg_queue.jobspec import QUEUE_NAME_MAX, TASK_NAME_MAX
from pg_queue.models import Transport

if TYPE_CHECKING:
    from pg_queue.routing.dispatcher import RoutingDispatcher

logger = logging.getLogger("pg_queue.routing")

POSTGRES = Transport.POSTGRES.value


def signature_to_continuation(signature: Any, role: str) -> ContinuationSpec:
    """A Celery signature as a continuation spec; ``ValueError`` names what is missing."""
    if signature is None:
        raise ValueError(f"{role} is None")
    task_name = signature.get("task") if hasattr(signature, "get") else None
    options = (signature.get("options") if hasattr(signature, "get") else None) or {}
    queue = options.get("queue")
    if not task_name:
        raise ValueError(f"{role} signature has no task name")
    if not queue:
        raise ValueError(
            f"{role} signature {task_name!r} has no queue: set one, e.g. sig.set(queue='...')"
        )
    # Checked here, not when the worker enqueues the continuation after the job: by then a
    # name too long for its column could only be logged, and the callback would be lost.
    for label, value, limit in (
        ("task name", str(task_name), TASK_NAME_MAX),
        ("queue", str(queue), QUEUE_NAME_MAX),
    ):
        if len(value) > limit:
            raise ValueError(
                f"{role} signature {label} is {len(value)} characters long; the limit is {limit}"
            )
    args = list(signature.get("args") or ())
    kwargs = dict(signature.get("kwargs") or {})
    coerce_json(args, f"{role}.args")
    coerce_json(kwargs, f"{role}.kwargs")
    return ContinuationSpec(task_name=str(task_name), queue=str(queue), args=args, kwargs=kwargs)


def send_group(
    dispatcher: RoutingDispatcher,
    signatures: list[Any] | tuple[Any, ...],
    *,
    on_success: Any,
    on_error: Any = None,
    org_id: str = "",
    execution_id: str = "",
) -> GroupDispatchHandle:
    """``RoutingDispatcher.dispatch_group``: fan out ``signatures`` (Celery signatures) and fan
    in to ``on_success`` once, on the transport the flag gives the first child."""
    sigs = list(signatures) if isinstance(signatures, list | tuple) else None
    if sigs is None:
        raise ValueError(
            f"signatures must be a list or tuple of signatures, got {type(signatures).__name__}"
        )
    children = [signature_to_continuation(s, f"signatures[{i}]") for i, s in enumerate(sigs)]
    success = signature_to_continuation(on_success, "on_success")
    failure = signature_to_continuation(on_error, "on_error") if on_error is not None else None
    first = children[0] if children else success
    transport = dispatcher._transport(first.task_name, first.queue, org_id, execution_id)
    if transport == POSTGRES:
        from pg_queue.workflows.groups import group

        def spec(c: ContinuationSpec) -> JobSpec:
            options = EnqueueOptions(queue=c.queue, tenant_key=org_id)
            return JobSpec(task_name=c.task_name, args=c.args, kwargs=c.kwargs, options=options)

        handle = group(
            [spec(c) for c in children],
            on_success=spec(success),
            on_error=spec(failure) if failure is not None else None,
        ).enqueue(using=dispatcher.using)
        group_id, native = str(handle.group_id), cast(Any, handle)
    else:
        from celery import chord

        body = on_success.clone()
        if on_error is not None:
            body.link_error(on_error)
        # Bound to this dispatcher's app: unbound signatures would use current_app's backend.
        sent = chord(sigs, body, app=dispatcher.celery_app).apply_async()
        header = cast(Any, sent.parent)  # the GroupResult of the children
        group_id, native = str(header.id), header
    logger.info(
        "dispatched group group_id=%s children=%d transport=%s org_id=%s",
        group_id,
        len(children),
        transport,
        org_id,
    )
    return GroupDispatchHandle(group_id, transport, native)


@dataclass(frozen=True, slots=True)
class GroupDispatchResult:
    """What ``GroupDispatchHandle.wait`` returns: the children's results in order, or why not."""

    ok: bool
    group_id: str
    transport: str
    results: list[Any]
    error: str = ""


@dataclass(frozen=True, slots=True)
class GroupDispatchHandle:
    """A dispatched group on either transport: a pg_queue ``GroupHandle`` or a Celery
    ``GroupResult`` (the chord's header)."""

    group_id: str
    transport: str
    native: Any

    def wait(self, timeout: float) -> GroupDispatchResult:
        """Until every child finished or ``timeout`` passes; never raises."""
        try:
            if self.transport == POSTGRES:
                outcome = self.native.wait(timeout)
                error = "; ".join(f"{e['task_id']}: {e['error']}" for e in outcome.errors)
                if outcome.status == "timeout":
                    error = f"TimeoutError: group did not end within {timeout}s"
                return GroupDispatchResult(
                    outcome.ok, self.group_id, self.transport, outcome.results, error
                )
            values = self.native.get(timeout=timeout, propagate=False)
        except Exception as exc:
            name = type(exc).__name__
            logger.warning(
                "group wait failed group_id=%s transport=%s error=%s: %s",
                self.group_id,
                self.transport,
                name,
                exc,
            )
            return GroupDispatchResult(False, self.group_id, self.transport, [], f"{name}: {exc}")
        errors = [f"{type(v).__name__}: {v}" for v in values if isinstance(v, BaseException)]
        return GroupDispatchResult(
            not errors, self.group_id, self.transport, list(values), "; ".join(errors)
        )
