"""The worker process: one coordinator, N task threads, a heartbeat and a NOTIFY listener.

The coordinator (the thread that calls ``Worker.run``) owns one connection and is the only
thread that claims jobs: it claims batches sized to free capacity and a finisher thread writes each
batch of finishes (acks, retries, dead letters) in as few statements as possible, so the per-job
database cost is a fraction of a round trip. Task threads never touch the queue tables.

The heartbeat thread owns a second connection: it renews every in-flight lease in one UPDATE
every lease/3, re-arms expired claims of any worker, keeps the ``pg_worker`` row fresh and
sweeps expired results. The listener thread (optional) turns NOTIFYs into prompt wake-ups.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import queue
import random
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg

from pg_queue import claim, metrics, sql
from pg_queue.claim import Bury, Cancelled, ClaimedMessage, RetryLater, Success
from pg_queue.conf import NOTIFY_CHANNEL, queue_settings
from pg_queue.exceptions import PayloadError, TaskNotFound
from pg_queue.models import DeadLetterReason
from pg_queue.notify import Listener
from pg_queue.payload import TaskPayload
from pg_queue.producer import JobSpec
from pg_queue.registry import resolve
from pg_queue.worker.continuations import (
    enqueue_continuations,
    error_spec,
    lenient_on_error,
    send_job_failed,
    success_spec,
)
from pg_queue.worker.execution import (
    CANCELLED_BEFORE_START,
    Job,
    Outcome,
    failure_outcome,
    run_job,
    time_limit_of,
)

logger = logging.getLogger("pg_queue.worker")

#: Rows one re-arm sweep may touch, so a sweep after a mass crash stays a short statement.
REARM_BATCH = 1000
#: A pg_worker row whose heartbeat is older than max(3 leases, this) belongs to a dead process.
WORKER_ROW_STALE_MIN = 60.0
#: Rows one result-retention sweep may delete.
SWEEP_BATCH = 5000
#: Seconds between result-retention sweeps.
SWEEP_INTERVAL = 60.0
#: Reconnect backoff after a lost database connection: first and longest sleep.
RECONNECT_MIN, RECONNECT_MAX = 0.1, 5.0
#: How long task threads block on an empty work queue before re-checking for shutdown.
THREAD_POLL = 0.5
#: Default seconds in-flight jobs get to finish after a graceful stop request.
DEFAULT_SHUTDOWN_GRACE = 30.0
#: Prefetch tiers by mean task time (see Worker.capacity) and the EWMA weight of one sample.
FAST_TASK_SECONDS = 0.005
SLOW_TASK_SECONDS = 0.1
TASK_SECONDS_EWMA = 0.05
#: Longest wait at shutdown for the finisher to write the last finishes.
FINISHER_JOIN = 15.0
#: How often the coordinator looks for jobs past their time limit.
TIME_LIMIT_CHECK = 0.1
#: Exit code of a child process that stopped itself to kill a task stuck past its time limit;
#: the supervisor restarts it at once and does not count it as a crash.
EXIT_TIME_LIMIT = 75

_DB_ERRORS = (psycopg.OperationalError, psycopg.InterfaceError)


def parse_queues(spec: str | list[str] | None, default: str) -> dict[str, int]:
    """``"default=3,email=1"`` or ``"a,b"`` -> {queue: weight}; weights must be >= 1."""
    if not spec:
        return {default: 1}
    parts = spec.split(",") if isinstance(spec, str) else list(spec)
    out: dict[str, int] = {}
    for part in (p.strip() for p in parts):
        if not part:
            continue
        name, _, weight = part.partition("=")
        name = name.strip()
        if not name:
            raise ValueError(f"queue spec {spec!r} has an empty queue name")
        try:
            w = int(weight) if weight else 1
        except ValueError:
            raise ValueError(f"queue {name!r}: weight {weight!r} is not an integer") from None
        if w < 1:
            raise ValueError(f"queue {name!r}: weight must be >= 1, got {w}")
        out[name] = w
    if not out:
        raise ValueError(f"queue spec {spec!r} names no queue")
    return out


@dataclass
class WorkerStats:
    """Counters of one worker's life (also the exit log line)."""

    claimed: int = 0
    succeeded: int = 0
    retried: int = 0
    dead_lettered: int = 0
    lease_lost: int = 0
    rearmed: int = 0
    released: int = 0
    reconnects: int = 0
    time_limited: int = 0
    cancelled: int = 0
    claim_queries: int = 0  # claim statements run (jobs/claim_queries = mean claim batch)
    finish_batches: int = 0  # finish writes (jobs/finish_batches = mean ack batch)
    first_claim: float = 0.0  # time.monotonic() of the first non-empty claim
    last_finish: float = 0.0  # time.monotonic() of the last finish write

    @property
    def busy_seconds(self) -> float:
        """From the first claim to the last finish: the drain time, startup excluded."""
        return max(0.0, self.last_finish - self.first_claim) if self.first_claim else 0.0

    def as_dict(self) -> dict[str, int | float]:
        out: dict[str, int | float] = {
            k: v for k, v in self.__dict__.items() if k not in ("first_claim", "last_finish")
        }
        out["busy_s"] = round(self.busy_seconds, 3)
        return out


