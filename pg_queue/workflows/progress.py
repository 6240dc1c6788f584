"""Counting finished jobs into their groups and chains, and what fires when one ends.

``record`` runs inside the transaction that finished the jobs (the worker's ack, dead letter or
cancel; re-arm of an expired last attempt; an operator's cancel or purge), so a group's count
and its end commit with the finishes that caused them. ``GROUP_PROGRESS`` updates each group
once per call with a conditional UPDATE: the one call that moves a group out of 'running' is
the one that fires its callback, exactly once, however many workers race. A chain step that
succeeds enqueues the next step (its result first); one that fails for good ends the chain,
cancels the steps that will never run and fires ``on_error``.

Callbacks and next steps are inserted under a savepoint: one that cannot be enqueued is logged
and the finishes still commit (a finish is never undone for a callback).
"""

from __future__ import annotations

import logging
import uuid
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from pg_queue.core.conf import NOTIFY_CHANNEL, RESULT_CHANNEL
from pg_queue.core.options import EnqueueOptions, JobSpec
from pg_queue.core.payload import ContinuationSpec, loads
from pg_queue.db import sql, sql_workflows
from pg_queue.producer import bulk_params

logger = logging.getLogger("pg_queue.workflows")

#: What the steps of a failed chain that never ran are told (their outcome is 'cancelled').
CHAIN_CANCELLED = "cancelled: an earlier step of its chain failed"


class Db(Protocol):
    """The caller's open transaction: the worker's psycopg connection, or Django's."""

    def rows(self, statement: str, params: dict[str, Any]) -> list[tuple[Any, ...]]: ...

    def savepoint(self) -> AbstractContextManager[Any]: ...


@dataclass(frozen=True, slots=True)
class Finished:
    """A job of a group or chain that just finished (its outcome written in this transaction)."""

    task_id: uuid.UUID
    group_id: uuid.UUID
    group_index: int
    ok: bool
    value: Any = None  # a succeeded chain step's result, passed on to the next step
    error: str = ""


@dataclass(frozen=True, slots=True)
class GroupEnded:
    """A group or chain that ended in this transaction (for signals and logs, after commit)."""

    group_id: uuid.UUID
    kind: str
    status: str


def record(db: Db, finished: list[Finished], *, ttl: float, notify: bool) -> list[GroupEnded]:
    """Count ``finished`` into their groups; fire what their end fires. Returns the ends."""
    if not finished:
        return []
    counts: dict[uuid.UUID, list[int]] = {}
    for item in finished:
        n_f = counts.setdefault(item.group_id, [0, 0])
        n_f[0] += 1
        n_f[1] += 0 if item.ok else 1
    rows = db.rows(
        sql_workflows.GROUP_PROGRESS,
        {
            "group_ids": list(counts),
            "n": [c[0] for c in counts.values()],
            "f": [c[1] for c in counts.values()],
        },
    )
    jobs: list[tuple[JobSpec, uuid.UUID | None, int | None]] = []
    ended: list[GroupEnded] = []
    for group_id, kind, status, _done, _total, on_success, on_error, steps in rows:
        mine = [item for item in finished if item.group_id == group_id]
        if kind == "chain":
            jobs += _chain_moves(db, group_id, status, mine, on_error, steps, ttl)
        elif status != "running":
            jobs += _group_end(db, group_id, status, on_success, on_error)
        if status != "running":
            ended.append(GroupEnded(group_id, kind, status))
    _enqueue(db, jobs)
    if ended and notify:
        ids = ",".join(str(e.group_id) for e in ended)
        db.rows(sql_workflows.GROUP_NOTIFY, {"channel": RESULT_CHANNEL, "ids": ids})
    for end in ended:
        logger.info("%s ended group_id=%s status=%s", end.kind, end.group_id, end.status)
    return ended


