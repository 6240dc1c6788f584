"""``Pool``: the task threads that run jobs, and the timer that enforces their time limits.

Guarantees:
- A task thread never dies holding a job. ``run_job`` turns whatever the task does into an
  outcome; should the thread's own bookkeeping fail anyway, the job still gets a failure outcome
  and the error is logged, counted and turns the worker's health red.
- Time limits are checked by their own timer thread, at each job's deadline, whatever the claim
  loop is doing. A job past its limit gets a timeout failure, stops being renewed, and its slot
  gets a fresh thread (thread mode: Python cannot kill the stuck one, so it is abandoned and
  pruned once it returns; its late result is discarded). In process mode
  (``exit_on_time_limit``) the process stops itself instead and the supervisor restarts it.
- Every thread started here is tracked: live ones, and abandoned ones until they return. More
  abandoned threads than ``concurrency`` turns health red (stuck code piling up).
"""

from __future__ import annotations

import datetime as dt
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.db import connections

from pg_queue import metrics
from pg_queue.core.outcomes import Outcome
from pg_queue.signals import job_started
from pg_queue.worker.events import Events
from pg_queue.worker.execution import JobRun, error_text, failure_outcome, run_job
from pg_queue.worker.inflight import InFlight
from pg_queue.worker.service import Service, record_thread_error
from pg_queue.worker.stats import WorkerStats

logger = logging.getLogger("pg_queue.worker")

#: How long task threads block on an empty work queue before re-checking for shutdown.
THREAD_POLL = 0.5
#: Prefetch tiers by mean task time (see Coordinator.capacity) and the EWMA weight of a sample.
FAST_TASK_SECONDS = 0.005
TASK_SECONDS_EWMA = 0.05


@dataclass(frozen=True, slots=True)
class _Running:
    job: JobRun
    start: float  # time.monotonic()
    deadline: float  # time.monotonic(); inf = no limit
    thread: threading.Thread


