"""Operator actions and the queues overview, shared by the admin and the management commands.

Cold path: every function here is set-based (one statement per kind of change, whatever the
number of rows) and runs on Django's connection, in the caller's transaction where one is open.
The SQL is kept here as named blocks, next to the functions that run it; the hot path's SQL
lives in ``pg_queue/sql.py``. Times come from the database clock (``now()``).

Who did it: functions that change jobs take an ``actor`` (an admin user name, or the command's
``--by``); the admin also writes Django ``LogEntry`` rows, the commands log a line.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import re
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

from django.db import DatabaseError, connections, transaction

from pg_queue.conf import RESULT_CHANNEL, queue_settings
from pg_queue.dead_letters import requeue_dead_letters
from pg_queue.producer import enqueue_many
from pg_queue.worker.continuations import error_spec, lenient_on_error

logger = logging.getLogger("pg_queue.operations")

#: A queue whose oldest due job has waited longer than this (seconds) is shown red: nobody is
#: draining it fast enough. Five minutes is long for interactive work and short enough to page
#: someone before a backlog becomes an outage. (A candidate for ``PG_QUEUE``; a constant for now.)
STUCK_READY_SECONDS = 300.0
#: The two recent windows (minutes) of finished / failed counts in the overview.
RECENT_MINUTES = (5, 60)
#: Rows per statement for bulk operator actions: bounds one statement's lock footprint.
ACTION_CHUNK = 5_000
#: Task ids per result NOTIFY: a NOTIFY payload must stay under 8000 bytes (36-char ids + ',').
NOTIFY_IDS_PER_MESSAGE = 200
#: Longest an operator action waits for a row a worker holds locked (claim/ack are brief).
ACTION_LOCK_TIMEOUT = "5s"
#: What a masked secret looks like in the admin.
MASK = "********"

#: States ``pg_queue_purge`` understands: due ready rows, delayed ready rows, both ("queued",
#: the default: everything not running, like ``celery purge``), running rows, or all.
PURGE_STATES: Mapping[str, str] = {
    "ready": "state = 'ready' AND available_at <= now()",
    "delayed": "state = 'ready' AND available_at > now()",
    "queued": "state = 'ready'",
    "claimed": "state = 'claimed'",
    "all": "TRUE",
}


def format_age(seconds: float | None) -> str:
    """``42s``, ``4m 05s``, ``3h 12m``, ``2d 4h``; ``-`` for none."""
    if seconds is None:
        return "-"
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86400}d {s % 86400 // 3600}h"


# --- secrets ---------------------------------------------------------------------------------


def _normalise_key(key: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", key.lower()).strip("_")


def is_secret_key(key: str, secret_keys: Iterable[str]) -> bool:
    """Does a payload key name a secret? Case-insensitive; ``-`` and ``_`` are the same.

    A key matches an entry of ``SECRET_KEYS`` when it equals it or contains it as whole words:
    with ``token``, ``Token``, ``access_token`` and ``X-Token`` match, ``tokens_used`` does not.
    """
    name = f"_{_normalise_key(key)}_"
    return any(f"_{_normalise_key(s)}_" in name for s in secret_keys if _normalise_key(s))


def mask_secrets(value: Any, secret_keys: Iterable[str] | None = None) -> Any:
    """A copy of JSON data with the values of secret keys replaced by ``MASK``, at any depth.

    ``secret_keys`` defaults to ``PG_QUEUE['SECRET_KEYS']``. Positional arguments cannot be
    recognised as secrets: pass secrets as keyword arguments (or not at all).
    """
    keys = tuple(queue_settings().secret_keys if secret_keys is None else secret_keys)

    def walk(item: Any) -> Any:
        if isinstance(item, dict):
            return {
                k: MASK if isinstance(k, str) and is_secret_key(k, keys) else walk(v)
                for k, v in item.items()
            }
        if isinstance(item, list | tuple):
            return [walk(v) for v in item]
        return item

    return walk(value)


def pretty_json(value: Any) -> str:
    """Indented JSON of already-decoded data, secrets masked."""
    return json.dumps(mask_secrets(value), indent=2, sort_keys=True, ensure_ascii=False)


# --- overview --------------------------------------------------------------------------------

#: Everything per queue in one statement: live messages, recent outcomes, dead letters and live
#: workers, each aggregated once over its table and joined on the queue name.
QUEUE_OVERVIEW = """
WITH msg AS (
    SELECT queue_name,
           count(*) FILTER (WHERE state = 'ready' AND available_at <= now()) AS ready,
           count(*) FILTER (WHERE state = 'ready' AND available_at > now()) AS delayed,
           count(*) FILTER (WHERE state = 'claimed') AS running,
           count(*) FILTER (WHERE state = 'claimed' AND vt < now()) AS lease_expired,
           count(*) FILTER (WHERE cancel_requested) AS cancel_requested,
           EXTRACT(EPOCH FROM now() - min(available_at)
                   FILTER (WHERE state = 'ready' AND available_at <= now()))::float8
               AS oldest_ready_seconds
    FROM pg_queue_message
    GROUP BY queue_name
), res AS (
    SELECT queue_name,
           count(*) FILTER (WHERE finished_at > now() - make_interval(mins => %(short)s))
               AS finished_short,
           count(*) FILTER (WHERE finished_at > now() - make_interval(mins => %(short)s)
                            AND status = 'failed') AS failed_short,
           count(*) AS finished_long,
           count(*) FILTER (WHERE status = 'failed') AS failed_long
    FROM pg_task_result
    WHERE finished_at > now() - make_interval(mins => %(long)s)
    GROUP BY queue_name
), dead AS (
    SELECT queue_name, count(*) AS dead_letters FROM pg_queue_dead_letter GROUP BY queue_name
), wrk AS (
    SELECT q.queue_name, count(*) AS workers
    FROM pg_worker AS w
    CROSS JOIN LATERAL jsonb_array_elements_text(
        CASE WHEN jsonb_typeof(w.queues) = 'array' THEN w.queues ELSE '[]'::jsonb END
    ) AS q(queue_name)
    WHERE w.heartbeat_at > now() - make_interval(secs => %(stale)s)
    GROUP BY q.queue_name
), names AS (
    SELECT queue_name FROM msg UNION SELECT queue_name FROM res
    UNION SELECT queue_name FROM dead UNION SELECT queue_name FROM wrk
)
SELECT n.queue_name,
       COALESCE(msg.ready, 0), COALESCE(msg.delayed, 0), COALESCE(msg.running, 0),
       COALESCE(msg.lease_expired, 0), COALESCE(msg.cancel_requested, 0),
       msg.oldest_ready_seconds,
       COALESCE(res.finished_short, 0), COALESCE(res.failed_short, 0),
       COALESCE(res.finished_long, 0), COALESCE(res.failed_long, 0),
       COALESCE(dead.dead_letters, 0), COALESCE(wrk.workers, 0)
