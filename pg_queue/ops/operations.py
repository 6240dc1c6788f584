"""Operator actions, shared by the admin and the management commands.

The overview lives in ``ops/overview.py`` and secret masking in ``ops/masking.py``.

Cold path: every function here is set-based (one statement per kind of change, whatever the
number of rows) and runs on Django's connection, in the caller's transaction where one is open.
Its SQL is in ``pg_queue/db/sql_ops.py`` (the hot path's in ``pg_queue/db/sql.py``). Times
come from the database clock (``now()``).

Who did it: functions that change jobs take an ``actor`` (an admin user name, or the command's
``--by``); the admin also writes Django ``LogEntry`` rows, the commands log a line.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from django.db import DatabaseError, connections, transaction

from pg_queue.core.conf import RESULT_CHANNEL, queue_settings
from pg_queue.core.continuations import error_spec, lenient_on_error
from pg_queue.db import sql_ops
from pg_queue.ops.dead_letters import requeue_dead_letters

# Re-exported: the admin, the commands and the tests use them through this module.
from pg_queue.producer import enqueue_many
from pg_queue.workflows import groups

logger = logging.getLogger("pg_queue.ops.operations")

#: Rows per statement for bulk operator actions: bounds one statement's lock footprint.
ACTION_CHUNK = 5_000
#: Task ids per result NOTIFY: a NOTIFY payload must stay under 8000 bytes (36-char ids + ',').
NOTIFY_IDS_PER_MESSAGE = 200
#: Longest an operator action waits for a row a worker holds locked (claim/ack are brief).
ACTION_LOCK_TIMEOUT = "5s"

#: States ``pg_queue_purge`` understands: due ready rows, delayed ready rows, both ("queued",
#: the default: everything not running, like ``celery purge``), running rows, or all.
PURGE_STATES = sql_ops.JOB_PURGE_WHERE
#: The error a purged member of a group or chain is recorded with.
PURGED = "purged by an operator"


# --- jobs ------------------------------------------------------------------------------------


class JobRef(NamedTuple):
    """A job an action touched: enough to log who did what to which job."""

    msg_id: int
    task_id: uuid.UUID
    task_name: str
    queue_name: str
    state: str


@dataclass(frozen=True, kw_only=True, slots=True)
class CancelReport:
    """What ``jobs_cancel`` did, job by job."""

    cancelled: list[JobRef] = field(default_factory=list)  # queued: removed, outcome stored
    requested: list[JobRef] = field(default_factory=list)  # running: the worker will stop it
    not_found: list[uuid.UUID] = field(default_factory=list)  # task ids with no live job
    continuations: int = 0  # on_error jobs enqueued
    continuation_error: str = ""  # why the on_error jobs were not enqueued, if they were not


def _chunks(items: Sequence[Any], size: int = ACTION_CHUNK) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _refs(rows: Iterable[Sequence[Any]]) -> list[JobRef]:
    return [JobRef(int(r[0]), r[1], r[2], r[3], r[4]) for r in rows]


def jobs_run_now(msg_ids: Sequence[int], *, using: str = "default") -> list[JobRef]:
    """Make delayed ready jobs due now; returns the ones changed (running ones are not)."""
    changed: list[JobRef] = []
    with transaction.atomic(using=using), connections[using].cursor() as cursor:
        for chunk in _chunks([int(i) for i in msg_ids]):
            cursor.execute(sql_ops.JOB_RUN_NOW, {"ids": list(chunk)})
            changed += _refs(cursor.fetchall())
    return changed


def validate_priority(value: Any) -> int:
    """A priority as the column holds it, or ``ValueError`` naming the problem."""
    if isinstance(value, bool):
        raise ValueError(f"priority must be an integer, got {value!r}")
    try:
        priority = int(str(value).strip())
    except ValueError:
        raise ValueError(f"priority must be an integer, got {value!r}") from None
    if not -32768 <= priority <= 32767:
        raise ValueError(f"priority must fit a smallint (-32768..32767), got {priority}")
    return priority


def jobs_set_priority(
    msg_ids: Sequence[int], priority: int, *, using: str = "default"
) -> list[JobRef]:
    """Set the priority of live jobs; returns the ones whose priority changed."""
    priority = validate_priority(priority)
    changed: list[JobRef] = []
    with transaction.atomic(using=using), connections[using].cursor() as cursor:
        for chunk in _chunks([int(i) for i in msg_ids]):
            cursor.execute(sql_ops.JOB_SET_PRIORITY, {"ids": list(chunk), "priority": priority})
            changed += _refs(cursor.fetchall())
    return changed


def cancel_error_text(actor: str) -> str:
    """What a cancelled job's outcome and its ``on_error`` continuation say."""
    return f"cancelled by {actor}" if actor else "cancelled by an operator"


