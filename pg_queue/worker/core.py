"""``Worker``: the composition root of one worker process.

It wires the services, each in its own module with what it owns and guarantees:

- ``coordinator``: the claim loop (on the thread that calls ``run``) and capacity;
- ``pool``: task threads and the time-limit timer;
- ``finisher``: batched finishes, and what to do when the database refuses one;
- ``heartbeat``: lease renewal and the ``pg_worker`` row;
- ``maintenance``: re-arm, expired last attempts, worker-row pruning, result retention;
- ``events``: Django signals, sent off the hot threads;
- ``scheduler`` (``--scheduler``): periodic tasks, fired by the one worker holding the lease;
- ``inflight`` (shared state), ``outcomes`` (value objects), ``stats`` (counters).

Services share no lock across a database round trip. Each runs under ``service.Service``: an
exception of any type is logged with its traceback, counted, turns ``health()`` red, and the
service starts again. ``health()`` is true only while every service thread is alive, the claim
loop and the heartbeat are recent, and the oldest unwritten outcome is young enough.

At start the worker learns whether a transaction-pooling PgBouncer sits in front of the
database (its LISTEN self-probe fails there); if so, its connections hold no session state: no
prepared statements, no ``SET``, no LISTEN.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import psycopg

from pg_queue.core.conf import NOTIFY_CHANNEL, queue_settings
from pg_queue.db import connection, queries, sql_worker
from pg_queue.db.notify import Listener
from pg_queue.worker.coordinator import Coordinator
from pg_queue.worker.events import Events
from pg_queue.worker.finisher import Finisher
from pg_queue.worker.heartbeat import Heartbeat
from pg_queue.worker.inflight import InFlight
from pg_queue.worker.maintenance import Maintenance
from pg_queue.worker.pool import Pool
from pg_queue.worker.scheduler import Scheduler
from pg_queue.worker.service import Service
from pg_queue.worker.stats import WorkerStats

logger = logging.getLogger("pg_queue.worker")

#: Default seconds in-flight jobs get to finish after a graceful stop request.
DEFAULT_SHUTDOWN_GRACE = 30.0
#: Longest wait at shutdown for the finisher to write the last finishes.
FINISHER_JOIN = 15.0
#: Longest wait at shutdown for task threads not stuck in a task.
TASK_THREADS_JOIN = 2.0
#: Longest wait at shutdown for the other service threads, all together.
SERVICES_JOIN = 7.0
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
        banner: str = "",
        scheduler: bool | None = None,
    ) -> None:
        conf = queue_settings()
        #: More for the start line (``run_pg_worker``: tasks known, modules, the database).
        self.banner = banner
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
        self.database = database
        self.notify = conf.notify if notify is None else notify
        #: True when a transaction-pooling proxy was detected at start (see the docstring).
        self.pooled = False
        self.stats = WorkerStats()
        self.inflight = InFlight()
        self._stop = threading.Event()
        self._started = False
        self._listener: Listener | None = None
        self.events = Events()
        self.finisher = Finisher(
            conf=conf,
            connect=self._connect,
            inflight=self.inflight,
            stats=self.stats,
            events=self.events,
            on_written=self._on_written,
        )
        # Process mode: a stuck thread cannot be killed, but its process can. The child stops
        # itself (after writing the timeout outcome) and the supervisor starts a fresh one.
        self.pool = Pool(
            concurrency=self.concurrency,
            worker_id=self.worker_id,
            inflight=self.inflight,
            submit=self.finisher.submit,
            stats=self.stats,
            exit_on_time_limit=exit_on_time_limit,
            request_exit=self.request_stop,
            events=self.events,
        )
        self.coordinator = Coordinator(
            conf=conf,
            worker_id=self.worker_id,
            queues=self.queues,
            concurrency=self.concurrency,
            batch_size=self.batch_size,
            burst=burst,
            max_tasks=max_tasks,
            time_limit=self.time_limit,
            shutdown_grace=shutdown_grace,
            connect=self._claim_connection,
            inflight=self.inflight,
            pool=self.pool,
            finisher=self.finisher,
            stats=self.stats,
            stop=self._stop,
            on_progress=on_progress,
        )
        self.heartbeat = Heartbeat(
            conf=conf,
            worker_id=self.worker_id,
            connect=self._connect,
            inflight=self.inflight,
            stats=self.stats,
            stopping_worker=self._stop.is_set,
            health=self.health,
            health_file=health_file,
        )
        self.maintenance = Maintenance(
            conf=conf,
            worker_id=self.worker_id,
            connect=self._connect,
            stats=self.stats,
            events=self.events,
            notify_results=lambda: self.finisher.notify_results,
        )
        #: Periodic tasks (``--scheduler`` or ``PG_QUEUE["SCHEDULER"]``); None when off.
        self.scheduler: Scheduler | None = None
        if conf.scheduler if scheduler is None else scheduler:
            self.scheduler = Scheduler(conf=conf, worker_id=self.worker_id, connect=self._connect)

    # --- public -------------------------------------------------------------------------------

    def request_stop(self) -> None:
        """Graceful stop: no more claims; in-flight jobs get ``shutdown_grace`` seconds."""
        self._stop.set()
        self.coordinator.wake_event.set()

    @property
    def time_limit_exit(self) -> bool:
        """The process stopped itself to end a task stuck past its time limit."""
        return self.pool.time_limit_exit

    def run(self) -> WorkerStats:
        """Run until stopped (or burst done / max_tasks reached); returns the counters."""
        self._detect_pooling()
        self.coordinator.conn = self._connect()
        self._register()
        no_vacuum = queries.vacuum_warning(self.coordinator.conn)
        if no_vacuum:
            logger.warning(
                "%s: every job leaves two dead row versions in pg_queue_message, so the table "
                "and its indexes grow until VACUUM runs; turn autovacuum on or schedule "
                "VACUUM pg_queue_message",
                no_vacuum,
            )
        for service in self._services():
            service.start()
        self.pool.start()
        self._started = True
        logger.info(
            "worker started worker_id=%s queues=%s concurrency=%d batch=%d burst=%s notify=%s "
            "pooled=%s scheduler=%s%s",
            self.worker_id,
            ",".join(f"{q}={w}" for q, w in self.queues.items()),
            self.concurrency,
            self.batch_size,
            self.burst,
            self._listener is not None,
            self.pooled,
            self.scheduler is not None,
            f" {self.banner}" if self.banner else "",
        )
        try:
            self.coordinator.run()
        finally:
            self._shutdown()
        logger.info(
            "worker stopped worker_id=%s %s",
            self.worker_id,
            " ".join(f"{k}={v}" for k, v in self.stats.as_dict().items()),
        )
        return self.stats

    # --- health -------------------------------------------------------------------------------

    @property
    def heartbeat_interval(self) -> float:
        return self.heartbeat.interval

    @property
    def claim_loop_stale(self) -> float:
        return max(10.0, 4 * self.conf.poll_interval_max, self.conf.lease_seconds)

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Healthy while every service thread is alive, the claim loop and the heartbeat are
        recent, the oldest unwritten outcome is young enough, and no thread ever failed."""
        now = time.monotonic()
        loop_age = now - self.coordinator.last_loop
        beat_age = now - self.heartbeat.last_beat
        unwritten_age = self.finisher.oldest_unwritten_age()
        pool = self.pool.health()
        services = {s.role: s.alive for s in (*self._services(), self.pool.timer)}
        if self._listener is not None:
            services["listen"] = self._listener.alive
        errors = {s.role: s.errors for s in self._services() if s is not self.events}
        errors.update(
            events=self.events.errors,
            timer=self.pool.timer.errors,
            task=self.pool.errors,
            claim=self.coordinator.errors,
        )
        if self._listener is not None:
            errors["listen"] = self._listener.unexpected_errors
        problems = []
        if loop_age > self.claim_loop_stale:
            problems.append("claim loop stalled")
        if beat_age > self.heartbeat.stale_after:
            problems.append("heartbeat stalled")
        if unwritten_age > self.conf.unwritten_outcome_max_age:
            problems.append("outcomes not written")
        if self._started and not self._stop.is_set():
            problems += [f"{role} thread not running" for role, up in services.items() if not up]
            if pool["task_threads"] < self.concurrency:
                problems.append("task threads missing")
        if pool["abandoned_threads"] > self.concurrency:
            problems.append("too many threads stuck past their time limit")
        if any(errors.values()):
            problems.append("unexpected errors in worker threads (see the log)")
        return not problems, {
            "worker_id": self.worker_id,
            "problems": problems,
            "claim_loop_age": round(loop_age, 3),
            "heartbeat_age": round(beat_age, 3),
            "oldest_unwritten_outcome_age": round(unwritten_age, 3),
            "in_flight": len(self.inflight),
            "stopping": self._stop.is_set(),
            "pooled": self.pooled,
            "scheduler_leader": self.scheduler is not None and self.scheduler.leading,
            "services": services,
            "thread_errors": errors,
            **pool,
        }

    # --- lifecycle ----------------------------------------------------------------------------

    def _services(self) -> tuple[Service, ...]:
        """The service threads this worker runs (started together, all in ``health()``)."""
        extra = () if self.scheduler is None else (self.scheduler,)
        return (self.events, self.finisher, self.heartbeat, self.maintenance, *extra)

    def _connect(self) -> psycopg.Connection[Any]:
        return connection.worker_connection(self.database, pooled=self.pooled)

    def _claim_connection(self) -> psycopg.Connection[Any]:
        return connection.worker_connection(self.database, pooled=self.pooled, claims=True)

    def _listen_connection(self) -> psycopg.Connection[Any]:
        return connection.worker_connection(self.database, pooled=True)  # LISTEN needs no SET

    def _detect_pooling(self) -> None:
        """Start the NOTIFY listener, or just probe: is a transaction pooler in front?"""
        if self.notify:
            listener = Listener(NOTIFY_CHANNEL, self.coordinator.on_notify, self._listen_connection)
            if listener.start():
                self._listener = listener
                self.coordinator.marks = listener.generation
                return
            listener.stop()
            self.pooled = True
        else:
            self.pooled = connection.transaction_pooling(self.database)
        if self.pooled:
            self.finisher.notify_results = False
            logger.warning(
                "transaction pooling detected (LISTEN self-probe failed): the worker uses no "
                "prepared statements, no session settings (set lock_timeout and "
                "statement_timeout on the database role instead) and polls instead of LISTEN"
            )

    def _on_written(self) -> None:
        self.coordinator.finished_some()

    def _register(self) -> None:
        assert self.coordinator.conn is not None
        self.coordinator.conn.execute(
            sql_worker.WORKER_REGISTER,
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
        if self.scheduler is not None:
            self.scheduler.stop()  # first: it gives the leader lease up on its way out
        self.pool.stop(join_timeout=TASK_THREADS_JOIN)
        self.finisher.stop()
        self.finisher.join(timeout=FINISHER_JOIN)
        if self.finisher.alive:
            self.finisher.halt()
            self.finisher.join(timeout=TASK_THREADS_JOIN)
        try:
            conn = self.coordinator.conn
            if conn is None or conn.closed:
                conn = self.coordinator.conn = self._connect()
            abandoned = self.inflight.leases()
            if abandoned:
                started = self.pool.running_ids()
                released = queries.job_release(conn, abandoned, started=started)
                self.stats.released += len(released)
                logger.warning(
                    "released unfinished jobs at shutdown worker_id=%s count=%d started=%d",
                    self.worker_id,
                    len(released),
                    len(started & set(released)),
                )
            conn.execute(sql_worker.WORKER_UNREGISTER, {"worker_id": self.worker_id})
        except _DB_ERRORS as exc:
            logger.error(
                "shutdown could not reach the database worker_id=%s error=%s; leases will "
                "expire and any worker re-arms them",
                self.worker_id,
                exc,
            )
        finally:
            services: tuple[Service, ...] = (self.heartbeat, self.maintenance, self.events)
            if self.scheduler is not None:
                services += (self.scheduler,)
            for service in services:
                service.stop()
            if self._listener is not None:
                self._listener.stop()
            deadline = time.monotonic() + SERVICES_JOIN
            for service in services:
                service.join(timeout=max(0.0, deadline - time.monotonic()))
            if self.coordinator.conn is not None:
                self.coordinator.conn.close()