def _chain_moves(
    db: Db,
    chain_id: uuid.UUID,
    status: str,
    mine: list[Finished],
    on_error: str | None,
    steps_text: str,
    ttl: float,
) -> list[tuple[JobSpec, uuid.UUID | None, int | None]]:
    steps = loads(steps_text)
    step = max(mine, key=lambda item: item.group_index)  # one step of a chain runs at a time
    if status == "running":  # this step succeeded and another follows
        following = step.group_index + 1
        return [(step_spec(steps[following], [step.value]), chain_id, following)]
    if status == "succeeded":
        return []
    rest = steps[step.group_index + 1 :]
    if rest:
        db.rows(
            sql_workflows.CHAIN_CANCEL_REST,
            {
                "error": CHAIN_CANCELLED,
                "ttl": ttl,
                "group_id": chain_id,
                "task_ids": [uuid.UUID(s["task_id"]) for s in rest],
                "task_names": [s["task_name"] for s in rest],
                "queues": [s["options"].get("queue") or "" for s in rest],
                "indexes": list(range(step.group_index + 1, len(steps))),
            },
        )
    failure = {"task_id": str(step.task_id), "error": step.error}
    return _callback(on_error, [str(chain_id), failure])


def _group_end(
    db: Db, group_id: uuid.UUID, status: str, on_success: str | None, on_error: str | None
) -> list[tuple[JobSpec, uuid.UUID | None, int | None]]:
    if status == "succeeded":
        if on_success is None:
            return []
        rows = db.rows(sql_workflows.GROUP_RESULTS, {"group_id": group_id})
        results = [None if text is None else loads(text) for _index, text in rows]
        return _callback(on_success, [results])
    if on_error is None:
        return []
    rows = db.rows(sql_workflows.GROUP_FAILURES, {"group_id": group_id})
    failures = [{"task_id": str(task_id), "error": error} for task_id, error in rows]
    return _callback(on_error, [str(group_id), failures])


def _callback(
    spec_text: str | None, given: list[Any]
) -> list[tuple[JobSpec, uuid.UUID | None, int | None]]:
    """The callback's job: what it is given first, then its own arguments."""
    if spec_text is None:
        return []
    spec = ContinuationSpec.from_json(loads(spec_text))
    job = JobSpec(
        task_name=spec.task_name,
        args=[*given, *spec.args],
        kwargs=spec.kwargs,
        options=EnqueueOptions(queue=spec.queue),
    )
    return [(job, None, None)]


def step_spec(step: dict[str, Any], given: list[Any]) -> JobSpec:
    """A chain step (as the chain row stores it) as a job spec, ``given`` first."""
    return JobSpec(
        task_name=step["task_name"],
        args=[*given, *step["args"]],
        kwargs=step["kwargs"],
        options=EnqueueOptions(**step["options"]),
        task_id=uuid.UUID(step["task_id"]),
    )


def _enqueue(db: Db, jobs: list[tuple[JobSpec, uuid.UUID | None, int | None]]) -> None:
    if not jobs:
        return
    specs = [job for job, _, _ in jobs]
    try:
        params = bulk_params(specs)
        params["group_ids"] = [g for _, g, _ in jobs]
        params["group_indexes"] = [i for _, _, i in jobs]
        with db.savepoint():
            db.rows(sql.insert_many(params), params)
            for queue in sorted(set(params["queues"])):
                db.rows(sql.NOTIFY, {"channel": NOTIFY_CHANNEL, "queue": queue})
    except Exception as exc:  # a callback that cannot be enqueued must not undo the finishes
        for job in specs:
            logger.error(
                "group callback or chain step not enqueued task=%s error=%s", job.task_name, exc
            )


class PsycopgDb:
    """``Db`` over the worker's own autocommit connection, inside ``conn.transaction()``."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def rows(self, statement: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        cur = self.conn.execute(statement, params)
        return cur.fetchall() if cur.description else []

    def savepoint(self) -> AbstractContextManager[Any]:
        return self.conn.transaction()


class DjangoDb:
    """``Db`` over Django's connection ``using``, inside the caller's ``atomic()``."""

    def __init__(self, using: str = "default") -> None:
        self.using = using

    def rows(self, statement: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        from django.db import connections

        with connections[self.using].cursor() as cursor:
            cursor.execute(statement, params)
            return list(cursor.fetchall()) if cursor.description else []

    def savepoint(self) -> AbstractContextManager[Any]:
        from django.db import transaction

        return transaction.atomic(using=self.using)