def jobs_cancel(
    *,
    msg_ids: Sequence[int] = (),
    task_ids: Sequence[uuid.UUID] = (),
    actor: str,
    using: str = "default",
) -> CancelReport:
    """Cancel jobs by msg_id and/or task id, in one transaction.

    Queued jobs (``ready``, due or delayed) are removed, get a ``cancelled`` outcome
    (``error = "cancelled by <actor>"``), and their ``on_error`` continuation is enqueued with
    arguments ``[task_id, "cancelled by <actor>", *spec.args]``, all in this transaction.
    Running jobs (``claimed``) get ``cancel_requested = true``; their worker stops them at its
    next safe point and writes the outcome itself. A continuation that cannot be enqueued (a
    spec gone bad) is reported and logged; the cancellation still happens, as in the worker.
    Waiters on the cancelled jobs' results are woken (NOTIFY, delivered at commit).
    """
    ids = sorted({int(i) for i in msg_ids})
    wanted = list(dict.fromkeys(uuid.UUID(str(t)) for t in task_ids))
    error = cancel_error_text(actor)
    conf = queue_settings()
    conn = connections[using]
    cancelled: list[JobRef] = []
    requested: list[JobRef] = []
    payloads: list[tuple[JobRef, Any]] = []
    members: list[tuple[Any, ...]] = []
    with transaction.atomic(using=using), conn.cursor() as cursor:
        cursor.execute(sql_ops.ACTION_LOCK_TIMEOUT_SET, {"timeout": ACTION_LOCK_TIMEOUT})
        cursor.execute(sql_ops.JOB_LOCK_FOR_CANCEL, {"ids": ids, "task_ids": wanted})
        locked = cursor.fetchall()
        queued = [r[0] for r in locked if r[1] == "ready"]
        running = [r[0] for r in locked if r[1] == "claimed"]
        for chunk in _chunks(queued):
            cursor.execute(
                sql_ops.JOB_CANCEL_QUEUED,
                {"ids": list(chunk), "error": error, "ttl": conf.result_ttl_seconds},
            )
            for row in cursor.fetchall():
                ref = JobRef(int(row[0]), row[1], row[2], row[3], row[4])
                cancelled.append(ref)
                payloads.append((ref, row[5]))
                members.append((row[1], row[6], row[7]))
        for chunk in _chunks(running):
            cursor.execute(sql_ops.JOB_REQUEST_CANCEL, {"ids": list(chunk)})
            requested += _refs(cursor.fetchall())
        continuations, continuation_error = _enqueue_on_error(payloads, error, using)
        ended = groups.settle(using, members, error=error)
        if conf.notify and cancelled:
            done = [str(ref.task_id) for ref in cancelled]
            wake = [",".join(c) for c in _chunks(done, NOTIFY_IDS_PER_MESSAGE)]
            cursor.execute(sql_ops.RESULT_NOTIFY, {"channel": RESULT_CHANNEL, "payloads": wake})
    groups.announce(ended)
    seen = {ref.task_id for ref in (*cancelled, *requested)}
    for ref in cancelled:
        logger.info(
            "job cancelled task_id=%s task=%s queue=%s by=%s",
            ref.task_id,
            ref.task_name,
            ref.queue_name,
            actor,
        )
    for ref in requested:
        logger.info(
            "job cancel requested task_id=%s task=%s queue=%s by=%s",
            ref.task_id,
            ref.task_name,
            ref.queue_name,
            actor,
        )
    return CancelReport(
        cancelled=cancelled,
        requested=requested,
        not_found=[t for t in wanted if t not in seen],
        continuations=continuations,
        continuation_error=continuation_error,
    )