@dataclass
class _Pending:
    """Finishes waiting to be written; survives a lost connection and is retried."""

    successes: list[Success] = field(default_factory=list)
    retries: list[RetryLater] = field(default_factory=list)
    burials: list[Bury] = field(default_factory=list)
    cancels: list[Cancelled] = field(default_factory=list)

    def add(self, outcome: Outcome) -> None:
        if isinstance(outcome, Success):
            self.successes.append(outcome)
        elif isinstance(outcome, RetryLater):
            self.retries.append(outcome)
        elif isinstance(outcome, Bury):
            self.burials.append(outcome)
        else:
            self.cancels.append(outcome)

    def all(self) -> list[Outcome]:
        return [*self.successes, *self.retries, *self.burials, *self.cancels]

    def __bool__(self) -> bool:
        return bool(self.successes or self.retries or self.burials or self.cancels)

    def drop(self, msg_ids: set[int]) -> list[Outcome]:
        """Remove and return the finishes of ``msg_ids`` (jobs whose lease we lost)."""
        dropped: list[Outcome] = []
        for name in ("successes", "retries", "burials", "cancels"):
            kept: list[Outcome] = []
            for outcome in getattr(self, name):
                (dropped if outcome.msg.msg_id in msg_ids else kept).append(outcome)
            setattr(self, name, kept)
        return dropped


