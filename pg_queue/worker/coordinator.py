"""``Coordinator``: the claim loop, the only code that claims jobs.

It runs on the thread that called ``Worker.run``, owns one connection, and claims batches sized
to free capacity (threads plus a prefetch tuned to how fast tasks are). Each claimed job is
decoded and resolved inside its own guard: a payload no decoder can return exactly, or a task
name nobody registered, dead-letters that one job with its reason and never the batch.
On a graceful stop it hands unstarted jobs back at once and gives running ones the grace.

An unexpected exception in one pass is logged with its traceback, counted, and turns health
red; the loop goes on after a short backoff instead of ending the process.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg

from pg_queue import metrics
from pg_queue.core.conf import KEY_WAKE, TENANT_WAKE, WAKE_MARK, QueueSettings
from pg_queue.core.continuations import lenient_on_error
from pg_queue.core.exceptions import PayloadError, TaskNotFound
from pg_queue.core.outcomes import Bury, Cancelled, ClaimedJob, storable_text
from pg_queue.core.payload import TaskPayload, loads
from pg_queue.db import queries
from pg_queue.models import DeadLetterReason
from pg_queue.registry import resolve
from pg_queue.worker.execution import CANCELLED_BEFORE_START, JobRun, time_limit_of
from pg_queue.worker.finisher import Finisher
from pg_queue.worker.inflight import InFlight
from pg_queue.worker.pool import FAST_TASK_SECONDS, Pool
from pg_queue.worker.service import RESTART_BACKOFF_MAX, record_thread_error
from pg_queue.worker.stats import WorkerStats

logger = logging.getLogger("pg_queue.worker")

#: Reconnect backoff after a lost database connection: first and longest sleep.
RECONNECT_MIN, RECONNECT_MAX = 0.1, 5.0
#: Mean task time above which prefetch shrinks to one waiting job per thread.
SLOW_TASK_SECONDS = 0.1
#: Seconds between the probes of what the worker's queues hold (tenants' jobs, keyed jobs).
KINDS_PROBE_INTERVAL = 1.0
#: Seconds after which a worker sets its wake-up marks again though it saw no NOTIFY take
#: them (a crash empties their unlogged table; a pruning may have deleted them).
MARKS_REFRESH = 30.0
#: Seconds over which the worker counts its NOTIFYs, claims and jobs to choose its marks' kind.
MARKS_WINDOW = 0.5
#: Standing marks turn takeable when a window brings this many NOTIFYs per claim (and at least
#: MARKS_FLOOD of them): most NOTIFYs then arrive while a claim is under way and are wasted.
FLOOD_NOTIFIES_PER_CLAIM, MARKS_FLOOD = 3, 50
#: Takeable marks stand again when a window's claims bring fewer jobs than this each: wake-ups
#: come one job at a time, and setting the mark again after each would cost a statement per job.
FLOOD_JOBS_PER_CLAIM = 2

_DB_ERRORS = (psycopg.OperationalError, psycopg.InterfaceError)


class Coordinator:
    """The claim loop; see the module docstring."""

    def __init__(
        self,
        *,
        conf: QueueSettings,
        worker_id: str,
        queues: dict[str, int],
        concurrency: int,
        batch_size: int,
        burst: bool,
        max_tasks: int | None,
        time_limit: float,
        shutdown_grace: float,
        connect: Callable[[], psycopg.Connection[Any]],
        inflight: InFlight,
        pool: Pool,
        finisher: Finisher,
        stats: WorkerStats,
        stop: threading.Event,
        on_progress: Callable[[WorkerStats], None] | None = None,
    ) -> None:
        self.conf = conf
        self.worker_id = worker_id
        self.queues = queues
        self.concurrency = concurrency
        self.batch_size = batch_size
        self.burst = burst
        self.max_tasks = max_tasks
        self.time_limit = time_limit
        self.shutdown_grace = shutdown_grace
        self.connect = connect
        self.inflight = inflight
        self.pool = pool
        self.finisher = finisher
        self.stats = stats
        self.stop = stop
        self.on_progress = on_progress
        self.conn: psycopg.Connection[Any] | None = None
        self.errors = 0
        self.last_loop = time.monotonic()
        self.wake_event = threading.Event()
        # False while the loop waits for new jobs only (its last claim came back short): then a
        # finished job frees capacity nobody needs, and waking the loop would only buy an empty
        # claim (measured: ~2 wasted claims per job under request-reply traffic).
        self.wake_on_finish = True
        self._last_claim_full = False
        # Queues named by NOTIFYs since the last queries. After a short claim (every queue was
        # drained) only these can have new immediate jobs, so a multi-queue worker woken by
        # one queue's NOTIFY claims that queue alone instead of paying an empty claim per queue.
        # Due delayed jobs and retries send no NOTIFY: every queue is still claimed at least
        # every POLL_INTERVAL_MAX, however many NOTIFYs keep the loop from idling that long.
        self._notified: set[str] = set()
        self._all_queues_claimed_at = 0.0
        # Queues holding a tenant's job are claimed round-robin across tenants (JOB_CLAIM_FAIR),
        # the others by the plain claim, which leaves tenants' jobs alone; queues with no live
        # job that has a resource key by the keyless claim, which leaves keyed jobs alone. A
        # marked NOTIFY switches a queue at once; a probe every KINDS_PROBE_INTERVAL finds the
        # jobs no NOTIFY announced (delayed, retried, requeued) and switches queues back. A queue
        # is keyed from the start, until the first probe.
        self._fair: set[str] = set()
        self._keyed: set[str] = set(queues)
        self._hints: list[tuple[str, str]] = []  # (queue, mark) from NOTIFYs, for the claimer
        self._tenant_start: dict[str, tuple[str, int]] = {}  # where, and how many last time
        self._kinds_probe_at = 0.0
        self._woken_by_wake = False  # did the last idle wait end by a wake-up (not a timeout)?
        # Wake-up marks (pg_queue_waiter): an enqueue that is its own transaction NOTIFYs only
        # when a worker waits on its queue (a mark), so producers with no worker waiting pay
        # no NOTIFY. Marks stand while wake-ups come about once per claim (request-reply,
        # trickles: nothing is written per job). When NOTIFYs flood in (several per claim,
        # most of them wasted), the worker makes its marks takeable: the enqueue that NOTIFYs
        # takes them, the next ones send none, and the worker sets them again before it next
        # sleeps for want of work, in a statement that also says whether a claimable job is
        # already there (committed before the marks: its enqueue saw none taken, sent no
        # NOTIFY); if so it claims again at once. A job committed later finds the mark and
        # NOTIFYs. What slips between is a job whose enqueue statement was already running
        # when the marks were written and committed after them: the next enqueue's NOTIFY or
        # the worker's next poll (poll_interval_min after a wake-up, then doubling) finds it.
        # ``marks`` says whether NOTIFYs reach this worker (the listener's connection count,
        # or None while they do not: then nobody is asked to NOTIFY it).
        self.marks: Callable[[], int | None] | None = None
        self._waiting: set[str] = set()  # queues whose mark is set, as far as we know
        self._marks_generation: int | None = None
        self._marks_refresh_at = 0.0
        self._takeable = False  # the kind of marks this worker sets now
        self._window_end = 0.0
        self._window_claims = self._window_jobs = self._window_notifies = 0

    # --- wake-ups -----------------------------------------------------------------------------

    def on_notify(self, payload: str) -> None:
        """A NOTIFY on the queue channel: the payload names a queue with new jobs."""
        queue, mark, marks = payload.partition(WAKE_MARK)
        if queue in self.queues:
            self._window_notifies += 1
            if self._takeable:
                self._waiting.discard(queue)  # this NOTIFY may have taken our mark
            if mark:
                self._hints.append((queue, mark + marks))
            self._notified.add(queue)
            self.wake_event.set()

    def finished_some(self) -> None:
        """The finisher wrote a batch: capacity freed, if the loop is waiting for it."""
        if self.wake_on_finish:
            self.wake_event.set()

    # --- the loop -----------------------------------------------------------------------------

    def run(self) -> None:
        """Claim until stopped, or (burst / max_tasks) until there is nothing more to do."""
        idle = self.conf.poll_interval_min
        reconnect_sleep = RECONNECT_MIN
        error_backoff = RECONNECT_MIN
        stop_deadline: float | None = None
        while True:
            self.wake_event.clear()
            self.wake_on_finish = True  # before looking at capacity, so no finish is missed
            self.last_loop = time.monotonic()
            worked = False
            waits_for_work = False
            try:
                if self.stop.is_set():
                    if stop_deadline is None:
                        stop_deadline = time.monotonic() + self.shutdown_grace
                        self.release_unstarted()
                    busy = self.inflight or self.finisher.busy
                    if not busy or time.monotonic() >= stop_deadline:
                        return
                elif self._claim_allowed():
                    got = self._claim()
                    if got:
                        worked = True
                    elif self._finished_claiming():
                        return
                    waits_for_work = not self._last_claim_full
                    if waits_for_work and self._mark_waiting():
                        continue  # a job came before the marks: see "wake-up marks"
                elif self._finished_claiming():  # e.g. --max-tasks reached and all acked
                    return
                reconnect_sleep = RECONNECT_MIN
                error_backoff = RECONNECT_MIN
            except _DB_ERRORS as exc:
                self.stats.reconnects += 1
                metrics.RECONNECTS.inc()
                logger.warning(
                    "database connection lost worker_id=%s error=%s; reconnecting in %.1fs",
                    self.worker_id,
                    exc,
                    reconnect_sleep,
                )
                self.stop.wait(reconnect_sleep)
                reconnect_sleep = min(reconnect_sleep * 2, RECONNECT_MAX)
                self._reconnect()
                continue
            except Exception as exc:  # a bug here must not end the process's claiming for good
                self.errors += 1
                record_thread_error("claim", exc)
                self.stop.wait(error_backoff)
                error_backoff = min(error_backoff * 2, RESTART_BACKOFF_MAX)
                continue
            if self.on_progress is not None:
                self.on_progress(self.stats)
            if worked:
                idle = self.conf.poll_interval_min
                if self._last_claim_full:  # there may be more: claim again at once
                    continue
            if waits_for_work and not self.burst and self.max_tasks is None:
                self.wake_on_finish = False
            self._woken_by_wake = self.wake_event.wait(idle)
            if self._woken_by_wake:
                # Woken by activity (a NOTIFY, or the finisher freeing capacity): work tends to
                # come in bursts, so poll eagerly again instead of continuing the backoff.
                idle = self.conf.poll_interval_min
            else:
                idle = min(idle * 2, self.conf.poll_interval_max)

    def _reconnect(self) -> None:
        self._waiting.clear()  # a mark statement may have failed with the connection
        if self.conn is not None:
            self.conn.close()
        try:
            self.conn = self.connect()
        except _DB_ERRORS as exc:
            logger.warning("reconnect failed worker_id=%s error=%s", self.worker_id, exc)

    # --- capacity -----------------------------------------------------------------------------

    @property
    def capacity(self) -> int:
        """Jobs this worker may hold: its threads plus a prefetch sized to how fast tasks are.

        Fast tasks (under FAST_TASK_SECONDS) get two batches of prefetch, so the next claim
        overlaps the current batch; medium ones one batch; slow ones (over SLOW_TASK_SECONDS)
        one waiting job per thread, so a worker never hoards slow jobs other workers could run.
        """
        avg = self.pool.avg_task_seconds
        if avg < FAST_TASK_SECONDS:
            prefetch = 2 * self.batch_size
        elif avg < SLOW_TASK_SECONDS:
            prefetch = self.batch_size
        else:
            prefetch = min(self.batch_size, self.concurrency)
        return self.concurrency + prefetch

    def _claim_allowed(self) -> bool:
        capacity = self.capacity
        free = capacity - len(self.inflight)
        if self.max_tasks is not None and self.stats.claimed >= self.max_tasks:
            return False
        threshold = max(1, min(self.batch_size, capacity - self.concurrency) // 2)
        return free >= threshold or (free > 0 and not self.inflight)

    def _finished_claiming(self) -> bool:
        """True when a burst or max_tasks worker has nothing more to do."""
        if self.inflight or self.finisher.busy:
            return False
        if self.max_tasks is not None and self.stats.claimed >= self.max_tasks:
            return True
        if not self.burst:
            return False
        assert self.conn is not None
        return not queries.job_due_soon(
            self.conn,
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

    # --- claiming -----------------------------------------------------------------------------

    def _claim(self) -> int:
        assert self.conn is not None
        limit = min(self.batch_size, self.capacity - len(self.inflight))
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
        hints, self._hints = self._hints, []
        for queue, marks in hints:
            if TENANT_WAKE in marks:
                self._fair.add(queue)
            if KEY_WAKE in marks:
                self._keyed.add(queue)
        for queue_name in order:
            if limit - total <= 0:
                break
            self.stats.claim_queries += 1
            claimed = self._claim_queue(queue_name, limit - total)
            if claimed:
                self._accept(claimed)
                total += len(claimed)
        self._last_claim_full = total >= limit
        self._window_claims += 1
        self._window_jobs += total
        if now >= self._window_end:
            self._choose_marks(now)
        if now >= self._kinds_probe_at and limit > 0:
            self._probe_kinds(now)
        return total

    def _choose_marks(self, now: float) -> None:
        """Standing or takeable marks, from the last window's NOTIFYs, claims and jobs."""
        claims, jobs, notifies = self._window_claims, self._window_jobs, self._window_notifies
        self._window_claims = self._window_jobs = self._window_notifies = 0
        self._window_end = now + MARKS_WINDOW
        if self._takeable:
            takeable = jobs >= FLOOD_JOBS_PER_CLAIM * claims
        else:
            takeable = notifies >= max(MARKS_FLOOD, FLOOD_NOTIFIES_PER_CLAIM * claims)
        if takeable != self._takeable:
            self._takeable = takeable
            self._waiting.clear()  # set every mark again, of the new kind
            logger.debug(
                "wake-up marks now %s worker_id=%s claims=%d jobs=%d notifies=%d",
                "takeable" if takeable else "standing",
                self.worker_id,
                claims,
                jobs,
                notifies,
            )

    def _mark_waiting(self) -> bool:
        """Set this worker's wake-up marks that are down; True if a job is there to claim."""
        generation = None if self.marks is None else self.marks()
        if generation is None:  # NOTIFYs do not reach us now: set no marks (the ones set
            self._waiting.clear()  # already cost producers a NOTIFY each, nothing more)
            return False
        now = time.monotonic()
        if generation != self._marks_generation or now >= self._marks_refresh_at:
            self._waiting.clear()  # the listener reconnected (NOTIFYs lost?), or time's up
            self._marks_generation = generation
            self._marks_refresh_at = now + MARKS_REFRESH
        pending = [q for q in self.queues if q not in self._waiting]
        if not pending:
            return False
        # Before the statement: a NOTIFY that takes a mark we are setting must find it here.
        self._waiting.update(pending)
        assert self.conn is not None
        self.stats.mark_queries += 1
        marked = queries.waiter_mark(
            self.conn, worker_id=self.worker_id, queues=pending, takeable=self._takeable
        )
        # A mark a producer was taking was skipped: set it next time.
        self._waiting.difference_update(set(pending) - marked.queues)
        return marked.jobs_waiting

    def _probe_kinds(self, now: float) -> None:
        """Refresh which queues hold tenants' or keyed jobs. After the claims, not before:
        a job whose NOTIFY woke the loop never waits for this round trip. When a queue turns
        out to need another claim statement, the loop claims again at once."""
        assert self.conn is not None
        self._kinds_probe_at = now + KINDS_PROBE_INTERVAL
        kinds = queries.queue_kinds(self.conn, list(self.queues))
        if kinds.tenants - self._fair or kinds.keyed - self._keyed:
            self.wake_event.set()
        self._fair, self._keyed = kinds.tenants, kinds.keyed

    def _claim_queue(self, queue: str, limit: int) -> list[ClaimedJob]:
        assert self.conn is not None
        lease, worker_id = self.conf.lease_seconds, self.worker_id
        if queue not in self._fair:
            return queries.job_claim(
                self.conn,
                queue=queue,
                limit=limit,
                lease=lease,
                worker_id=worker_id,
                keyed=queue in self._keyed,
            )
        start, tenants = self._tenant_start.get(queue, ("", 1))
        fair = queries.job_claim_fair(
            self.conn,
            queue=queue,
            limit=limit,
            lease=lease,
            worker_id=worker_id,
            start=start,
            tenants=tenants,
        )
        self._tenant_start[queue] = (fair.next_start, fair.tenants)
        return fair.jobs

    def _accept(self, claimed: list[ClaimedJob]) -> None:
        """Decode and hand claimed jobs to the task threads (or bury the hopeless)."""
        now = time.monotonic()
        if not self.stats.claimed:
            self.stats.first_claim = now
            self.stats.first_claim_at = time.time()
        self.stats.claimed += len(claimed)
        metrics.CLAIMED.labels(claimed[0].queue_name).inc(len(claimed))
        self.inflight.add(claimed)
        for msg in claimed:
            try:
                job = self._decode(msg, now)
            except PayloadError as exc:
                self._reject(msg, DeadLetterReason.UNDECODABLE, str(exc))
                continue
            except TaskNotFound as exc:
                self._reject(msg, DeadLetterReason.UNKNOWN_TASK, str(exc))
                continue
            except Exception as exc:  # a payload we cannot make sense of must not stop us
                self._reject(msg, DeadLetterReason.UNDECODABLE, f"{type(exc).__name__}: {exc}")
                continue
            if msg.cancel_requested:
                self.finisher.submit(Cancelled(msg, CANCELLED_BEFORE_START, job.payload.on_error))
                continue
            if msg.attempts > msg.max_attempts:
                self._reject(
                    msg,
                    DeadLetterReason.EXHAUSTED,
                    f"attempts {msg.attempts} exceed max_attempts {msg.max_attempts}",
                )
                continue
            self.pool.put(job)

    def _decode(self, msg: ClaimedJob, now: float) -> JobRun:
        payload = TaskPayload.from_json(loads(msg.payload_text))
        task = resolve(msg.task_name)
        return JobRun(msg, payload, task, now, time_limit_of(task, self.time_limit))

    def _reject(self, msg: ClaimedJob, reason: str, error: str) -> None:
        error = storable_text(error)
        logger.error(
            "job dead-lettered before running task_id=%s task=%s queue=%s reason=%s error=%s",
            msg.task_id,
            msg.task_name,
            msg.queue_name,
            reason,
            error,
        )
        self.finisher.submit(Bury(msg, reason, error, "", None, lenient_on_error(msg.payload_text)))

    def release_unstarted(self) -> None:
        """On stop, hand prefetched jobs that no thread has started back, attempt refunded."""
        unstarted = {job.msg.msg_id: job.msg.lease_token for job in self.pool.take_unstarted()}
        if unstarted and self.conn is not None:
            released = queries.job_release(self.conn, unstarted)
            self.stats.released += len(released)
        self.inflight.remove(set(unstarted))
