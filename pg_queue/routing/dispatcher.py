"""RoutingDispatcher: per call, one flag decides whether work rides Celery or Postgres.

Three call shapes, the same on both transports:

- ``dispatch(...)`` blocks for the result and never raises: enqueue failure, task failure,
  timeout and malformed results all come back as ``DispatchResult(ok=False, error=...)``,
  each logged with the task id;
- ``dispatch_async(...)`` returns a ``DispatchHandle`` (task id, status, wait);
- ``dispatch_with_callback(..., on_success=sig, on_error=sig)`` takes Celery signatures: on
  Celery they are ``link`` / ``link_error`` unchanged; on Postgres they become continuation specs;
- ``dispatch_group([sig, ...], on_success=sig, on_error=sig)`` fans out and in: a Celery
  ``chord`` or a pg_queue group, decided once for the whole group.

Arguments that can never work (a signature with no task name or queue, no callback at all, a
timeout longer than result retention) are ``ValueError`` at the call, on both transports, so
flipping the flag never changes which calls are valid.
"""

from __future__ import annotations

import logging
import uuid
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, cast

from django.db import IntegrityError, connections, transaction

from pg_queue import results
from pg_queue.core.conf import queue_settings
from pg_queue.core.options import EnqueueOptions, JobSpec
from pg_queue.core.payload import ContinuationSpec, coerce_json
from pg_queue.core.status import JobStatus
from pg_queue.jobspec import QUEUE_NAME_MAX, TASK_NAME_MAX, new_task_id
from pg_queue.models import RoutingPin, Transport
from pg_queue.producer import enqueue_spec, job
from pg_queue.results import armed_wait
from pg_queue.routing.flags import FlagDecision, use_postgres

logger = logging.getLogger("pg_queue.routing")

POSTGRES, CELERY = Transport.POSTGRES.value, Transport.CELERY.value

#: Celery states mapped onto pg_queue's statuses.
_CELERY_STATUS = {
    "PENDING": JobStatus.QUEUED,
    "RECEIVED": JobStatus.QUEUED,
    "STARTED": JobStatus.RUNNING,
    "RETRY": JobStatus.QUEUED,
    "SUCCESS": JobStatus.SUCCEEDED,
    "FAILURE": JobStatus.FAILED,
    "REVOKED": JobStatus.CANCELLED,
}


@dataclass(frozen=True, kw_only=True, slots=True)
class DispatchResult:
    """What ``dispatch`` returns; ``ok`` False carries a human-readable ``error``."""

    ok: bool
    task_id: str
    transport: str
    result: Any = None
    error: str = ""

    @classmethod
    def failure(cls, task_id: str, transport: str, error: str) -> DispatchResult:
        return cls(ok=False, task_id=task_id, transport=transport, error=error)


@dataclass(frozen=True, slots=True)
class DispatchHandle:
    """A dispatched call on either transport."""

    task_id: str
    transport: str
    _celery_app: Any = None
    using: str = "default"

    def status(self) -> str:
        """queued | running | succeeded | failed | cancelled | unknown."""
        if self.transport == POSTGRES:
            return results.JobHandle(uuid.UUID(self.task_id), using=self.using).status()
        state = self._celery_app.AsyncResult(self.task_id).state
        return _CELERY_STATUS.get(state, JobStatus.UNKNOWN)

    def wait(self, timeout: float) -> DispatchResult:
        """Block up to ``timeout`` seconds; never raises."""
        if self.transport == POSTGRES:
            return _wait_postgres(self.task_id, timeout, self.using)
        return _wait_celery(self._celery_app, self.task_id, timeout)