class Pool:
    """``concurrency`` task threads fed from one work queue; outcomes go to ``submit``."""

    def __init__(
        self,
        *,
        concurrency: int,
        worker_id: str,
        inflight: InFlight,
        submit: Callable[[Outcome], None],
        stats: WorkerStats,
        exit_on_time_limit: bool,
        request_exit: Callable[[], None],
        events: Events | None = None,
    ) -> None:
        self.concurrency = concurrency
        self.events = events
        self.worker_id = worker_id
        self.inflight = inflight
        self.submit = submit
        self.stats = stats
        self.exit_on_time_limit = exit_on_time_limit
        self.request_exit = request_exit
        self.time_limit_exit = False  # set when the process stops itself for a time limit
        # Mean task run time (EWMA, written by task threads); sizes the prefetch.
        self.avg_task_seconds = FAST_TASK_SECONDS * 2
        self.errors = 0  # unexpected errors in task threads' own code
        self._work: queue.SimpleQueue[JobRun | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._running: dict[int, _Running] = {}
        self._timed_out: set[int] = set()  # failed by the timer, their thread not back yet
        self._threads: set[threading.Thread] = set()
        self._abandoned: set[threading.Thread] = set()
        self._spawned = 0
        self._halt = threading.Event()
        self._histogram_children: dict[str, tuple[Any, Any]] = {}
        self.timer = TimeLimitTimer(self)

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        for _ in range(self.concurrency):
            self._spawn_task_thread()
        self.timer.start()

    def put(self, job: JobRun) -> None:
        self._work.put(job)

    def take_unstarted(self) -> list[JobRun]:
        """Empty the work queue: jobs claimed but not started by any thread."""
        jobs: list[JobRun] = []
        while True:
            try:
                job = self._work.get_nowait()
            except queue.Empty:
                return jobs
            if job is not None:
                jobs.append(job)

    def running_ids(self) -> set[int]:
        with self._lock:
            return set(self._running)

    def stop(self, join_timeout: float) -> None:
        """Stop the threads; wait up to ``join_timeout`` for those not stuck in a task."""
        self._halt.set()
        self.timer.stop()
        with self._lock:
            threads = list(self._threads)
        for _ in threads:
            self._work.put(None)
        deadline = time.monotonic() + join_timeout
        for thread in threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        self.timer.join(timeout=max(0.1, deadline - time.monotonic()))

    # --- health -------------------------------------------------------------------------------

    def health(self) -> dict[str, int]:
        with self._lock:
            self._abandoned = {t for t in self._abandoned if t.is_alive()}
            return {
                "task_threads": sum(t.is_alive() for t in self._threads),
                "abandoned_threads": len(self._abandoned),
                "task_thread_errors": self.errors,
            }

    # --- task threads -------------------------------------------------------------------------

    def _spawn_task_thread(self) -> None:
        with self._lock:
            if self._halt.is_set():
                return
            name = f"pg-queue-task-{self._spawned}"
            self._spawned += 1
            # Registered and started under the lock: health never counts a starting thread as
            # missing, and stop() never sees (and tries to join) one not started yet.
            thread = threading.Thread(target=self._task_loop, name=name, daemon=True)
            self._threads.add(thread)
            thread.start()

    def _task_loop(self) -> None:
        while not self._halt.is_set():
            try:
                job = self._work.get(timeout=THREAD_POLL)
            except queue.Empty:
                continue
            if job is None:
                break
            try:
                outcome = self._execute(job)
            except BaseException as exc:  # our own bookkeeping failed: never
                self.errors += 1  # lose the job, never end the thread
                record_thread_error("task", exc)
                outcome = self._unexpected_failure(job, exc)
            if outcome is None:  # the timer took this job over: this thread retires
                break
            self.submit(outcome)
        self._retire(threading.current_thread())
        connections.close_all()  # what tasks opened in this thread

    def _execute(self, job: JobRun) -> Outcome | None:
        """Run one job; None if its time limit fired meanwhile (the timer wrote its outcome)."""
        msg = job.msg
        me = threading.current_thread()
        start = time.monotonic()
        started = msg.claimed_at + dt.timedelta(seconds=start - job.claimed_mono)
        if msg.attempts == 1:  # from due time, so a delay is not counted as latency
            self._histograms(msg.queue_name)[0].observe(
                max(0.0, (started - msg.available_at).total_seconds())
            )
        deadline = start + job.time_limit if job.time_limit else float("inf")
        with self._lock:
            self._running[msg.msg_id] = _Running(job, start, deadline, me)
        if job.time_limit:
            self.timer.wake()
        if self.events is not None:
            self.events.emit(
                job_started,
                task_id=msg.task_id,
                task_name=msg.task_name,
                queue_name=msg.queue_name,
                attempt=msg.attempts,
            )
        cancelled = self.inflight.cancelled
        outcome = run_job(job, self.worker_id, started, lambda: msg.msg_id in cancelled)
        with self._lock:
            mine = self._running.pop(msg.msg_id, None) is not None
            if not mine:
                self._timed_out.discard(msg.msg_id)
        if not mine:
            logger.warning(
                "late finish discarded after time limit task_id=%s task=%s queue=%s",
                msg.task_id,
                msg.task_name,
                msg.queue_name,
            )
            return None
        took = time.monotonic() - start
        self.avg_task_seconds += TASK_SECONDS_EWMA * (took - self.avg_task_seconds)
        self._histograms(msg.queue_name)[1].observe(took)
        return outcome

    def _unexpected_failure(self, job: JobRun, exc: BaseException) -> Outcome | None:
        """The failure outcome of a job whose thread's bookkeeping raised; None if its time
        limit fired first (the timer wrote its outcome)."""
        with self._lock:
            self._running.pop(job.msg.msg_id, None)
            if job.msg.msg_id in self._timed_out:
                self._timed_out.discard(job.msg.msg_id)
                return None
        started = job.msg.claimed_at
        return failure_outcome(job, f"worker error: {error_text(exc)}", "", started)

    def _retire(self, thread: threading.Thread) -> None:
        with self._lock:
            self._threads.discard(thread)
            self._abandoned.discard(thread)

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

    # --- time limits --------------------------------------------------------------------------

    def enforce_time_limits(self) -> float:
        """Fail jobs past their deadline; returns seconds until the next deadline (or inf)."""
        now = time.monotonic()
        with self._lock:
            overdue = [r for r in self._running.values() if r.deadline <= now]
            for r in overdue:
                del self._running[r.job.msg.msg_id]
                self._timed_out.add(r.job.msg.msg_id)
                self._threads.discard(r.thread)
                self._abandoned.add(r.thread)
            upcoming = min((r.deadline for r in self._running.values()), default=float("inf"))
        for r in overdue:
            self._time_out(r, now)
        return upcoming - now

    def _time_out(self, running: _Running, now: float) -> None:
        job, msg = running.job, running.job.msg
        limit = job.time_limit
        started = msg.claimed_at + dt.timedelta(seconds=running.start - job.claimed_mono)
        error = f"TimeoutError: task exceeded its time limit of {limit:g}s"
        if not self.exit_on_time_limit:
            # The slot comes back before the outcome is handed on, so no one who sees the
            # outcome can see the pool a thread short.
            self._spawn_task_thread()
        self.submit(failure_outcome(job, error, "", started))
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
            self.request_exit()


#: Longest the timer sleeps with nothing to time, before re-checking for stop.
TIMER_IDLE = 1.0


class TimeLimitTimer(Service):
    """Wakes at the earliest running job's deadline and fails what is past it."""

    role = "timer"

    def __init__(self, pool: Pool) -> None:
        super().__init__()
        self.pool = pool
        self._wake = threading.Event()

    def wake(self) -> None:
        """A job with a time limit started: its deadline may be the earliest."""
        self._wake.set()

    def stop(self) -> None:
        super().stop()
        self._wake.set()

    def loop(self) -> None:
        while not self.stopping.is_set():
            self._wake.clear()
            until_next = self.pool.enforce_time_limits()
            self._wake.wait(min(max(until_next, 0.001), TIMER_IDLE))