FROM names AS n
LEFT JOIN msg USING (queue_name)
LEFT JOIN res USING (queue_name)
LEFT JOIN dead USING (queue_name)
LEFT JOIN wrk USING (queue_name)
ORDER BY n.queue_name
"""

#: The first statement of the overview's own transaction: one snapshot for both statements.
SNAPSHOT = "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"

#: Every worker row with its heartbeat age and in-flight count (one aggregate, not per row).
WORKER_OVERVIEW = """
SELECT w.worker_id, w.hostname, w.pid, w.queues, w.concurrency, w.state,
       EXTRACT(EPOCH FROM now() - w.started_at)::float8,
       EXTRACT(EPOCH FROM now() - w.heartbeat_at)::float8,
       COALESCE(m.in_flight, 0), now()
FROM pg_worker AS w
LEFT JOIN (
    SELECT worker_id, count(*) AS in_flight FROM pg_queue_message
    WHERE state = 'claimed' GROUP BY worker_id
) AS m USING (worker_id)
ORDER BY w.hostname, w.worker_id
"""


@dataclass(frozen=True, kw_only=True, slots=True)
class QueueStats:
    """One queue's line in the overview. Counts of finished jobs cover tasks that store results."""

    queue: str
    ready: int  # due now
    delayed: int  # ready but due later (delay, eta, retry backoff)
    running: int  # claimed
    lease_expired: int  # claimed, lease past: the worker died or stalled; re-arm will act
    cancel_requested: int
    oldest_ready_seconds: float | None  # how long the oldest due job has been due
    finished_5m: int
    failed_5m: int
    finished_60m: int
    failed_60m: int
    dead_letters: int
    workers: int  # live workers (fresh heartbeat) listening on this queue
    stuck_ready_seconds: float = STUCK_READY_SECONDS

    @property
    def ready_stuck(self) -> bool:
        """The oldest due job has waited past ``STUCK_READY_SECONDS``."""
        return (self.oldest_ready_seconds or 0.0) > self.stuck_ready_seconds

    @property
    def lease_stuck(self) -> bool:
        """Some job is running past its lease."""
        return self.lease_expired > 0

    @property
    def no_workers(self) -> bool:
        """Jobs are due or running but no live worker listens on the queue."""
        return self.workers == 0 and (self.ready > 0 or self.running > 0)

    @property
    def stuck(self) -> bool:
        return self.ready_stuck or self.lease_stuck or self.no_workers

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("stuck_ready_seconds")
        data.update(
            ready_stuck=self.ready_stuck,
            lease_stuck=self.lease_stuck,
            no_workers=self.no_workers,
            stuck=self.stuck,
        )
        return data