def _wait_postgres(
    task_id: str, timeout: float, using: str, armed: results.ArmedWait | None = None
) -> DispatchResult:
    try:
        if armed is not None and str(armed.handle.task_id) == task_id:
            outcome = armed.wait(timeout)
        else:  # not armed, or a live duplicate (dedup) answers instead
            outcome = results.JobHandle(uuid.UUID(task_id), using=using).wait(timeout)
    except Exception as exc:
        logger.exception("wait failed task_id=%s transport=postgres", task_id)
        return DispatchResult.failure(task_id, POSTGRES, f"{type(exc).__name__}: {exc}")
    if outcome.ok:
        return DispatchResult(ok=True, task_id=task_id, transport=POSTGRES, result=outcome.result)
    if outcome.status == JobStatus.SUCCEEDED:  # but its result could not be decoded
        logger.error("dispatch result unreadable task_id=%s error=%s", task_id, outcome.error)
        return DispatchResult.failure(task_id, POSTGRES, outcome.error)
    if outcome.status in (JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.TIMEOUT):
        error = outcome.error or f"task {outcome.status}"
        if outcome.status == JobStatus.TIMEOUT:
            error = f"TimeoutError: {error}"
        logger.warning(
            "dispatch failed task_id=%s transport=postgres status=%s error=%s",
            task_id,
            outcome.status,
            error,
        )
        return DispatchResult.failure(task_id, POSTGRES, error)
    logger.error("malformed result task_id=%s status=%r", task_id, outcome.status)
    return DispatchResult.failure(
        task_id, POSTGRES, f"malformed result: unexpected status {outcome.status!r}"
    )


def _wait_celery(app: Any, task_id: str, timeout: float) -> DispatchResult:
    try:
        async_result = app.AsyncResult(task_id)
        value = async_result.get(timeout=timeout, propagate=False)
        state = async_result.state
    except Exception as exc:  # TimeoutError, broker/backend errors
        name = type(exc).__name__
        error = f"TimeoutError: no result within {timeout}s" if "Timeout" in name else str(exc)
        logger.warning("dispatch failed task_id=%s transport=celery error=%s", task_id, error)
        return DispatchResult.failure(task_id, CELERY, error or name)
    if state == "SUCCESS":
        return DispatchResult(ok=True, task_id=task_id, transport=CELERY, result=value)
    error = f"{type(value).__name__}: {value}" if isinstance(value, BaseException) else str(value)
    logger.warning(
        "dispatch failed task_id=%s transport=celery state=%s error=%s", task_id, state, error
    )
    return DispatchResult.failure(task_id, CELERY, error or f"task {state}")


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