class Worker:
    """Drains the given queues until stopped, or (``burst``) until nothing is left to do."""

    def __init__(
        self,
        *,
        queues: dict[str, int] | None = None,
        concurrency: int | None = None,
        batch_size: int | None = None,
        burst: bool = False,
        max_tasks: int | None = None,
        worker_id: str | None = None,
        shutdown_grace: float = DEFAULT_SHUTDOWN_GRACE,
        time_limit: float | None = None,
        exit_on_time_limit: bool = False,
        health_file: str | None = None,
        notify: bool | None = None,
        database: str = "default",
        on_progress: Callable[[WorkerStats], None] | None = None,
    ) -> None:
        conf = queue_settings()
        self.conf = conf
        self.queues = queues or {conf.default_queue: 1}
        self.concurrency = concurrency or conf.concurrency
        self.batch_size = batch_size or conf.batch_size
        if self.concurrency < 1 or self.batch_size < 1:
            raise ValueError("concurrency and batch size must be >= 1")
        if max_tasks is not None and max_tasks < 1:
            raise ValueError("max_tasks must be >= 1")
        self.burst = burst
        self.max_tasks = max_tasks
        self.worker_id = worker_id or (
            f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        )
        self.shutdown_grace = shutdown_grace
        self.time_limit = conf.time_limit if time_limit is None else time_limit
        # Process mode: a stuck thread cannot be killed, but its process can. The child stops
        # itself (after writing the timeout outcome) and the supervisor starts a fresh one.
        self.exit_on_time_limit = exit_on_time_limit
        self.time_limit_exit = False
        self.health_file = health_file
        self.database = database
        self.on_progress = on_progress
        self.stats = WorkerStats()
        # Mean task run time (EWMA, written by task threads); sizes the prefetch, see capacity.
        self._avg_task_seconds = FAST_TASK_SECONDS * 2
        self._work: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._done: deque[Outcome] = deque()
        self._done_event = threading.Event()  # task threads -> finisher
        self._histogram_children: dict[str, tuple[Any, Any]] = {}
        self._finisher_stop = threading.Event()
        self._finisher: threading.Thread | None = None
        self.finisher_busy = False  # holds finishes it has not written yet
        self._wake = threading.Event()
        # False while the claim loop waits for new jobs only (its last claim came back short):
        # then a finished job frees capacity nobody needs, and waking the loop would only buy an
        # empty claim (measured: ~2 wasted claims per job under request-reply traffic).
        self._wake_on_finish = True
        self._last_claim_full = False
        # Queues named by NOTIFYs since the last claim. After a short claim (every queue was
        # drained) only these can have new immediate jobs, so a multi-queue worker woken by
        # one queue's NOTIFY claims that queue alone instead of paying an empty claim per queue.
        # Due delayed jobs and retries send no NOTIFY: every queue is still claimed at least
        # every POLL_INTERVAL_MAX, however many NOTIFYs keep the loop from idling that long.
        self._notified: set[str] = set()
        self._all_queues_claimed_at = 0.0
        self._woken_by_wake = False  # did the last idle wait end by a wake-up (not a timeout)?
        self._stop = threading.Event()
        self._halt = threading.Event()  # set when the coordinator has finished
        self._inflight: dict[int, ClaimedMessage] = {}
        self._inflight_lock = threading.Lock()
        # Jobs the heartbeat found taken from us: not renewed, their finish is discarded.
        self._lost: set[int] = set()
        # Jobs an operator cancelled while we hold them (seen by the heartbeat).
        self._cancel_flags: set[int] = set()
        # msg_id -> (job, start monotonic, limit) of jobs a task thread is running right now.
        self._running: dict[int, tuple[Job, float, float]] = {}
        self._running_lock = threading.Lock()
        self._next_limit_check = 0.0
        self.notify = conf.notify if notify is None else notify
        self._notify_results = self.notify
        self._listener: Listener | None = None
        self._threads: list[threading.Thread] = []
        self._conn: psycopg.Connection[Any] | None = None
        self.last_claim_loop = time.monotonic()
        self.last_heartbeat = time.monotonic()

    # --- public -------------------------------------------------------------------------------

    def request_stop(self) -> None:
        """Graceful stop: no more claims; in-flight jobs get ``shutdown_grace`` seconds."""
        self._stop.set()
        self._wake.set()

    def run(self) -> WorkerStats:
        """Run until stopped (or burst done / max_tasks reached); returns the counters."""
        self._conn = self._connect()
        self._register()
        no_vacuum = claim.vacuum_warning(self._conn)
        if no_vacuum:
            logger.warning(
                "%s: every job leaves two dead row versions in pg_queue_message, so the table "
                "and its indexes grow until VACUUM runs; turn autovacuum on or schedule "
                "VACUUM pg_queue_message",
                no_vacuum,
            )
        self._start_threads()
        logger.info(
            "worker started worker_id=%s queues=%s concurrency=%d batch=%d burst=%s",
            self.worker_id,
            ",".join(f"{q}={w}" for q, w in self.queues.items()),
            self.concurrency,
            self.batch_size,
            self.burst,
        )
        try:
            self._coordinate()
        finally:
            self._shutdown()
        logger.info(
            "worker stopped worker_id=%s %s",
            self.worker_id,
            " ".join(f"{k}={v}" for k, v in self.stats.as_dict().items()),
        )
        return self.stats

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Healthy while the claim loop and the heartbeat are both recent."""
        now = time.monotonic()
        loop_age = now - self.last_claim_loop
        beat_age = now - self.last_heartbeat
        healthy = loop_age <= self.claim_loop_stale and beat_age <= self.heartbeat_stale
        return healthy, {
            "worker_id": self.worker_id,
            "claim_loop_age": round(loop_age, 3),
            "heartbeat_age": round(beat_age, 3),
            "in_flight": len(self._inflight),
            "stopping": self._stop.is_set(),
        }

    @property
    def heartbeat_interval(self) -> float:
        return max(0.05, min(self.conf.lease_seconds / 3, self.conf.rearm_interval))

    @property
    def heartbeat_stale(self) -> float:
        """Two missed beats (plus slack) and the heartbeat counts as dead."""
        return 2 * self.heartbeat_interval + 1.0

    @property
    def claim_loop_stale(self) -> float:
        return max(10.0, 4 * self.conf.poll_interval_max, self.conf.lease_seconds)

    def _write_health_file(self) -> None:
        """For a supervisor: wall-clock ages it can compare against (process mode only)."""
        if not self.health_file:
            return
        healthy, details = self.health()
        tmp = f"{self.health_file}.tmp"
        try:
            with open(tmp, "w") as fh:
                json.dump({"healthy": healthy, "written_at": time.time(), **details}, fh)
            os.replace(tmp, self.health_file)
        except OSError as exc:
            logger.warning("health file not written path=%s error=%s", self.health_file, exc)

    # --- coordinator --------------------------------------------------------------------------

    def _coordinate(self) -> None:
        idle = self.conf.poll_interval_min
        reconnect_sleep = RECONNECT_MIN
        stop_deadline: float | None = None
        while True:
            self._wake.clear()
            self._wake_on_finish = True  # set before looking at capacity, so no finish is missed
            self.last_claim_loop = time.monotonic()
            worked = False
            waits_for_work = False
            if self._running and self.last_claim_loop >= self._next_limit_check:
                self._enforce_time_limits()
            try:
                if self._stop.is_set():
                    if stop_deadline is None:
                        stop_deadline = time.monotonic() + self.shutdown_grace
                        self._release_unstarted()
                    if not (self._inflight or self._done) or time.monotonic() >= stop_deadline:
                        return
                elif self._claim_allowed():
                    got = self._claim()
                    if got:
                        worked = True
                    elif self._finished_claiming():
                        return
                    waits_for_work = not self._last_claim_full
                elif self._finished_claiming():  # e.g. --max-tasks reached and all acked
                    return
                reconnect_sleep = RECONNECT_MIN
            except _DB_ERRORS as exc:
                self.stats.reconnects += 1
                metrics.RECONNECTS.inc()
                logger.warning(
                    "database connection lost worker_id=%s error=%s; reconnecting in %.1fs",
                    self.worker_id,
                    exc,
                    reconnect_sleep,
                )
                self._stop.wait(reconnect_sleep)
                reconnect_sleep = min(reconnect_sleep * 2, RECONNECT_MAX)
                self._reconnect()
                continue
            if self.on_progress is not None:
                self.on_progress(self.stats)
            if worked:
                idle = self.conf.poll_interval_min
                if self._last_claim_full:  # there may be more: claim again at once
                    continue
            if waits_for_work and not self.burst and self.max_tasks is None:
                self._wake_on_finish = False
            self._woken_by_wake = self._wake.wait(idle)
            if self._woken_by_wake:
                # Woken by activity (a NOTIFY, or the finisher freeing capacity): work tends to
                # come in bursts, so poll eagerly again instead of continuing the backoff.
                idle = self.conf.poll_interval_min
            else:
                idle = min(idle * 2, self.conf.poll_interval_max)

    @property
    def capacity(self) -> int:
        """Jobs this worker may hold: its threads plus a prefetch sized to how fast tasks are.

        Fast tasks (under FAST_TASK_SECONDS) get two batches of prefetch, so the next claim
        overlaps the current batch; medium ones one batch; slow ones (over SLOW_TASK_SECONDS)
        one waiting job per thread, so a worker never hoards slow jobs other workers could run.
        """
        avg = self._avg_task_seconds
        if avg < FAST_TASK_SECONDS:
            prefetch = 2 * self.batch_size
        elif avg < SLOW_TASK_SECONDS:
            prefetch = self.batch_size
        else:
            prefetch = min(self.batch_size, self.concurrency)
        return self.concurrency + prefetch

    def _claim_allowed(self) -> bool:
        capacity = self.capacity
        free = capacity - len(self._inflight)
        if self.max_tasks is not None and self.stats.claimed >= self.max_tasks:
            return False
        threshold = max(1, min(self.batch_size, capacity - self.concurrency) // 2)
        return free >= threshold or (free > 0 and not self._inflight)

    def _finished_claiming(self) -> bool:
        """True when a burst or max_tasks worker has nothing more to do."""
        if self._inflight or self._done or self.finisher_busy:
            return False
        if self.max_tasks is not None and self.stats.claimed >= self.max_tasks:
            return True
        if not self.burst:
            return False
        assert self._conn is not None
        return not claim.message_due_soon(
            self._conn,
            queues=list(self.queues),
            lookahead=self.conf.burst_lookahead,
            lease=self.conf.lease_seconds,
        )

    def _queue_order(self) -> list[str]:
        """Queues in a weighted random order (weight 3 comes first three times as often)."""
        if len(self.queues) == 1:
            return list(self.queues)
        keyed = [(random.random() ** (1.0 / w), q) for q, w in self.queues.items()]
        return [q for _, q in sorted(keyed, reverse=True)]

    def _claim(self) -> int:
        assert self._conn is not None
        limit = min(self.batch_size, self.capacity - len(self._inflight))
        if self.max_tasks is not None:
            limit = min(limit, self.max_tasks - self.stats.claimed)
        total = 0
        notified, self._notified = self._notified, set()
        order = self._queue_order()
        now = time.monotonic()
        if (
            notified
            and not self._last_claim_full
            and self._woken_by_wake
            and now - self._all_queues_claimed_at < self.conf.poll_interval_max
        ):
            order = [q for q in order if q in notified]
        elif len(order) > 1:
            self._all_queues_claimed_at = now
        self._last_claim_full = False
        for queue_name in order:
            if limit - total <= 0:
                break
            self.stats.claim_queries += 1
            messages = claim.message_claim(
                self._conn,
                queue=queue_name,
                limit=limit - total,
                lease=self.conf.lease_seconds,
                worker_id=self.worker_id,
            )
            if messages:
                self._accept(messages)
                total += len(messages)
        self._last_claim_full = total >= limit
        return total

    def _accept(self, messages: list[ClaimedMessage]) -> None:
        """Decode and hand claimed messages to the task threads (or bury the hopeless)."""
        now = time.monotonic()
        if not self.stats.claimed:
            self.stats.first_claim = now
        self.stats.claimed += len(messages)
        metrics.CLAIMED.labels(messages[0].queue_name).inc(len(messages))
        with self._inflight_lock:
            for msg in messages:
                self._inflight[msg.msg_id] = msg
        for msg in messages:
            try:
                payload = TaskPayload.from_json(msg.payload)
                task = resolve(msg.task_name)
            except PayloadError as exc:
                self._reject(msg, DeadLetterReason.UNDECODABLE, str(exc))
                continue
            except TaskNotFound as exc:
                self._reject(msg, DeadLetterReason.UNKNOWN_TASK, str(exc))
                continue
            except Exception as exc:  # a payload we cannot make sense of must not kill us
                self._reject(msg, DeadLetterReason.UNDECODABLE, f"{type(exc).__name__}: {exc}")
                continue
            if msg.cancel_requested:
                self._done.append(
                    Cancelled(msg, CANCELLED_BEFORE_START, lenient_on_error(msg.payload))
                )
                self._done_event.set()
                continue
            if msg.attempts > msg.max_attempts:
                self._reject(
                    msg,
                    DeadLetterReason.EXHAUSTED,
                    f"attempts {msg.attempts} exceed max_attempts {msg.max_attempts}",
                )
                continue
            self._work.put(Job(msg, payload, task, now, time_limit_of(task, self.time_limit)))

    def _reject(self, msg: ClaimedMessage, reason: str, error: str) -> None:
        logger.error(
            "job dead-lettered before running task_id=%s task=%s queue=%s reason=%s error=%s",
            msg.task_id,
            msg.task_name,
            msg.queue_name,
            reason,
            error,
        )
        self._done.append(Bury(msg, reason, error, "", None, lenient_on_error(msg.payload)))
        self._done_event.set()

    def _finish(self, conn: psycopg.Connection[Any], pending: _Pending) -> None:
        """Write a batch of finishes: one statement per kind present.

        A plain batch of acks is one autocommit statement. When continuations must fire, the
        ack/dead-letter statements and the continuation inserts share one transaction.
        """
        if self._lost:
            with self._inflight_lock:
                dropped = pending.drop(self._lost)
                for outcome in dropped:
                    self._lost.discard(outcome.msg.msg_id)
            for outcome in dropped:
                logger.info(
                    "finish discarded, its lease was lost earlier task_id=%s task=%s queue=%s",
                    outcome.msg.task_id,
                    outcome.msg.task_name,
                    outcome.msg.queue_name,
                )
            if not pending:
                return
        self.stats.finish_batches += 1
        self.stats.last_finish = time.monotonic()
        # Out of the in-flight set before the write: the heartbeat must not renew (and then
        # report as lost) a row this very write is deleting. If the write fails, these are
        # retried from `pending`; their leases are simply no longer renewed meanwhile.
        with self._inflight_lock:
            for o in pending.all():
                self._inflight.pop(o.msg.msg_id, None)
                self._cancel_flags.discard(o.msg.msg_id)
        fires = (
            any(s.on_success for s in pending.successes)
            or any(b.on_error for b in pending.burials)
            or any(c.on_error for c in pending.cancels)
        )
        if fires:
            with conn.transaction():
                buried = self._write_finishes(conn, pending)
        else:
            buried = self._write_finishes(conn, pending)
        if buried:
            send_job_failed(
                (b.msg.task_id, b.msg.task_name, b.msg.queue_name, b.reason, b.error)
                for b in pending.burials
                if b.msg.msg_id in buried
            )

    def _write_finishes(self, conn: psycopg.Connection[Any], pending: _Pending) -> set[int]:
        """The statements of ``_finish``; returns the msg_ids dead-lettered."""
        ttl = float(self.conf.result_ttl_seconds)
        continuations = []
        buried: set[int] = set()
        if pending.successes:
            acked = claim.message_ack(conn, pending.successes, ttl=ttl, notify=self._notify_results)
            self.stats.succeeded += len(acked)
            _count_by_queue(metrics.SUCCEEDED, pending.successes, acked)
            self._count_lost(pending.successes, acked, "ack")
            continuations += [
                (s.msg.task_id, success_spec(s.on_success, s.value))
                for s in pending.successes
                if s.on_success is not None and s.msg.msg_id in acked
            ]
        if pending.retries:
            retried = claim.message_retry(conn, pending.retries)
            self.stats.retried += len(retried)
            _count_by_queue(metrics.RETRIED, pending.retries, retried)
            _count_by_queue(metrics.FAILED, pending.retries, retried)
            self._count_lost(pending.retries, retried, "retry")
            for r in pending.retries:
                if r.msg.msg_id in retried:
                    logger.warning(
                        "job failed, retrying task_id=%s task=%s queue=%s attempt=%d/%d "
                        "delay=%.2fs error=%s",
                        r.msg.task_id,
                        r.msg.task_name,
                        r.msg.queue_name,
                        r.msg.attempts,
                        r.msg.max_attempts,
                        r.delay,
                        r.error,
                    )
        if pending.burials:
            buried = claim.message_bury(conn, pending.burials, ttl=ttl, notify=self._notify_results)
            self.stats.dead_lettered += len(buried)
            _count_by_queue(metrics.DEAD_LETTERED, pending.burials, buried)
            _count_by_queue(metrics.FAILED, pending.burials, buried)
            self._count_lost(pending.burials, buried, "dead-letter")
            for b in pending.burials:
                if b.msg.msg_id not in buried:
                    continue
                logger.error(
                    "job dead-lettered task_id=%s task=%s queue=%s attempts=%d reason=%s error=%s",
                    b.msg.task_id,
                    b.msg.task_name,
                    b.msg.queue_name,
                    b.msg.attempts,
                    b.reason,
                    b.error,
                )
            continuations += _error_continuations(pending.burials, buried)
        if pending.cancels:
            cancelled = claim.message_cancel(
                conn, pending.cancels, ttl=ttl, notify=self._notify_results
            )
            self.stats.cancelled += len(cancelled)
            self._count_lost(pending.cancels, cancelled, "cancel")
            for c in pending.cancels:
                if c.msg.msg_id not in cancelled:
                    continue
                logger.warning(
                    "job cancelled task_id=%s task=%s queue=%s error=%s",
                    c.msg.task_id,
                    c.msg.task_name,
                    c.msg.queue_name,
                    c.error,
                )
            continuations += _error_continuations(pending.cancels, cancelled)
        enqueue_continuations(conn, continuations)
        return buried

    def _count_lost(self, items: list[Any], written: set[int], what: str) -> None:
        for item in items:
            if item.msg.msg_id not in written:
                self.stats.lease_lost += 1
                metrics.LEASE_LOST.labels(item.msg.queue_name).inc()
                logger.warning(
                    "%s skipped: lease lost task_id=%s task=%s queue=%s",
                    what,
                    item.msg.task_id,
                    item.msg.task_name,
                    item.msg.queue_name,
                )

    def _release_unstarted(self) -> None:
        """On stop, hand prefetched jobs that no thread has started back to the queue."""
        unstarted: dict[int, uuid.UUID] = {}
        while True:
            try:
                job = self._work.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                unstarted[job.msg.msg_id] = job.msg.lease_token
        if unstarted and self._conn is not None:
            released = claim.message_release(self._conn, unstarted)
            self.stats.released += len(released)
        with self._inflight_lock:
            for msg_id in unstarted:
                self._inflight.pop(msg_id, None)

    # --- threads ------------------------------------------------------------------------------

    def _start_threads(self) -> None:
        for i in range(self.concurrency):
            self._spawn(self._task_loop, f"pg-queue-task-{i}")
        self._finisher = self._spawn(self._finish_loop, "pg-queue-finish")
        self._spawn(self._heartbeat_loop, "pg-queue-heartbeat")
        if self.notify:
            self._listener = Listener(NOTIFY_CHANNEL, self._on_notify, self._connect)
            if not self._listener.start():
                # Behind transaction pooling nobody can LISTEN; stop paying for NOTIFY too.
                self._notify_results = False

    def _on_notify(self, payload: str) -> None:
        if payload in self.queues:
            self._notified.add(payload)
            self._wake.set()

    def _spawn(self, target: Callable[[], None], name: str) -> threading.Thread:
        # Daemon so that a task stuck past the shutdown grace cannot keep the process alive;
        # every thread is still joined (with a timeout) in _shutdown.
        t = threading.Thread(target=target, name=name, daemon=True)
        t.start()
        self._threads.append(t)
        return t

    def _task_loop(self) -> None:
        while not self._halt.is_set():
            try:
                job = self._work.get(timeout=THREAD_POLL)
            except queue.Empty:
                continue
            if job is None:
                return
            msg = job.msg
            start = time.monotonic()
            started = msg.claimed_at + dt.timedelta(seconds=start - job.claimed_mono)
            if msg.attempts == 1:  # from due time, so a delay is not counted as latency
                self._histograms(msg.queue_name)[0].observe(
                    max(0.0, (started - msg.available_at).total_seconds())
                )
            with self._running_lock:
                self._running[msg.msg_id] = (job, start, job.time_limit)
            outcome = run_job(job, self.worker_id, started, self._cancel_check(msg.msg_id))
            with self._running_lock:
                mine = self._running.pop(msg.msg_id, None) is not None
            if not mine:
                # The coordinator failed this job for its time limit and started a replacement
                # thread; this one's late outcome is discarded and the thread retires.
                logger.warning(
                    "late finish discarded after time limit task_id=%s task=%s queue=%s",
                    msg.task_id,
                    msg.task_name,
                    msg.queue_name,
                )
                return
            took = time.monotonic() - start
            self._avg_task_seconds += TASK_SECONDS_EWMA * (took - self._avg_task_seconds)
            self._histograms(msg.queue_name)[1].observe(took)
            self._done.append(outcome)
            self._done_event.set()

    def _cancel_check(self, msg_id: int) -> Callable[[], bool]:
        flags = self._cancel_flags
        return lambda: msg_id in flags

    def _finish_loop(self) -> None:
        """The finisher: writes finished jobs in batches on its own connection.

        Running beside the claim loop, the database works on the next claim and the last
        batch's acks at the same time (two backends), instead of the two taking turns. Unwritten
        finishes survive a lost connection and are retried after a reconnect with backoff (every
        write is lease-gated, so a retry after an unknown commit is harmless).
        """
        conn: psycopg.Connection[Any] | None = None
        pending = _Pending()
        backoff = RECONNECT_MIN
        while True:
            self._done_event.clear()
            if self._done:
                self.finisher_busy = True  # before popping: _done and busy are never both off
            while self._done:
                pending.add(self._done.popleft())
            if pending:
                try:
                    if conn is None or conn.closed:
                        conn = self._connect()
                    self._finish(conn, pending)
                    pending = _Pending()
                    self.finisher_busy = False
                    backoff = RECONNECT_MIN
                    if self._wake_on_finish:  # capacity freed: the claim loop may claim again
                        self._wake.set()
                except _DB_ERRORS as exc:
                    self.stats.reconnects += 1
                    metrics.RECONNECTS.inc()
                    logger.warning(
                        "finish failed, will retry worker_id=%s jobs=%d error=%s",
                        self.worker_id,
                        len(pending.all()),
                        exc,
                    )
                    if conn is not None:
                        conn.close()
                    conn = None
                    if self._halt.wait(backoff):
                        break
                    backoff = min(backoff * 2, RECONNECT_MAX)
                continue
            if self._finisher_stop.is_set():
                break
            self._done_event.wait(THREAD_POLL)
        if pending:  # only when halted with the database unreachable
            logger.error(
                "finishes not written at exit worker_id=%s jobs=%d; their leases expire and "
                "any worker re-arms them",
                self.worker_id,
                len(pending.all()),
            )
        if conn is not None:
            conn.close()

    def _histograms(self, queue_name: str) -> tuple[Any, Any]:
        """The per-queue (enqueue-to-start, duration) histogram children, looked up once.

        ``.labels()`` takes a lock and builds a key on every call; per job that adds up.
        """
        found = self._histogram_children.get(queue_name)
        if found is None:
            found = self._histogram_children[queue_name] = (
                metrics.ENQUEUE_TO_START.labels(queue_name),
                metrics.TASK_DURATION.labels(queue_name),
            )
        return found

    def _enforce_time_limits(self) -> None:
        """Fail jobs past their time limit, stop renewing them, and recover their slots."""
        now = time.monotonic()
        self._next_limit_check = now + TIME_LIMIT_CHECK
        with self._running_lock:
            overdue = [
                (msg_id, job, limit)
                for msg_id, (job, start, limit) in self._running.items()
                if limit and now - start > limit
            ]
            for msg_id, _job, _limit in overdue:
                del self._running[msg_id]
        for _msg_id, job, limit in overdue:
            msg = job.msg
            started = msg.claimed_at + dt.timedelta(seconds=now - limit - job.claimed_mono)
            error = f"TimeoutError: task exceeded its time limit of {limit:g}s"
            self._done.append(failure_outcome(job, error, "", started))
            self._done_event.set()
            self.stats.time_limited += 1
            metrics.TIME_LIMITED.inc()
            logger.error(
                "time limit exceeded task_id=%s task=%s queue=%s limit=%gs attempt=%d/%d",
                msg.task_id,
                msg.task_name,
                msg.queue_name,
                limit,
                msg.attempts,
                msg.max_attempts,
            )
            if self.exit_on_time_limit:
                self.time_limit_exit = True
                self.request_stop()
            else:
                self._spawn(self._task_loop, f"pg-queue-task-r{self.stats.time_limited}")

    def _heartbeat_loop(self) -> None:
        beat = self.heartbeat_interval
        next_rearm = time.monotonic()
        next_sweep = time.monotonic() + SWEEP_INTERVAL * random.random()
        conn: psycopg.Connection[Any] | None = None
        while not self._halt.is_set():
            try:
                if conn is None or conn.closed:
                    conn = self._connect()
                self._renew_leases(conn)
                conn.execute(
                    sql.WORKER_HEARTBEAT,
                    {
                        "worker_id": self.worker_id,
                        "state": "stopping" if self._stop.is_set() else "running",
                    },
                )
                now = time.monotonic()
                if now >= next_rearm:
                    rearmed = claim.message_rearm(conn, limit=REARM_BATCH)
                    buried = self._rearm_exhausted(conn)
                    if rearmed or buried:
                        self.stats.rearmed += rearmed
                        metrics.REARMED.inc(rearmed)
                        logger.warning(
                            "re-armed expired leases worker_id=%s rearmed=%d dead_lettered=%d",
                            self.worker_id,
                            rearmed,
                            buried,
                        )
                    conn.execute(
                        sql.WORKER_PRUNE,
                        {"stale": max(3 * self.conf.lease_seconds, WORKER_ROW_STALE_MIN)},
                    )
                    next_rearm = now + self.conf.rearm_interval
                if now >= next_sweep:
                    claim.result_sweep(conn, limit=SWEEP_BATCH)
                    next_sweep = now + SWEEP_INTERVAL
                self.last_heartbeat = time.monotonic()
                self._write_health_file()
            except _DB_ERRORS as exc:
                logger.warning("heartbeat failed worker_id=%s error=%s", self.worker_id, exc)
                if conn is not None:
                    conn.close()
                conn = None
            self._halt.wait(beat)
        if conn is not None:
            conn.close()

    def _rearm_exhausted(self, conn: psycopg.Connection[Any]) -> int:
        """Dead-letter expired last attempts; fire their on_error in the same transaction."""
        with conn.transaction():
            rows = claim.message_rearm_exhausted(
                conn, limit=REARM_BATCH, ttl=float(self.conf.result_ttl_seconds)
            )
            continuations = []
            for task_id, _name, _queue, payload, error in rows:
                spec = lenient_on_error(payload)
                if spec is not None:
                    continuations.append((task_id, error_spec(spec, task_id, error)))
            enqueue_continuations(conn, continuations)
        if rows:
            metrics.DEAD_LETTERED.labels(rows[0][2]).inc(len(rows))
            send_job_failed(
                (task_id, name, queue, DeadLetterReason.LEASE_EXPIRED, error)
                for task_id, name, queue, _payload, error in rows
            )
        return len(rows)

    def _renew_leases(self, conn: psycopg.Connection[Any]) -> None:
        with self._inflight_lock:
            held = {m.msg_id: m.lease_token for m in self._inflight.values()}
            if not held:
                return
            kept = claim.lease_extend_flags(conn, held, lease=self.conf.lease_seconds)
            lost = [self._inflight.pop(i) for i in held if i not in kept and i in self._inflight]
            self._lost.update(m.msg_id for m in lost)
            self._cancel_flags.update(i for i, cancel in kept.items() if cancel)
        for msg in lost:
            # Counted and logged once; the task may still be running, but its finish will be
            # discarded (the lease-gated write would be a no-op anyway).
            self.stats.lease_lost += 1
            metrics.LEASE_LOST.labels(msg.queue_name).inc()
            logger.warning(
                "lease lost task_id=%s task=%s queue=%s worker_id=%s",
                msg.task_id,
                msg.task_name,
                msg.queue_name,
                self.worker_id,
            )

    # --- lifecycle ----------------------------------------------------------------------------

    def _connect(self) -> psycopg.Connection[Any]:
        return claim.worker_connection(self.database)

    def _reconnect(self) -> None:
        if self._conn is not None:
            self._conn.close()
        try:
            self._conn = self._connect()
        except _DB_ERRORS as exc:
            logger.warning("reconnect failed worker_id=%s error=%s", self.worker_id, exc)

    def _register(self) -> None:
        assert self._conn is not None
        self._conn.execute(
            sql.WORKER_REGISTER,
            {
                "worker_id": self.worker_id,
                "hostname": socket.gethostname(),
                "pid": os.getpid(),
                "queues": json.dumps(list(self.queues)),
                "concurrency": self.concurrency,
            },
        )

    def _shutdown(self) -> None:
        """Stop threads, hand back what is still ours, and remove the worker row."""
        self._stop.set()
        for _ in range(self.concurrency):
            self._work.put(None)
        deadline = time.monotonic() + 2.0
        for t in self._threads:
            if t.name.startswith("pg-queue-task"):
                t.join(timeout=max(0.0, deadline - time.monotonic()))
        # The finisher writes whatever finished, then exits.
        self._finisher_stop.set()
        self._done_event.set()
        if self._finisher is not None:
            self._finisher.join(timeout=FINISHER_JOIN)
        try:
            if self._conn is None or self._conn.closed:
                self._conn = self._connect()
            with self._inflight_lock:
                abandoned = {m.msg_id: m.lease_token for m in self._inflight.values()}
            if abandoned:
                released = claim.message_release(self._conn, abandoned)
                self.stats.released += len(released)
                logger.warning(
                    "released unfinished jobs at shutdown worker_id=%s count=%d",
                    self.worker_id,
                    len(released),
                )
            self._conn.execute(sql.WORKER_UNREGISTER, {"worker_id": self.worker_id})
        except _DB_ERRORS as exc:
            logger.error(
                "shutdown could not reach the database worker_id=%s error=%s; leases will "
                "expire and any worker re-arms them",
                self.worker_id,
                exc,
            )
        finally:
            self._halt.set()
            if self._listener is not None:
                self._listener.stop()
            # One shared deadline; task threads still alive here are stuck in a task past the
            # grace (daemon threads, already given their chance above) and are not waited for.
            deadline = time.monotonic() + THREAD_POLL * 2 + 1.0
            for t in self._threads:
                if t.name.startswith("pg-queue-task") and t.is_alive():
                    continue
                t.join(timeout=max(0.0, deadline - time.monotonic()))
            if self._conn is not None:
                self._conn.close()


def _count_by_queue(counter: Any, items: list[Any], written: set[int]) -> None:
    """Add one batch to a per-queue counter (one inc per queue, not per job)."""
    per_queue: dict[str, int] = {}
    for item in items:
        if item.msg.msg_id in written:
            per_queue[item.msg.queue_name] = per_queue.get(item.msg.queue_name, 0) + 1
    for queue_name, count in per_queue.items():
        counter.labels(queue_name).inc(count)


def _error_continuations(
    items: list[Bury] | list[Cancelled], written: set[int]
) -> list[tuple[uuid.UUID, JobSpec]]:
    """The on_error continuations of the dead-lettered or cancelled jobs actually written."""
    return [
        (item.msg.task_id, error_spec(item.on_error, item.msg.task_id, item.error))
        for item in items
        if item.on_error is not None and item.msg.msg_id in written
    ]
