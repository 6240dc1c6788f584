"""``Maintenance``: the sweeps every worker runs for the whole queue, on its own connection.

- Re-arm (every ``REARM_INTERVAL``): expired claims of any worker go back to ready; those on
  their last attempt are dead-lettered (``lease_expired``), their ``on_error`` fires in the same
  transaction and callers waiting on them are woken. Each payload is decoded inside its own
  guard: an undecodable one loses its ``on_error`` (logged), never the sweep.
- Worker rows of processes that died without unregistering are pruned; expired resource locks
  of holders outside the worker, and locks whose job no longer holds a claim, are swept.
- Scheduled jobs (with the re-arm, at least every ``PROMOTE_INTERVAL_MAX``): jobs due within
  ``sql.SCHEDULE_AHEAD`` (60 s) are promoted into the claim index, so they are claimable
  before they are due; until then a claim never reads them.
- The queue-depth snapshot ``/metrics`` serves (every ``QUEUE_STATS_INTERVAL``): recounted
  by the one worker that holds the ``queue_stats`` lease, so scrapes never count the queue.
- Result retention (every ``RESULT_SWEEP_INTERVAL``): expired results are deleted in bounded
  batches until none is left, so retention keeps up with any drain rate.

There is no single reaper to be a single point of failure: every worker runs these, and
``SKIP LOCKED`` keeps them from stepping on each other. Nothing here runs on the heartbeat's
thread, so a slow sweep never delays a lease renewal.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
import uuid
from collections.abc import Callable
from typing import Any

import psycopg

from pg_queue import metrics
from pg_queue.core.conf import QueueSettings
from pg_queue.core.continuations import error_spec, lenient_on_error
from pg_queue.core.options import JobSpec
from pg_queue.db import queries, sql_ops, sql_worker, sql_workflows
from pg_queue.models import DeadLetterReason
from pg_queue.scheduling.leader import leader_acquire, leader_release
from pg_queue.signals import chain_finished, group_finished, job_failed
from pg_queue.worker.continuations import enqueue_continuations
from pg_queue.worker.events import Events
from pg_queue.worker.service import Service
from pg_queue.worker.stats import WorkerStats
from pg_queue.workflows.progress import Finished, PsycopgDb, record

logger = logging.getLogger("pg_queue.worker")

#: Rows one re-arm statement may touch, so a sweep after a mass crash stays short statements.
REARM_BATCH = 1000
#: A pg_worker row whose heartbeat is older than max(3 leases, this) belongs to a dead process.
WORKER_ROW_STALE_MIN = 60.0
#: Rows one retention statement deletes; a sweep repeats it until fewer come back.
SWEEP_BATCH = 5000
#: Rows one promotion statement touches (it repeats until fewer come back).
PROMOTE_BATCH = 5000
#: Longest gap between promotions of scheduled jobs, whatever ``REARM_INTERVAL`` is: a quarter
#: of ``sql.SCHEDULE_AHEAD``, so a job is in the claim index well before it is due.
PROMOTE_INTERVAL_MAX = 15.0
#: Seconds between recounts of the queue-depth snapshot, and its lease's role; the lease lasts
#: three intervals, so another worker takes over within that when its holder dies.
QUEUE_STATS_INTERVAL, QUEUE_STATS_ROLE = 10.0, "queue_stats"
#: Longest one pass of either sweep keeps going (seconds) before it yields to the next tick.
PASS_BUDGET = 10.0


class Maintenance(Service):
    """Re-arm, worker-row pruning and result retention; see the module docstring."""

    role = "maintenance"

    def __init__(
        self,
        *,
        conf: QueueSettings,
        worker_id: str,
        connect: Callable[[], psycopg.Connection[Any]],
        stats: WorkerStats,
        events: Events,
        notify_results: Callable[[], bool],
    ) -> None:
        super().__init__()
        self.conf = conf
        self.worker_id = worker_id
        self.connect = connect
        self.stats = stats
        self.events = events
        self.notify_results = notify_results
        self.last_pass = time.monotonic()
        self._conn: psycopg.Connection[Any] | None = None

    def loop(self) -> None:
        now = time.monotonic()
        next_rearm = now
        # Spread the first sweep so that workers started together do not sweep together.
        next_sweep = now + self.conf.result_sweep_interval * random.random()
        next_stats = now
        try:
            while not self.stopping.is_set():
                now = time.monotonic()
                try:
                    if now >= next_rearm:
                        self._rearm_pass()
                        next_rearm = time.monotonic() + self._rearm_every()
                    if now >= next_stats:
                        next_stats = time.monotonic() + QUEUE_STATS_INTERVAL
                        self._stats_pass()
                    if now >= next_sweep:
                        self._sweep_pass()
                        next_sweep = time.monotonic() + self.conf.result_sweep_interval
                    self.last_pass = time.monotonic()
                except psycopg.Error as exc:
                    logger.warning("maintenance failed worker_id=%s error=%s", self.worker_id, exc)
                    if self._conn is not None and (self._conn.closed or self._conn.broken):
                        self._conn.close()
                        self._conn = None
                    next_rearm = min(next_rearm, time.monotonic() + self._rearm_every())
                wake_at = min(next_rearm, next_sweep, next_stats)
                self.stopping.wait(max(0.0, wake_at - time.monotonic()))
        finally:
            if self.stopping.is_set() and self._conn is not None:
                with contextlib.suppress(psycopg.Error):  # else it expires in 3 intervals
                    leader_release(self._conn, role=QUEUE_STATS_ROLE, holder=self.worker_id)
                self._conn.close()
                self._conn = None

    def _stats_pass(self) -> None:
        """Recount the queue-depth snapshot if this worker holds (or takes) the lease."""
        conn = self._connection()
        ttl = 3 * QUEUE_STATS_INTERVAL
        if leader_acquire(conn, role=QUEUE_STATS_ROLE, holder=self.worker_id, ttl=ttl):
            conn.execute(sql_ops.QUEUE_STATS_REFRESH)

    def _rearm_every(self) -> float:
        return min(self.conf.rearm_interval, PROMOTE_INTERVAL_MAX)

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = self.connect()
        return self._conn

    # --- re-arm -------------------------------------------------------------------------------

    def _rearm_pass(self) -> None:
        conn = self._connection()
        deadline = time.monotonic() + PASS_BUDGET
        rearmed = buried = 0
        while not self.stopping.is_set():
            got = queries.job_rearm(conn, limit=REARM_BATCH)
            rearmed += got
            if got < REARM_BATCH or time.monotonic() >= deadline:
                break
        while not self.stopping.is_set():
            got = self._rearm_exhausted(conn)
            buried += got
            if got < REARM_BATCH or time.monotonic() >= deadline:
                break
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
            sql_worker.WORKER_PRUNE,
            {"stale": max(3 * self.conf.lease_seconds, WORKER_ROW_STALE_MIN)},
        )
        for key, kind, holder in conn.execute(sql_workflows.LOCK_SWEEP).fetchall():
            logger.warning(
                "resource lock swept (expired, or its job ended) key=%s holder_kind=%s "
                "holder_id=%s",
                key,
                kind,
                holder,
            )
        while not self.stopping.is_set():
            promoted = queries.job_promote(conn, limit=PROMOTE_BATCH)
            if promoted < PROMOTE_BATCH or time.monotonic() >= deadline:
                break
        unparked = conn.execute(sql_workflows.KEY_UNPARK_SWEEP).fetchall()
        if unparked:
            logger.info(
                "unparked the next job of keys whose head went away keys=%s",
                ",".join(sorted(row[0] for row in unparked)[:20]),
            )

    def _rearm_exhausted(self, conn: psycopg.Connection[Any]) -> int:
        """Dead-letter expired last attempts; fire their on_error in the same transaction."""
        with conn.transaction():
            rows = queries.job_rearm_exhausted(
                conn,
                limit=REARM_BATCH,
                ttl=float(self.conf.result_ttl_seconds),
                notify=self.notify_results(),
            )
            continuations: list[tuple[uuid.UUID, JobSpec]] = []
            for task_id, _name, _queue, payload_text, error, _group, _index in rows:
                spec = lenient_on_error(payload_text)
                if spec is not None:
                    continuations.append((task_id, error_spec(spec, task_id, error)))
            enqueue_continuations(conn, continuations)
            ended = record(
                PsycopgDb(conn),
                [
                    Finished(task_id, group_id, index or 0, ok=False, error=error)
                    for task_id, _n, _q, _p, error, group_id, index in rows
                    if group_id is not None
                ],
                ttl=float(self.conf.result_ttl_seconds),
                notify=self.notify_results(),
            )
        for end in ended:
            signal = chain_finished if end.kind == "chain" else group_finished
            self.events.emit(signal, group_id=end.group_id, status=end.status)
        for task_id, name, queue_name, _payload, error, _group, _index in rows:
            metrics.DEAD_LETTERED.labels(queue_name).inc()
            self.events.emit(
                job_failed,
                task_id=task_id,
                task_name=name,
                queue_name=queue_name,
                reason=DeadLetterReason.LEASE_EXPIRED,
                error=error,
            )
        return len(rows)

    # --- results ------------------------------------------------------------------------------

    def _sweep_pass(self) -> None:
        conn = self._connection()
        deadline = time.monotonic() + PASS_BUDGET
        while not self.stopping.is_set():
            deleted = queries.result_sweep(conn, limit=SWEEP_BATCH)
            self.stats.swept += deleted
            if deleted < SWEEP_BATCH or time.monotonic() >= deadline:
                return
