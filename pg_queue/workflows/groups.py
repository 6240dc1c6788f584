"""Groups (fan-out / fan-in) and chains (one job after another), on the claim/lease/ack core.

``group([...], on_success=cb.job(), on_error=eb.job()).enqueue()`` queues every child in the
caller's transaction with a ``pg_queue_group`` row; when the last child finishes (in that
child's finish transaction, see ``progress``) exactly one callback fires: ``on_success`` with the
children's results in job order (``cb(results, *own_args)``), or, if any child failed for good
(dead-lettered, cancelled, lost its last lease, purged), ``on_error`` with the group id and the
failures (``eb(group_id, failures, *own_args)``). An empty group succeeds at once with ``[]``.

``chain([a.job(), b.job(), c.job()], on_error=eb.job()).enqueue()`` queues the first step;
each step that succeeds queues the next with its result first (``b(result_of_a, *own_args)``);
a step that fails for good ends the chain: the later steps never run (their outcome is
``cancelled``) and ``on_error`` fires once with the chain id and the failure.

Handles never raise from ``wait()``: a timeout is an outcome with status ``timeout``.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from django.db import connections, transaction

from pg_queue.core.conf import NOTIFY_CHANNEL, queue_settings, wake_payload
from pg_queue.core.options import EnqueueOptions, JobSpec
from pg_queue.core.payload import ContinuationSpec, coerce_json, loads
from pg_queue.core.status import JobStatus
from pg_queue.db import sql, sql_workflows
from pg_queue.jobspec import new_task_id
from pg_queue.producer import bulk_params
from pg_queue.registry import native_task
from pg_queue.results import JobHandle, JobOutcome, wait_until
from pg_queue.signals import chain_finished, group_finished
from pg_queue.workflows.progress import DjangoDb, Finished, GroupEnded, record

logger = logging.getLogger("pg_queue.workflows")

#: Group statuses a handle reports ("timeout" only from a wait).
RUNNING, SUCCEEDED, FAILED, TIMEOUT = "running", "succeeded", "failed", "timeout"


@dataclass(frozen=True, kw_only=True, slots=True)
class GroupOutcome:
    """What ``GroupHandle.wait`` returns. Never raised."""

    group_id: uuid.UUID
    status: str  # succeeded | failed | running (status() only) | timeout
    results: list[Any] = field(default_factory=list)  # children's results, in job order
    errors: list[dict[str, str]] = field(default_factory=list)  # failed children: task id, error

    @property
    def ok(self) -> bool:
        return self.status == SUCCEEDED


def _continuation(spec: JobSpec | None, role: str) -> ContinuationSpec | None:
    """A callback given as a job spec (``cb.job(own args)``), as the group stores it."""
    if spec is None:
        return None
    if not isinstance(spec, JobSpec):
        raise ValueError(f"{role} must be a job spec (task.job(...)), got {type(spec).__name__}")
    known = native_task(spec.task_name)
    queue = spec.options.queue or (known.queue if known else queue_settings().default_queue)
    return ContinuationSpec(
        task_name=spec.task_name, queue=queue, args=list(spec.args), kwargs=dict(spec.kwargs)
    )


def _json(spec: ContinuationSpec | None) -> str | None:
    return None if spec is None else json.dumps(spec.to_json())


def _check_jobs(jobs: Sequence[JobSpec], what: str) -> list[JobSpec]:
    jobs = list(jobs)
    for i, job in enumerate(jobs):
        if not isinstance(job, JobSpec):
            raise ValueError(f"{what}[{i}] must be a job spec (task.job(...)), got {job!r}")
        if job.options.dedup_key is not None:
            raise ValueError(f"{what}[{i}]: a job of a {what} cannot carry a dedup_key")
        if job.options.eta is not None:
            raise ValueError(f"{what}[{i}]: give a delay, not an eta, to a job of a {what}")
    return jobs


def _insert(using: str, params: dict[str, Any]) -> None:
    with connections[using].cursor() as cursor:
        cursor.execute(sql.insert_many(params), params)
        if queue_settings().notify:
            wakes = map(
                wake_payload, params["queues"], params["tenant_keys"], params["resource_keys"]
            )
            for wake in sorted(set(wakes)):
                cursor.execute(sql.NOTIFY, {"channel": NOTIFY_CHANNEL, "queue": wake})


def _insert_group(using: str, **row: Any) -> None:
    with connections[using].cursor() as cursor:
        cursor.execute(sql_workflows.GROUP_INSERT, row)


@dataclass(frozen=True)
class Group:
    """Jobs that run in parallel, then one callback. ``enqueue()`` queues them."""

    jobs: list[JobSpec]
    on_success: JobSpec | None = None
    on_error: JobSpec | None = None

    def enqueue(self, *, using: str = "default") -> GroupHandle:
        """Queue every child and the group row in one transaction (the caller's, if open)."""
        jobs = _check_jobs(self.jobs, "group")
        on_success = _continuation(self.on_success, "on_success")
        on_error = _continuation(self.on_error, "on_error")
        group_id = new_task_id()
        params = bulk_params(jobs, [(group_id, i) for i in range(len(jobs))])
        with transaction.atomic(using=using):
            _insert_group(
                using,
                group_id=group_id,
                kind="group",
                total=len(jobs),
                status=RUNNING if jobs else SUCCEEDED,
                on_success=_json(on_success),
                on_error=_json(on_error),
                steps="[]",
            )
            if jobs:
                _insert(using, params)
            elif on_success is not None:  # an empty group succeeds at once, with []
                params = bulk_params(
                    [
                        JobSpec(
                            task_name=on_success.task_name,
                            args=[[], *on_success.args],
                            kwargs=on_success.kwargs,
                            options=EnqueueOptions(queue=on_success.queue),
                        )
                    ]
                )
                _insert(using, params)
        return GroupHandle(group_id, list(params["task_ids"]) if jobs else [], using)


def group(
    jobs: Sequence[JobSpec], *, on_success: JobSpec | None = None, on_error: JobSpec | None = None
) -> Group:
    """A group of ``jobs`` (``task.job(...)`` specs) with its callbacks; see the module doc."""
    return Group(list(jobs), on_success, on_error)


@dataclass(frozen=True, slots=True)
class GroupHandle:
    """A queued group: its id, its children's task ids, and ways to ask how it went."""

    group_id: uuid.UUID
    task_ids: list[uuid.UUID]
    using: str = "default"

    def status(self) -> str:
        """running | succeeded | failed | unknown (one query)."""
        row = _state(self.group_id, self.using)
        return JobStatus.UNKNOWN if row is None else row[1]

    def wait(self, timeout: float) -> GroupOutcome:
        """Until the group ends or ``timeout`` passes; never raises for either."""
        ended = wait_until(str(self.group_id), lambda: self._ended(), timeout, self.using)
        return ended or GroupOutcome(group_id=self.group_id, status=TIMEOUT)

    def _ended(self) -> GroupOutcome | None:
        row = _state(self.group_id, self.using)
        if row is None or row[1] == RUNNING:
            return None
        with connections[self.using].cursor() as cursor:
            cursor.execute(sql_workflows.GROUP_RESULTS, {"group_id": self.group_id})
            results = [None if text is None else loads(text) for _i, text in cursor.fetchall()]
            cursor.execute(sql_workflows.GROUP_FAILURES, {"group_id": self.group_id})
            errors = [{"task_id": str(t), "error": e} for t, e in cursor.fetchall()]
        return GroupOutcome(group_id=self.group_id, status=row[1], results=results, errors=errors)


def _state(group_id: uuid.UUID, using: str) -> tuple[Any, ...] | None:
    with connections[using].cursor() as cursor:
        cursor.execute(sql_workflows.GROUP_STATE, {"group_id": group_id})
        row = cursor.fetchone()
    return None if row is None else tuple(row)


@dataclass(frozen=True)
class Chain:
    """Jobs that run one after another, each given the previous result first."""

    steps: list[JobSpec]
    on_error: JobSpec | None = None

    def enqueue(self, *, using: str = "default") -> ChainHandle:
        """Queue the first step and the chain row in one transaction; the rest wait there."""
        steps = _check_jobs(self.steps, "chain")
        if not steps:
            raise ValueError("a chain needs at least one step")
        on_error = _continuation(self.on_error, "on_error")
        chain_id = new_task_id()
        task_ids = [step.task_id or new_task_id() for step in steps]
        steps = [
            step._replace(task_id=task_id) for step, task_id in zip(steps, task_ids, strict=True)
        ]
        # Every step is checked now (a later step's problem is an error here, not a lost chain),
        # and stored as it will be queued: arguments as JSON, options by name.
        bulk_params(steps)
        stored = [
            {
                "task_name": step.task_name,
                "args": coerce_json(list(step.args), f"chain[{i}].args"),
                "kwargs": coerce_json(dict(step.kwargs), f"chain[{i}].kwargs"),
                "options": _options(step),
                "task_id": str(step.task_id),
            }
            for i, step in enumerate(steps)
        ]
        with transaction.atomic(using=using):
            _insert_group(
                using,
                group_id=chain_id,
                kind="chain",
                total=len(steps),
                status=RUNNING,
                on_success=None,
                on_error=_json(on_error),
                steps=json.dumps(stored),
            )
            _insert(using, bulk_params([steps[0]], [(chain_id, 0)]))
        return ChainHandle(chain_id, task_ids, using)


def _options(step: JobSpec) -> dict[str, Any]:
    """A step's enqueue options as the chain row stores them (the ones a step may have)."""
    options = step.options
    known = native_task(step.task_name)
    out: dict[str, Any] = {
        "queue": options.queue or (known.queue if known else queue_settings().default_queue)
    }
    for name in ("priority", "delay", "max_attempts", "resource_key"):
        value = getattr(options, name)
        if value is not None:
            out[name] = value
    if options.tenant_key:
        out["tenant_key"] = options.tenant_key
    return out


def chain(steps: Sequence[JobSpec], *, on_error: JobSpec | None = None) -> Chain:
    """A chain of ``steps`` (``task.job(...)`` specs) with its ``on_error``; see the module doc."""
    return Chain(list(steps), on_error)


@dataclass(frozen=True, slots=True)
class ChainHandle:
    """A queued chain: its id and its steps' task ids."""

    chain_id: uuid.UUID
    task_ids: list[uuid.UUID]
    using: str = "default"

    @property
    def group_id(self) -> uuid.UUID:
        return self.chain_id

    def status(self) -> str:
        """running | succeeded | failed | unknown (one query)."""
        row = _state(self.chain_id, self.using)
        return JobStatus.UNKNOWN if row is None else row[1]

    def wait(self, timeout: float) -> JobOutcome:
        """The last step's outcome, or the failed step's; a timeout is an outcome too."""

        def ended() -> JobOutcome | None:
            row = _state(self.chain_id, self.using)
            if row is None or row[1] == RUNNING:
                return None
            for task_id in self.task_ids:
                outcome = JobHandle(task_id, using=self.using).outcome()
                if outcome.status != JobStatus.SUCCEEDED:
                    return outcome
            return JobHandle(self.task_ids[-1], using=self.using).outcome()

        found = wait_until(str(self.chain_id), ended, timeout, self.using)
        if found is not None:
            return found
        return JobOutcome(
            task_id=self.task_ids[-1],
            status=JobStatus.TIMEOUT,
            error=f"chain {self.chain_id} did not end within {timeout}s",
        )


def settle(using: str, rows: Sequence[Sequence[Any]], *, error: str) -> list[GroupEnded]:
    """Count jobs an operator ended (cancelled or purged: ``(task_id, group_id, index)``) into
    their groups, in the caller's transaction. Returns the groups that ended (``announce`` them
    after the commit)."""
    finished = [
        Finished(task_id, group_id, index, ok=False, error=error)
        for task_id, group_id, index in rows
        if group_id is not None
    ]
    conf = queue_settings()
    return record(DjangoDb(using), finished, ttl=float(conf.result_ttl_seconds), notify=conf.notify)


def reopen(using: str, rows: Sequence[Sequence[Any]]) -> None:
    """Failed members put back on the queue (dead-letter requeue: ``(task_id, group_id,
    index)``) no longer count as finished: their group runs again and will end once more, and a
    chain's later steps lose their ``cancelled`` outcomes so they run after all. In the caller's
    transaction."""
    per_group: dict[uuid.UUID, list[int]] = {}
    for _task_id, group_id, index in rows:
        if group_id is not None:
            per_group.setdefault(group_id, []).append(index)
    if not per_group:
        return
    db = DjangoDb(using)
    reopened = db.rows(
        sql_workflows.GROUP_REOPEN,
        {"group_ids": list(per_group), "n": [len(ix) for ix in per_group.values()]},
    )
    for group_id, kind in reopened:
        if kind == "chain":
            first = min(per_group[group_id])
            db.rows(sql_workflows.CHAIN_UNCANCEL, {"group_id": group_id, "index": first})


def announce(ended: Sequence[GroupEnded]) -> None:
    """Send ``group_finished`` / ``chain_finished`` for groups an operator's action ended (after
    its commit, in the caller's process). A raising receiver is logged, never raised."""
    for end in ended:
        signal = chain_finished if end.kind == "chain" else group_finished
        for receiver, result in signal.send_robust(
            sender=None, group_id=end.group_id, status=end.status
        ):
            if isinstance(result, Exception):
                logger.error(
                    "signal receiver raised signal=%s receiver=%r error=%r",
                    "chain_finished" if end.kind == "chain" else "group_finished",
                    receiver,
                    result,
                )