@dataclass(frozen=True, kw_only=True, slots=True)
class WorkerStats:
    worker_id: str
    hostname: str
    pid: int
    queues: list[str]
    concurrency: int
    state: str
    uptime_seconds: float
    heartbeat_age_seconds: float
    in_flight: int
    stale: bool  # no heartbeat for a whole lease: dead or stalled

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, kw_only=True, slots=True)
class Overview:
    """A snapshot of every queue and worker, taken with two statements."""

    taken_at: dt.datetime  # database clock
    queues: list[QueueStats]
    workers: list[WorkerStats]
    stuck_ready_seconds: float
    worker_stale_seconds: float
    totals: QueueStats = field(init=False)

    def __post_init__(self) -> None:
        ages = [q.oldest_ready_seconds for q in self.queues if q.oldest_ready_seconds is not None]
        total = QueueStats(
            queue="(all)",
            oldest_ready_seconds=max(ages) if ages else None,
            workers=sum(1 for w in self.workers if not w.stale),
            stuck_ready_seconds=self.stuck_ready_seconds,
            **{
                name: sum(getattr(q, name) for q in self.queues)
                for name in (
                    "ready",
                    "delayed",
                    "running",
                    "lease_expired",
                    "cancel_requested",
                    "finished_5m",
                    "failed_5m",
                    "finished_60m",
                    "failed_60m",
                    "dead_letters",
                )
            },
        )
        object.__setattr__(self, "totals", total)

    @property
    def stuck(self) -> bool:
        return any(q.stuck for q in self.queues)

    def to_json(self) -> dict[str, Any]:
        return {
            "taken_at": self.taken_at.isoformat(),
            "stuck_ready_seconds": self.stuck_ready_seconds,
            "worker_stale_seconds": self.worker_stale_seconds,
            "stuck": self.stuck,
            "queues": [q.to_json() for q in self.queues],
            "totals": self.totals.to_json(),
            "workers": [w.to_json() for w in self.workers],
        }


def worker_stale_seconds() -> float:
    """A worker renews its heartbeat every third of a lease: a lease without one means stale."""
    return float(queue_settings().lease_seconds)


def queue_overview(
    *, stuck_ready_seconds: float = STUCK_READY_SECONDS, using: str = "default"
) -> Overview:
    """Every queue's counts and every worker, in two aggregate statements (not one per queue)."""
    stale = worker_stale_seconds()
    short, long = RECENT_MINUTES
    conn = connections[using]
    # Both statements read one snapshot (and one now()), so a worker's in-flight count matches
    # the queue's running count even while batches are claimed and acked in between. Inside
    # a caller's transaction, that transaction's snapshot rules instead.
    own = not conn.in_atomic_block
    with transaction.atomic(using) if own else contextlib.nullcontext(), conn.cursor() as cursor:
        if own:
            cursor.execute(SNAPSHOT)
        cursor.execute(QUEUE_OVERVIEW, {"short": short, "long": long, "stale": stale})
        queue_rows = cursor.fetchall()
        cursor.execute(WORKER_OVERVIEW)
        worker_rows = cursor.fetchall()
        if not worker_rows:
            cursor.execute("SELECT now()")
            (taken_at,) = cursor.fetchone()
        else:
            taken_at = worker_rows[0][-1]
    queues = [
        QueueStats(
            queue=r[0],
            ready=r[1],
            delayed=r[2],
            running=r[3],
            lease_expired=r[4],
            cancel_requested=r[5],
            oldest_ready_seconds=r[6],
            finished_5m=r[7],
            failed_5m=r[8],
            finished_60m=r[9],
            failed_60m=r[10],
            dead_letters=r[11],
            workers=r[12],
            stuck_ready_seconds=stuck_ready_seconds,
        )
        for r in queue_rows
    ]
    workers = [
        WorkerStats(
            worker_id=r[0],
            hostname=r[1],
            pid=r[2],
            queues=_queue_list(r[3]),
            concurrency=r[4],
            state=r[5],
            uptime_seconds=r[6],
            heartbeat_age_seconds=r[7],
            in_flight=r[8],
            stale=r[7] > stale,
        )
        for r in worker_rows
    ]
    return Overview(
        taken_at=taken_at,
        queues=queues,
        workers=workers,
        stuck_ready_seconds=stuck_ready_seconds,
        worker_stale_seconds=stale,
    )


