"""Enqueue: validate, JSON-coerce, and INSERT through the caller's Django connection.

Because the INSERT runs on Django's connection, a job commits or rolls back with the caller's
``transaction.atomic()``: no phantom job for a rolled-back write, no lost job for a committed one.

Every entry point (``enqueue``, ``Task.enqueue``, ``enqueue_many`` with ``job``/``Task.job``
specs, ``bulk_params`` for the worker's continuations) goes through ``validate_spec``: input the
database would refuse or change is a ``ValueError`` (``PayloadError`` for values) before any
SQL runs, so a refusal never aborts the caller's transaction. A task id given by the caller
that already names a live job or a stored result is ``DuplicateTaskId``.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Iterable
from contextlib import ExitStack
from typing import Any

from django.db import IntegrityError, connections, transaction

from pg_queue.core.conf import NOTIFY_CHANNEL, queue_settings, wake_payload
from pg_queue.core.exceptions import DuplicateTaskId
from pg_queue.core.options import EMPTY, NO_OPTIONS, EnqueueOptions, JobSpec
from pg_queue.core.payload import ContinuationSpec
from pg_queue.db import sql
from pg_queue.jobspec import JobRow, Resolved, new_task_id, validate_spec
from pg_queue.results import JobHandle, JobOutcome, armed_wait

logger = logging.getLogger("pg_queue.producer")

#: Rows per bulk statement; bounds one statement's memory and lock footprint.
BULK_CHUNK = 5_000
#: COPY lines sent to the server per write: big enough to amortise the call, small enough that
#: the server starts inserting while the next rows are still being built.
COPY_BLOCK_ROWS = 256
#: A dedup race (the live duplicate finished between our INSERT and SELECT) is retried this often.
DEDUP_RETRIES = 3


def _row_params(row: JobRow) -> dict[str, Any]:
    return {
        "task_id": row.task_id,
        "queue": row.queue,
        "task_name": row.task_name,
        "payload": row.payload,
        "priority": row.priority,
        "delay": row.delay,
        "eta": row.eta,
        "max_attempts": row.max_attempts,
        "tenant_key": row.tenant_key,
        "resource_key": row.resource_key,
        "dedup_key": row.dedup_key,
        "notify": queue_settings().notify and row.delay == 0 and row.eta is None,
        "channel": NOTIFY_CHANNEL,
        "wake": wake_payload(row.queue, row.tenant_key, row.resource_key),
    }


def enqueue_job(spec: JobSpec, *, using: str = "default") -> JobHandle:
    """Insert one job in the caller's transaction; a live duplicate ``dedup_key`` wins.

    A ``spec.task_id`` already naming a live job or a stored result is ``DuplicateTaskId``
    (one more query, only when an id is given).
    """
    return enqueue_spec(spec, using, check_task_id=spec.task_id is not None)


def enqueue_spec(spec: JobSpec, using: str, *, check_task_id: bool) -> JobHandle:
    """``enqueue_job``; ``check_task_id=False`` for an id the caller just generated with
    ``new_task_id`` (``call``, ``RoutingDispatcher.dispatch``): no query to prove it unused,
    since request-reply latency is counted per query."""
    row = validate_spec(spec)
    with connections[using].cursor() as cursor:
        if not check_task_id:
            return _insert_row(cursor, row, using, notify=True)
        _refuse_taken_task_ids(cursor, [row.task_id])
        try:
            if connections[using].in_atomic_block:  # a racing duplicate must not abort it
                with transaction.atomic(using=using):
                    return _insert_row(cursor, row, using, notify=True)
            return _insert_row(cursor, row, using, notify=True)
        except IntegrityError as exc:
            duplicate = _duplicate_from(exc)
            if duplicate is None:
                raise
            raise duplicate from None


def enqueue(
    task_name: str,
    args: list[Any] | tuple[Any, ...] = (),
    kwargs: dict[str, Any] | None = None,
    *,
    queue: str | None = None,
    priority: int | None = None,
    delay: float | None = None,
    eta: dt.datetime | None = None,
    dedup_key: str | None = None,
    max_attempts: int | None = None,
    tenant_key: str = "",
    resource_key: str | None = None,
    headers: dict[str, Any] | None = None,
    on_success: ContinuationSpec | None = None,
    on_error: ContinuationSpec | None = None,
    reply_key: str = "",
    task_id: uuid.UUID | None = None,
    using: str = "default",
) -> JobHandle:
    """Queue ``task_name(*args, **kwargs)`` by name; it need not be importable here.

    ``task_id`` (like Celery's) names the job: one already naming a live job or a stored
    result is ``DuplicateTaskId``, and the caller's transaction stays usable. Default: a fresh
    UUIDv7. Any refusal (``ValueError``) happens before the job is written.
    """
    spec = job(
        task_name,
        args,
        kwargs,
        queue=queue,
        priority=priority,
        delay=delay,
        eta=eta,
        dedup_key=dedup_key,
        max_attempts=max_attempts,
        tenant_key=tenant_key,
        resource_key=resource_key,
        headers=headers,
        on_success=on_success,
        on_error=on_error,
        reply_key=reply_key,
        task_id=task_id,
    )
    return enqueue_job(spec, using=using)


def call(
    task_name: str,
    args: list[Any] | tuple[Any, ...] = (),
    kwargs: dict[str, Any] | None = None,
    *,
    timeout: float,
    using: str = "default",
    **options: Any,
) -> JobOutcome:
    """Request-reply: enqueue ``task_name(*args, **kwargs)`` and block for its outcome.

    Never raises for a failed or late job (the outcome says so); refuses inside ``atomic()``.
    The result wake-up is armed before the job is inserted, so the wait needs no first status
    query. ``options`` are those of ``enqueue``.
    """
    task_id = new_task_id()
    spec = job(task_name, args, kwargs, task_id=task_id, **options)
    with armed_wait(task_id, using) as armed:
        # The id is fresh: no query to check it is unused (latency is counted per query).
        handle = enqueue_spec(spec, using, check_task_id=False)
        if handle.task_id != task_id:  # a live duplicate (dedup_key) answers instead
            return handle.wait(timeout)
        return armed.wait(timeout)


def job(
    task_name: str,
    args: list[Any] | tuple[Any, ...] = (),
    kwargs: dict[str, Any] | None = None,
    *,
    queue: str | None = None,
    priority: int | None = None,
    delay: float | None = None,
    eta: dt.datetime | None = None,
    dedup_key: str | None = None,
    max_attempts: int | None = None,
    tenant_key: str = "",
    resource_key: str | None = None,
    headers: dict[str, Any] | None = None,
    on_success: ContinuationSpec | None = None,
    on_error: ContinuationSpec | None = None,
    reply_key: str = "",
    task_id: uuid.UUID | None = None,
) -> JobSpec:
    """A ``JobSpec`` for ``enqueue_many`` by task name; options as for ``enqueue``.

    Nothing is checked here: ``enqueue_many`` refuses a bad spec exactly as ``enqueue`` would.
    """
    if (
        queue is None
        and priority is None
        and delay is None
        and eta is None
        and dedup_key is None
        and max_attempts is None
        and tenant_key == ""
        and resource_key is None
    ):
        options = NO_OPTIONS  # shared: a batch checks it once
    else:
        options = EnqueueOptions(
            queue=queue,
            priority=priority,
            delay=delay,
            eta=eta,
            dedup_key=dedup_key,
            max_attempts=max_attempts,
            tenant_key=tenant_key,
            resource_key=resource_key,
        )
    return JobSpec(
        task_name,
        # A copy, as enqueue makes; anything but a list or tuple is refused by enqueue_many.
        list(args) if type(args) is list or isinstance(args, tuple) else args,
        {} if kwargs is None else kwargs,
        options,
        EMPTY if headers is None else headers,
        on_success,
        on_error,
        reply_key,
        task_id,
    )


def enqueue_many(specs: Iterable[JobSpec], *, using: str = "default") -> list[JobHandle]:
    """Insert many jobs in as few statements as possible, all or nothing.

    Immediate jobs stream into one COPY while later specs are still being validated, so the
    database inserts rows on its own core while Python builds the next ones; delayed jobs and
    jobs with a given task id follow by one multi-row INSERT per chunk, and jobs with a dedup
    key one by one (a live duplicate wins). Given task ids are checked by one query before
    those INSERTs (``DuplicateTaskId``, also for an id given twice in the batch). The call
    runs in its own transaction, or a savepoint inside the caller's ``atomic()``: one bad spec
    raises ``ValueError`` naming the problem, the COPY is abandoned, nothing of the call is
    left behind and the caller's transaction stays usable.
    """
    try:
        with transaction.atomic(using=using), connections[using].cursor() as cursor:
            handles, later, queues, given = _copy_rows(cursor, specs, using)
            if given:
                _refuse_taken_task_ids(cursor, list(given))
            rest = [r for r in later if r.dedup_key is None]
            for start in range(0, len(rest), BULK_CHUNK):
                _insert_many(cursor, rest[start : start + BULK_CHUNK])
            queues.update(
                wake_payload(r.queue, r.tenant_key, r.resource_key)
                for r in rest
                if not r.delay and r.eta is None
            )
            deduped = {
                r.task_id: _insert_row(cursor, r, using, notify=True) for r in later if r.dedup_key
            }
            if queue_settings().notify:
                for wake in sorted(queues):  # queue names, a tenant mark on some
                    cursor.execute(sql.NOTIFY, {"channel": NOTIFY_CHANNEL, "queue": wake})
    except IntegrityError as exc:  # a given id inserted by a concurrent transaction
        duplicate = _duplicate_from(exc)
        if duplicate is None:
            raise
        raise duplicate from None
    if deduped:  # a live duplicate's handle replaces ours
        return [deduped.get(h.task_id, h) for h in handles]
    return handles


def _copy_rows(
    cursor: Any, specs: Iterable[JobSpec], using: str
) -> tuple[list[JobHandle], list[JobRow], set[str], set[uuid.UUID]]:
    """Validate ``specs`` and COPY the immediate ones as they come.

    Returns a handle per spec (in order), the rows left for INSERT (delayed, with a dedup key,
    or with a task id the caller gave: the COPY never holds a row that could collide), the
    queues the COPY filled and the given task ids. The COPY opens with the first immediate
    row. Lines are formatted here (each batch's fixed columns once, in ``Resolved``) and sent
    in blocks: per-value adaptation by ``write_row`` was a third of the Python time per job.
    The database's defaults stamp enqueued_at/available_at. An exception while building rows
    leaves the ``with`` block, which makes psycopg abort the COPY (nothing of it is kept) and
    re-raise.
    """
    cache: dict[str | tuple[str, EnqueueOptions], Resolved] = {}
    handles: list[JobHandle] = []
    later: list[JobRow] = []
    queues: set[str] = set()
    lines: list[str] = []
    given: set[uuid.UUID] = set()
    with ExitStack() as stack:
        copy = None
        for spec in specs:
            row = validate_spec(spec, cache)
            handles.append(JobHandle(row.task_id, row.task_name, row.queue, using))
            if spec.task_id is not None:
                if row.task_id in given:
                    raise DuplicateTaskId(
                        f"task_id {row.task_id} is given to two jobs of this enqueue_many "
                        "call; a task id names one job"
                    )
                given.add(row.task_id)
                later.append(row)
                continue
            # Keyed jobs may have to be parked behind their key's live job: INSERT decides.
            if (
                row.dedup_key is not None
                or row.delay
                or row.eta is not None
                or row.resource_key is not None
            ):
                later.append(row)
                continue
            if copy is None:
                copy = stack.enter_context(cursor.copy(sql.JOB_COPY))
            resolved = row.resolved
            payload = row.payload  # JSON text escapes every control character but backslash
            if "\\" in payload:
                payload = payload.replace("\\", "\\\\")
            lines.append(f"{row.task_id.hex}{resolved.copy_head}{payload}{resolved.copy_tail}")
            queues.add(wake_payload(row.queue, row.tenant_key))  # COPY rows have no key
            if len(lines) == COPY_BLOCK_ROWS:
                copy.write("".join(lines))
                lines.clear()
        if lines:
            assert copy is not None
            copy.write("".join(lines))
    return handles, later, queues, given


#: Which of the given task ids already name a stored result or a live job (one round trip).
#: Only run for ids a caller gave: a fresh UUIDv7 cannot collide.
def _refuse_taken_task_ids(cursor: Any, ids: list[uuid.UUID]) -> None:
    """``DuplicateTaskId`` if any of ``ids`` names a live job or a stored result.

    Re-using such an id would leave ``wait()`` answering with the earlier outcome, or fail the
    INSERT with an IntegrityError that aborts the caller's transaction.
    """
    cursor.execute(sql.TASK_IDS_TAKEN, {"ids": ids})
    taken = cursor.fetchall()
    if taken:
        listed = "; ".join(f"{task_id} by {what}" for task_id, what in taken[:5])
        more = f" (and {len(taken) - 5} more)" if len(taken) > 5 else ""
        raise DuplicateTaskId(
            f"task_id already in use: {listed}{more}. A task id names one job: give a new one, "
            "or none for a fresh id"
        )


def _duplicate_from(exc: IntegrityError) -> DuplicateTaskId | None:
    """``DuplicateTaskId`` for a unique violation on ``task_id``, else None."""
    diag = getattr(exc.__cause__, "diag", None)
    if "task_id" not in (getattr(diag, "constraint_name", None) or ""):
        return None
    detail = getattr(diag, "message_detail", None) or str(exc)
    return DuplicateTaskId(
        f"task_id already in use by a job another transaction enqueued: {detail}"
    )


def _insert_row(cursor: Any, row: JobRow, using: str, *, notify: bool) -> JobHandle:
    """INSERT one validated row; with a dedup key, return the live duplicate's handle instead.

    The duplicate can finish between our INSERT and our SELECT; then we simply try again.
    """
    params = _row_params(row)
    params["notify"] = notify and params["notify"]
    # Its own transaction: NOTIFY only a waiting worker. Inside a longer one a worker may go
    # to sleep between this statement and the commit, having missed the row: always NOTIFY.
    params["waiters_only"] = connections[using].get_autocommit()
    for _ in range(DEDUP_RETRIES):
        cursor.execute(sql.JOB_INSERT, params)
        inserted = cursor.fetchone()
        if inserted is not None:
            return JobHandle(inserted[0], row.task_name, row.queue, using)
        cursor.execute(sql.JOB_BY_DEDUP_KEY, {"dedup_key": row.dedup_key})
        existing = cursor.fetchone()
        if existing is not None:
            logger.info(
                "enqueue deduplicated task=%s dedup_key=%s task_id=%s",
                row.task_name,
                row.dedup_key,
                existing[0],
            )
            return JobHandle(existing[0], existing[1], existing[2], using)
    raise RuntimeError(f"dedup_key {row.dedup_key!r} kept racing; gave up after {DEDUP_RETRIES}")


def _insert_many(cursor: Any, rows: list[JobRow]) -> None:
    """One multi-row INSERT for delayed rows (``available_at`` computed by the database)."""
    params = _bulk_params(rows)
    cursor.execute(sql.insert_many(params), params)


def bulk_params(
    specs: list[JobSpec], groups: list[tuple[uuid.UUID, int]] | None = None
) -> dict[str, Any]:
    """Validate ``specs`` and return parameters for ``sql.JOB_INSERT_MANY``.

    Used by the worker to enqueue continuations on its own connection, inside its ack
    transaction, and by groups and chains for their jobs (``groups``: each spec's group id and
    index); raises ``ValueError`` naming the problem like ``enqueue`` does.
    """
    cache: dict[str | tuple[str, EnqueueOptions], Resolved] = {}
    return _bulk_params([validate_spec(spec, cache) for spec in specs], groups)


def _bulk_params(
    rows: list[JobRow], groups: list[tuple[uuid.UUID, int]] | None = None
) -> dict[str, Any]:
    return {
        "task_ids": [r.task_id for r in rows],
        "queues": [r.queue for r in rows],
        "task_names": [r.task_name for r in rows],
        "payloads": [r.payload for r in rows],
        "priorities": [r.priority for r in rows],
        "delays": [r.delay for r in rows],
        "etas": [r.eta for r in rows],
        "max_attempts": [r.max_attempts for r in rows],
        "tenant_keys": [r.tenant_key for r in rows],
        "resource_keys": [r.resource_key for r in rows],
        "group_ids": [g[0] for g in groups] if groups else [None] * len(rows),
        "group_indexes": [g[1] for g in groups] if groups else [None] * len(rows),
    }