class RoutingDispatcher:
    """Wraps a Celery app; every call reads the flag (or an execution's pin) first."""

    def __init__(self, celery_app: Any, *, using: str = "default") -> None:
        self.celery_app = celery_app
        self.using = using

    # --- deciding -----------------------------------------------------------------------------

    def decide(self, *, task_name: str, queue: str, org_id: str = "") -> FlagDecision:
        return use_postgres(task_name=task_name, queue=queue, org_id=org_id)

    def pin(
        self, execution_id: str, *, task_name: str = "", queue: str = "", org_id: str = ""
    ) -> str:
        """The transport of ``execution_id``: decided by the flag once, then fixed.

        Every later call with the same execution id (any process) gets the same answer, so a
        multi-step execution never spans both transports while the flag moves. If the pin
        cannot be read or written, the answer is Celery (fail closed) and nothing is pinned.
        The kill switch wins over a pin: while it is on the answer is Celery; a pin to
        Postgres is kept and applies again once the switch is back on.
        """
        transport = self._pinned(execution_id, task_name, queue, org_id)
        if transport == POSTGRES and not queue_settings().transport_enabled:
            logger.warning(
                "kill switch on: pinned execution routed to Celery execution_id=%s", execution_id
            )
            return CELERY
        return transport

    def _pinned(self, execution_id: str, task_name: str, queue: str, org_id: str) -> str:
        try:
            existing = RoutingPin.objects.using(self.using).filter(execution_id=execution_id)
            row = existing.values_list("transport", flat=True).first()
            if row is not None:
                return str(row)
            decision = self.decide(task_name=task_name, queue=queue, org_id=org_id)
            transport = POSTGRES if decision.use_postgres else CELERY
            try:
                with transaction.atomic(using=self.using):
                    RoutingPin.objects.using(self.using).create(
                        execution_id=execution_id, transport=transport, reason=decision.reason
                    )
            except IntegrityError:  # another process pinned it first: theirs wins
                won = existing.values_list("transport", flat=True).first()
                return str(won) if won is not None else CELERY
            return transport
        except Exception:
            logger.exception("pin failed execution_id=%s; routing to Celery", execution_id)
            return CELERY

    def _transport(self, task_name: str, queue: str, org_id: str, execution_id: str) -> str:
        if execution_id:
            return self.pin(execution_id, task_name=task_name, queue=queue, org_id=org_id)
        decision = self.decide(task_name=task_name, queue=queue, org_id=org_id)
        return POSTGRES if decision.use_postgres else CELERY

    # --- sending ------------------------------------------------------------------------------

    def _send(
        self,
        transport: str,
        task_name: str,
        args: list[Any],
        kwargs: dict[str, Any],
        queue: str,
        org_id: str,
        on_success: Any = None,
        on_error: Any = None,
        task_id: uuid.UUID | None = None,
    ) -> DispatchHandle:
        if transport == POSTGRES:
            spec = job(
                task_name,
                args,
                kwargs,
                queue=queue,
                tenant_key=org_id,
                on_success=signature_to_continuation(on_success, "on_success")
                if on_success is not None
                else None,
                on_error=signature_to_continuation(on_error, "on_error")
                if on_error is not None
                else None,
                task_id=task_id,
            )
            # The id is new_task_id()'s or None (fresh either way): no query to check it.
            handle = enqueue_spec(spec, self.using, check_task_id=False)
            sent_id = str(handle.task_id)
        else:
            sent = self.celery_app.send_task(
                task_name,
                args=args,
                kwargs=kwargs,
                queue=queue,
                link=on_success,
                link_error=on_error,
                headers={"org_id": org_id} if org_id else None,
            )
            sent_id = str(sent.id)
        logger.info(
            "dispatched task_id=%s task=%s queue=%s transport=%s org_id=%s",
            sent_id,
            task_name,
            queue,
            transport,
            org_id,
        )
        return DispatchHandle(sent_id, transport, self.celery_app, self.using)

    @staticmethod
    def _check_args(args: Any, kwargs: Any) -> tuple[list[Any], dict[str, Any]]:
        if args is not None and not isinstance(args, list | tuple):
            raise ValueError(f"args must be a list or tuple, got {type(args).__name__}")
        if kwargs is not None and not isinstance(kwargs, dict):
            raise ValueError(f"kwargs must be a dict, got {type(kwargs).__name__}")
        return list(args or ()), dict(kwargs or {})

    def dispatch(
        self,
        task_name: str,
        args: list[Any] | tuple[Any, ...] | None = None,
        kwargs: dict[str, Any] | None = None,
        *,
        queue: str,
        timeout: float,
        org_id: str = "",
        execution_id: str = "",
    ) -> DispatchResult:
        """Run the task and block for its result; never raises for failures or timeouts."""
        args_list, kwargs_dict = self._check_args(args, kwargs)
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
        retention = queue_settings().result_ttl_seconds
        if timeout > retention:
            raise ValueError(
                f"timeout {timeout}s exceeds result retention RESULT_TTL_SECONDS={retention}s: "
                "the result could expire before the caller reads it"
            )
        transport = self._transport(task_name, queue, org_id, execution_id)
        if transport == POSTGRES and connections[self.using].in_atomic_block:
            error = (
                "dispatch() inside transaction.atomic(): the job would not be visible to workers "
                "until commit, so a blocking wait cannot succeed; dispatch after the block"
            )
            logger.error("dispatch refused task=%s queue=%s: %s", task_name, queue, error)
            return DispatchResult.failure("", transport, error)
        # Postgres: the result wake-up is armed before the job exists, so the wait starts
        # without a status query (request-reply's critical path).
        task_id = new_task_id() if transport == POSTGRES else None
        with armed_wait(task_id, self.using) if task_id else nullcontext() as armed:
            try:
                handle = self._send(
                    transport, task_name, args_list, kwargs_dict, queue, org_id, task_id=task_id
                )
            except Exception as exc:
                logger.exception(
                    "dispatch enqueue failed task=%s queue=%s transport=%s",
                    task_name,
                    queue,
                    transport,
                )
                error = f"enqueue failed: {type(exc).__name__}: {exc}"
                return DispatchResult.failure("", transport, error)
            if armed is not None:
                return _wait_postgres(handle.task_id, timeout, self.using, armed)
            return handle.wait(timeout)

    def dispatch_async(
        self,
        task_name: str,
        args: list[Any] | tuple[Any, ...] | None = None,
        kwargs: dict[str, Any] | None = None,
        *,
        queue: str,
        org_id: str = "",
        execution_id: str = "",
    ) -> DispatchHandle:
        """Send the task and return its handle (enqueue errors propagate: nothing was sent)."""
        args_list, kwargs_dict = self._check_args(args, kwargs)
        transport = self._transport(task_name, queue, org_id, execution_id)
        return self._send(transport, task_name, args_list, kwargs_dict, queue, org_id)

    def dispatch_with_callback(
        self,
        task_name: str,
        args: list[Any] | tuple[Any, ...] | None = None,
        kwargs: dict[str, Any] | None = None,
        *,
        queue: str,
        on_success: Any = None,
        on_error: Any = None,
        org_id: str = "",
        execution_id: str = "",
    ) -> DispatchHandle:
        """Send the task with callbacks (Celery signatures); returns its handle."""
        if on_success is None and on_error is None:
            raise ValueError(
                "dispatch_with_callback needs on_success and/or on_error; "
                "use dispatch_async for a call without callbacks"
            )
        # Validate on both transports, so the flag never changes which calls are valid.
        for sig, role in ((on_success, "on_success"), (on_error, "on_error")):
            if sig is not None:
                signature_to_continuation(sig, role)
        args_list, kwargs_dict = self._check_args(args, kwargs)
        transport = self._transport(task_name, queue, org_id, execution_id)
        return self._send(
            transport, task_name, args_list, kwargs_dict, queue, org_id, on_success, on_error
        )

    def dispatch_group(
        self,
        signatures: list[Any] | tuple[Any, ...],
        *,
        on_success: Any,
        on_error: Any = None,
        org_id: str = "",
        execution_id: str = "",
    ) -> GroupDispatchHandle:
        """Fan out ``signatures`` (Celery signatures) and fan in to ``on_success`` once.

        One flag decision (or the execution's pin) for the whole group, so a group is never
        split across transports. On Celery this is ``chord(signatures, on_success)`` with
        ``on_error`` linked to the chord's body (Celery's own semantics, unchanged; it needs a
        result backend that supports chords). On Postgres it is a pg_queue group:
        ``on_success(results, *own_args)`` with the results in signature order, or
        ``on_error(group_id, failures, *own_args)``, exactly once.
        """
        sigs = list(signatures) if isinstance(signatures, list | tuple) else None
        if sigs is None:
            raise ValueError(
                f"signatures must be a list or tuple of signatures, got {type(signatures).__name__}"
            )
        children = [signature_to_continuation(s, f"signatures[{i}]") for i, s in enumerate(sigs)]
        success = signature_to_continuation(on_success, "on_success")
        failure = signature_to_continuation(on_error, "on_error") if on_error is not None else None
        first = children[0] if children else success
        transport = self._transport(first.task_name, first.queue, org_id, execution_id)
        if transport == POSTGRES:
            from pg_queue.workflows.groups import group

            def spec(c: ContinuationSpec) -> JobSpec:
                options = EnqueueOptions(queue=c.queue, tenant_key=org_id)
                return JobSpec(task_name=c.task_name, args=c.args, kwargs=c.kwargs, options=options)

            handle = group(
                [spec(c) for c in children],
                on_success=spec(success),
                on_error=spec(failure) if failure is not None else None,
            ).enqueue(using=self.using)
            group_id, native = str(handle.group_id), cast(Any, handle)
        else:
            from celery import chord

            body = on_success.clone()
            if on_error is not None:
                body.link_error(on_error)
            # Bound to this dispatcher's app: unbound signatures would use current_app's backend.
            sent = chord(sigs, body, app=self.celery_app).apply_async()
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