def _queue_list(raw: Any) -> list[str]:
    """``pg_worker.queues`` as a list of names (Django hands jsonb over as text)."""
    data = json.loads(raw) if isinstance(raw, str) else raw
    return [str(q) for q in data] if isinstance(data, list) else []


# --- messages --------------------------------------------------------------------------------


class MessageRef(NamedTuple):
    """A message an action touched: enough to log who did what to which job."""

    msg_id: int
    task_id: uuid.UUID
    task_name: str
    queue_name: str
    state: str


#: Due-now for delayed rows only: a row already due keeps its place in the claim order.
MESSAGE_RUN_NOW = """
UPDATE pg_queue_message SET available_at = now()
WHERE msg_id = ANY(%(ids)s::bigint[]) AND state = 'ready' AND available_at > now()
RETURNING msg_id, task_id, task_name, queue_name, state
"""

#: Priority matters to the claim of ready rows; a running row keeps it for its retries.
MESSAGE_SET_PRIORITY = """
UPDATE pg_queue_message SET priority = %(priority)s
WHERE msg_id = ANY(%(ids)s::bigint[]) AND priority <> %(priority)s
RETURNING msg_id, task_id, task_name, queue_name, state
"""

#: Lock the rows to cancel, so that none changes state (claimed, retried, acked) between our
#: look and our change. In msg_id order, so two operators never deadlock each other.
MESSAGE_LOCK_FOR_CANCEL = """
SELECT msg_id, state FROM pg_queue_message
WHERE msg_id = ANY(%(ids)s::bigint[]) OR task_id = ANY(%(task_ids)s::uuid[])
ORDER BY msg_id
FOR UPDATE
"""

#: Queued jobs: remove them and record a 'cancelled' outcome (first write wins), one statement.
MESSAGE_CANCEL_QUEUED = """
WITH gone AS (
    DELETE FROM pg_queue_message
    WHERE msg_id = ANY(%(ids)s::bigint[]) AND state = 'ready'
    RETURNING *
), outcomes AS (
    INSERT INTO pg_task_result (
        task_id, status, result, error, traceback, task_name, queue_name, attempts,
        enqueued_at, started_at, finished_at, expires_at
    )
    SELECT g.task_id, 'cancelled', NULL, %(error)s, '', g.task_name, g.queue_name, g.attempts,
           g.enqueued_at, NULL, now(), now() + make_interval(secs => %(ttl)s)
    FROM gone AS g
    ON CONFLICT (task_id) DO NOTHING
)
SELECT msg_id, task_id, task_name, queue_name, state, payload FROM gone ORDER BY msg_id
"""

#: Running jobs: ask their worker to stop them at its next safe point.
MESSAGE_REQUEST_CANCEL = """
UPDATE pg_queue_message SET cancel_requested = true
WHERE msg_id = ANY(%(ids)s::bigint[]) AND state = 'claimed'
RETURNING msg_id, task_id, task_name, queue_name, state
"""

#: Wake result waiters: one notification per payload (each under NOTIFY's 8000-byte limit),
#: all sent by one statement and delivered at commit.
RESULT_NOTIFY = "SELECT pg_notify(%(channel)s, p) FROM unnest(%(payloads)s::text[]) AS p"


@dataclass(frozen=True, kw_only=True, slots=True)
class CancelReport:
    """What ``messages_cancel`` did, job by job."""

    cancelled: list[MessageRef] = field(default_factory=list)  # queued: removed, outcome stored
    requested: list[MessageRef] = field(default_factory=list)  # running: the worker will stop it
    not_found: list[uuid.UUID] = field(default_factory=list)  # task ids with no live message
    continuations: int = 0  # on_error jobs enqueued
    continuation_error: str = ""  # why the on_error jobs were not enqueued, if they were not


def _chunks(items: Sequence[Any], size: int = ACTION_CHUNK) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _refs(rows: Iterable[Sequence[Any]]) -> list[MessageRef]:
    return [MessageRef(int(r[0]), r[1], r[2], r[3], r[4]) for r in rows]


def messages_run_now(msg_ids: Sequence[int], *, using: str = "default") -> list[MessageRef]:
    """Make delayed ready jobs due now; returns the ones changed (running ones are not)."""
    changed: list[MessageRef] = []
    with transaction.atomic(using=using), connections[using].cursor() as cursor:
        for chunk in _chunks([int(i) for i in msg_ids]):
            cursor.execute(MESSAGE_RUN_NOW, {"ids": list(chunk)})
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


