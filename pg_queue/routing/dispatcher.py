"""RoutingDispatcher: per call, one flag decides whether work rides Celery or Postgres.

Three call shapes, the same on both transports:

- ``dispatch(...)`` blocks for the result and never raises: enqueue failure, task failure,
  timeout and malformed results all come back as ``DispatchResult(ok=False, error=...)``,
  each logged with the task id;
- ``dispatch_async(...)`` returns a ``DispatchHandle`` (task id, status, wait), readable from any
  thread (``celery_results`` explains how, with Celery's ``rpc://`` backend);
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
from dataclasses import dataclass, field
from typing import Any

from django.db import IntegrityError, connections, transaction

from pg_queue import results
from pg_queue.core.conf import queue_settings
from pg_queue.core.status import JobStatus
from pg_queue.jobspec import new_task_id
from pg_queue.models import RoutingPin, Transport
from pg_queue.producer import enqueue_spec, job
from pg_queue.results import armed_wait
from pg_queue.routing.celery_results import (
    CeleryReply,
    ReplyTimeout,
    reply_queue,
    uses_rpc,
)
from pg_queue.routing.flags import FlagDecision, use_postgres
from pg_queue.routing.group_dispatch import (
    GroupDispatchHandle,
    send_group,
    signature_to_continuation,
)

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
    """A dispatched call on either transport; ``status`` and ``wait`` work from any thread.

    A Celery handle reads through its ``CeleryReply`` (``celery_results``), shared by every
    copy of the handle: with ``rpc://`` the call's own reply queue, else the result store. A
    Celery handle built by hand (no reply given) reads the same reply queue by task id, so it
    works only for a call the dispatcher sent whose result nobody has read yet.
    """

    task_id: str
    transport: str
    _celery_app: Any = None
    using: str = "default"
    _celery_reply: CeleryReply | None = field(default=None, kw_only=True)

    def _reply(self) -> CeleryReply:
        if self._celery_reply is not None:
            return self._celery_reply
        return CeleryReply(self._celery_app, self.task_id)

    def status(self) -> str:
        """queued | running | succeeded | failed | cancelled | unknown (never blocks for long)."""
        if self.transport == POSTGRES:
            return results.JobHandle(uuid.UUID(self.task_id), using=self.using).status()
        return _CELERY_STATUS.get(self._reply().state(), JobStatus.UNKNOWN)

    def wait(self, timeout: float) -> DispatchResult:
        """Block up to ``timeout`` seconds (plus one query or broker round trip); never raises."""
        if self.transport == POSTGRES:
            return _wait_postgres(self.task_id, timeout, self.using)
        return _wait_celery(self._reply(), timeout)


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


def _wait_celery(reply: CeleryReply, timeout: float) -> DispatchResult:
    task_id = reply.task_id
    try:
        outcome = reply.wait(timeout)
    except ReplyTimeout:
        error = f"TimeoutError: no result within {timeout}s"
        logger.warning("dispatch failed task_id=%s transport=celery error=%s", task_id, error)
        return DispatchResult.failure(task_id, CELERY, error)
    except Exception as exc:  # ReplyUnavailable, broker or backend errors
        error = f"{type(exc).__name__}: {exc}"
        logger.warning("dispatch failed task_id=%s transport=celery error=%s", task_id, error)
        return DispatchResult.failure(task_id, CELERY, error)
    value, state = outcome.result, outcome.state
    if state == "SUCCESS":
        return DispatchResult(ok=True, task_id=task_id, transport=CELERY, result=value)
    error = f"{type(value).__name__}: {value}" if isinstance(value, BaseException) else str(value)
    logger.warning(
        "dispatch failed task_id=%s transport=celery state=%s error=%s", task_id, state, error
    )
    return DispatchResult.failure(task_id, CELERY, error or f"task {state}")


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
        reply: CeleryReply | None = None
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
            reply = self._send_celery(task_name, args, kwargs, queue, org_id, on_success, on_error)
            sent_id = reply.task_id
        logger.info(
            "dispatched task_id=%s task=%s queue=%s transport=%s org_id=%s",
            sent_id,
            task_name,
            queue,
            transport,
            org_id,
        )
        return DispatchHandle(
            sent_id,
            transport,
            self.celery_app,
            self.using,
            _celery_reply=reply,
        )

    def _send_celery(
        self,
        task_name: str,
        args: list[Any],
        kwargs: dict[str, Any],
        queue: str,
        org_id: str,
        on_success: Any,
        on_error: Any,
    ) -> CeleryReply:
        """``send_task``; with ``rpc://`` the call gets a reply queue of its own, declared first
        (Celery's per-thread reply queue can only be read by the sending thread)."""
        app = self.celery_app
        options: dict[str, Any] = {
            "args": args,
            "kwargs": kwargs,
            "queue": queue,
            "link": on_success,
            "link_error": on_error,
            "headers": {"org_id": org_id} if org_id else None,
        }
        if not uses_rpc(app):
            sent = app.send_task(task_name, **options)
            return CeleryReply(app, str(sent.id), rpc=False)
        task_id = str(uuid.uuid4())
        replies = reply_queue(task_id, queue_settings().result_ttl_seconds)
        with app.producer_or_acquire() as producer:
            replies(producer.channel).declare()
            app.send_task(
                task_name, task_id=task_id, reply_to=replies.name, producer=producer, **options
            )
        return CeleryReply(app, task_id, rpc=True)

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
        """Fan out ``signatures`` (Celery signatures) and fan in to ``on_success`` once; see
        ``pg_queue.routing.group_dispatch``."""
        return send_group(
            self,
            signatures,
            on_success=on_success,
            on_error=on_error,
            org_id=org_id,
            execution_id=execution_id,
        )