def _enqueue_on_error(
    payloads: list[tuple[JobRef, Any]], error: str, using: str
) -> tuple[int, str]:
    """Enqueue the ``on_error`` continuations of cancelled jobs under a savepoint."""
    specs = []
    for ref, raw in payloads:
        data = json.loads(raw) if isinstance(raw, str) else raw  # Django hands jsonb over as text
        spec = lenient_on_error(data)
        if spec is not None:
            specs.append((ref, error_spec(spec, ref.task_id, error)))
    if not specs:
        return 0, ""
    try:
        with transaction.atomic(using=using):
            enqueue_many([job for _, job in specs], using=using)
    except (ValueError, DatabaseError) as exc:
        for ref, job in specs:
            logger.error(
                "on_error continuation not enqueued (job still cancelled) task_id=%s "
                "continuation=%s error=%s",
                ref.task_id,
                job.task_name,
                exc,
            )
        return 0, str(exc)
    return len(specs), ""


def purge_where(state: str) -> str:
    """The condition for ``state`` (``ValueError`` naming the choices for anything else)."""
    try:
        return PURGE_STATES[state]
    except KeyError:
        raise ValueError(
            f"unknown state {state!r}; choose one of {', '.join(PURGE_STATES)}"
        ) from None


def jobs_purge_count(queue: str, state: str, *, using: str = "default") -> int:
    """How many jobs ``jobs_purge`` would delete."""
    where = purge_where(state)
    with connections[using].cursor() as cursor:
        cursor.execute(sql_ops.JOB_PURGE_COUNT.format(where=where), {"queue": queue})
        (count,) = cursor.fetchone()
    return int(count)


def jobs_purge(queue: str, state: str, *, using: str = "default") -> int:
    """Delete a queue's jobs in ``state``, in chunks (each its own short transaction).

    No outcome is recorded and no continuation fires: a purge throws jobs away. A running job
    that is purged still runs to its end; its ack then matches nothing. Use cancel to end jobs
    with an outcome. Members of a group or chain are the exception: each gets a ``cancelled``
    outcome (``error = PURGED``) and counts as failed in its group, in the same transaction, so
    the group still ends (``on_error`` fires once) instead of waiting for jobs that are gone.
    """
    where = purge_where(state)
    ttl = queue_settings().result_ttl_seconds
    statement = sql_ops.JOB_PURGE_CHUNK.format(where=where)
    deleted = 0
    while True:
        with transaction.atomic(using=using), connections[using].cursor() as cursor:
            cursor.execute(
                statement,
                {"queue": queue, "limit": ACTION_CHUNK, "error": PURGED, "ttl": ttl},
            )
            rows = cursor.fetchall()
            ended = groups.settle(using, rows, error=PURGED)
        groups.announce(ended)
        count = len(rows)
        deleted += count
        if count < ACTION_CHUNK:
            break
    logger.warning("queue purged queue=%s state=%s deleted=%d", queue, state, deleted)
    return deleted


# --- dead letters ----------------------------------------------------------------------------


class DeadLetterRef(NamedTuple):
    id: int
    task_id: uuid.UUID
    task_name: str
    queue_name: str
    reason: str


def _letter_refs(rows: Iterable[Sequence[Any]]) -> list[DeadLetterRef]:
    return [DeadLetterRef(int(r[0]), r[1], r[2], r[3], r[4]) for r in rows]


def dead_letters_requeue(
    ids: Sequence[int], *, using: str = "default"
) -> tuple[list[DeadLetterRef], list[DeadLetterRef]]:
    """Requeue dead letters with fresh attempts; returns (requeued, skipped).

    Skipped letters are those whose task id is live in the queue again (requeued earlier).
    """
    requeued: list[DeadLetterRef] = []
    skipped: list[DeadLetterRef] = []
    with transaction.atomic(using=using):
        for chunk in _chunks(sorted({int(i) for i in ids})):
            with connections[using].cursor() as cursor:
                cursor.execute(sql_ops.DEAD_LETTER_REFS, {"ids": list(chunk)})
                letters = _letter_refs(cursor.fetchall())
            back = set(requeue_dead_letters(chunk, using=using))
            for letter in letters:
                (requeued if letter.task_id in back else skipped).append(letter)
    return requeued, skipped


def dead_letters_discard(ids: Sequence[int], *, using: str = "default") -> list[DeadLetterRef]:
    """Delete dead letters for good (their failed outcomes stay); returns those deleted."""
    gone: list[DeadLetterRef] = []
    with transaction.atomic(using=using), connections[using].cursor() as cursor:
        for chunk in _chunks(sorted({int(i) for i in ids})):
            cursor.execute(sql_ops.DEAD_LETTER_DISCARD, {"ids": list(chunk)})
            gone += _letter_refs(cursor.fetchall())
    return gone