def messages_set_priority(
    msg_ids: Sequence[int], priority: int, *, using: str = "default"
) -> list[MessageRef]:
    """Set the priority of live jobs; returns the ones whose priority changed."""
    priority = validate_priority(priority)
    changed: list[MessageRef] = []
    with transaction.atomic(using=using), connections[using].cursor() as cursor:
        for chunk in _chunks([int(i) for i in msg_ids]):
            cursor.execute(MESSAGE_SET_PRIORITY, {"ids": list(chunk), "priority": priority})
            changed += _refs(cursor.fetchall())
    return changed


def cancel_error_text(actor: str) -> str:
    """What a cancelled job's outcome and its ``on_error`` continuation say."""
    return f"cancelled by {actor}" if actor else "cancelled by an operator"


def messages_cancel(
    *,
    msg_ids: Sequence[int] = (),
    task_ids: Sequence[uuid.UUID] = (),
    actor: str,
    using: str = "default",
) -> CancelReport:
    """Cancel jobs by message id and/or task id, in one transaction.

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
    cancelled: list[MessageRef] = []
    requested: list[MessageRef] = []
    payloads: list[tuple[MessageRef, Any]] = []
    with transaction.atomic(using=using), conn.cursor() as cursor:
        cursor.execute(f"SET LOCAL lock_timeout = '{ACTION_LOCK_TIMEOUT}'")
        cursor.execute(MESSAGE_LOCK_FOR_CANCEL, {"ids": ids, "task_ids": wanted})
        locked = cursor.fetchall()
        queued = [r[0] for r in locked if r[1] == "ready"]
        running = [r[0] for r in locked if r[1] == "claimed"]
        for chunk in _chunks(queued):
            cursor.execute(
                MESSAGE_CANCEL_QUEUED,
                {"ids": list(chunk), "error": error, "ttl": conf.result_ttl_seconds},
            )
            for row in cursor.fetchall():
                ref = MessageRef(int(row[0]), row[1], row[2], row[3], row[4])
                cancelled.append(ref)
                payloads.append((ref, row[5]))
        for chunk in _chunks(running):
            cursor.execute(MESSAGE_REQUEST_CANCEL, {"ids": list(chunk)})
            requested += _refs(cursor.fetchall())
        continuations, continuation_error = _enqueue_on_error(payloads, error, using)
        if conf.notify and cancelled:
            done = [str(ref.task_id) for ref in cancelled]
            wake = [",".join(c) for c in _chunks(done, NOTIFY_IDS_PER_MESSAGE)]
            cursor.execute(RESULT_NOTIFY, {"channel": RESULT_CHANNEL, "payloads": wake})
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
    payloads: list[tuple[MessageRef, Any]], error: str, using: str
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


def messages_purge_count(queue: str, state: str, *, using: str = "default") -> int:
    """How many messages ``messages_purge`` would delete."""
    where = purge_where(state)
    with connections[using].cursor() as cursor:
        cursor.execute(
            f"SELECT count(*) FROM pg_queue_message WHERE queue_name = %(queue)s AND {where}",
            {"queue": queue},
        )
        (count,) = cursor.fetchone()
    return int(count)


def messages_purge(queue: str, state: str, *, using: str = "default") -> int:
    """Delete a queue's messages in ``state``, in chunks (each its own short transaction).

    No outcome is recorded and no continuation fires: a purge throws jobs away. A running job
    that is purged still runs to its end; its ack then matches nothing. Use cancel to end jobs
    with an outcome.
    """
    where = purge_where(state)
    statement = (
        "DELETE FROM pg_queue_message WHERE msg_id IN ("
        f" SELECT msg_id FROM pg_queue_message WHERE queue_name = %(queue)s AND {where}"
        " ORDER BY msg_id LIMIT %(limit)s FOR UPDATE)"
    )
    deleted = 0
    while True:
        with transaction.atomic(using=using), connections[using].cursor() as cursor:
            cursor.execute(statement, {"queue": queue, "limit": ACTION_CHUNK})
            count = cursor.rowcount
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


DEAD_LETTER_REFS = """
SELECT id, task_id, task_name, queue_name, reason FROM pg_queue_dead_letter
WHERE id = ANY(%(ids)s::bigint[]) ORDER BY id
"""

DEAD_LETTER_DISCARD = """
DELETE FROM pg_queue_dead_letter WHERE id = ANY(%(ids)s::bigint[])
RETURNING id, task_id, task_name, queue_name, reason
"""


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
                cursor.execute(DEAD_LETTER_REFS, {"ids": list(chunk)})
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
            cursor.execute(DEAD_LETTER_DISCARD, {"ids": list(chunk)})
            gone += _letter_refs(cursor.fetchall())
    return gone
