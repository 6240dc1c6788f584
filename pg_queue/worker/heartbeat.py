"""``Heartbeat``: renews every lease this worker holds and keeps its ``pg_worker`` row fresh.

One UPDATE per beat (every lease/3, at most every re-arm interval) renews every in-flight
lease; it skips rows someone else has locked right now (an operator's open transaction), which
stay ours and are retried next beat, and reports leases taken from us, which stop being ours:
their finish is discarded. The beat runs nothing else: no sweep, no signal receiver, no user
code, and the in-flight lock is never held across the round trip. Every wait is bounded by the
connection's ``lock_timeout``/``statement_timeout``. For a supervisor, it also writes the
child's health file (even when the database is unreachable: then the file says unhealthy).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import psycopg

from pg_queue import metrics
from pg_queue.core.conf import QueueSettings
from pg_queue.db import queries, sql_worker
from pg_queue.worker.inflight import InFlight
from pg_queue.worker.service import Service
from pg_queue.worker.stats import WorkerStats

logger = logging.getLogger("pg_queue.worker")


class Heartbeat(Service):
    """Lease renewal and the worker row; see the module docstring."""

    role = "heartbeat"

    def __init__(
        self,
        *,
        conf: QueueSettings,
        worker_id: str,
        connect: Callable[[], psycopg.Connection[Any]],
        inflight: InFlight,
        stats: WorkerStats,
        stopping_worker: Callable[[], bool],
        health: Callable[[], tuple[bool, dict[str, Any]]],
        health_file: str | None = None,
    ) -> None:
        super().__init__()
        self.conf = conf
        self.worker_id = worker_id
        self.connect = connect
        self.inflight = inflight
        self.stats = stats
        self.stopping_worker = stopping_worker
        self.health = health
        self.health_file = health_file
        self.last_beat = time.monotonic()
        self._conn: psycopg.Connection[Any] | None = None

    @property
    def interval(self) -> float:
        return max(0.05, min(self.conf.lease_seconds / 3, self.conf.rearm_interval))

    @property
    def stale_after(self) -> float:
        """Two missed beats (plus slack) and the heartbeat counts as dead."""
        return 2 * self.interval + 1.0

    def loop(self) -> None:
        try:
            while not self.stopping.is_set():
                self._beat()
                self._write_health_file()
                self.stopping.wait(self.interval)
        finally:
            if self.stopping.is_set() and self._conn is not None:
                self._conn.close()
                self._conn = None

    def _beat(self) -> None:
        try:
            if self._conn is None or self._conn.closed:
                self._conn = self.connect()
            self._renew(self._conn)
            self._conn.execute(
                sql_worker.WORKER_HEARTBEAT,
                {
                    "worker_id": self.worker_id,
                    "state": "stopping" if self.stopping_worker() else "running",
                },
            )
            self.last_beat = time.monotonic()
        except psycopg.Error as exc:
            logger.warning("heartbeat failed worker_id=%s error=%s", self.worker_id, exc)
            if self._conn is not None and (self._conn.closed or self._conn.broken):
                self._conn.close()
                self._conn = None

    def _renew(self, conn: psycopg.Connection[Any]) -> None:
        held = self.inflight.leases()  # a snapshot: no lock is held across the round trip
        if not held:
            return
        renewal = queries.lease_renew(conn, held, lease=self.conf.lease_seconds)
        lost = self.inflight.reconcile(held, renewal.lost, renewal.cancel_requested)
        if renewal.busy:
            logger.warning(
                "leases not renewed this beat: rows locked by another transaction msg_ids=%s",
                sorted(renewal.busy),
            )
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
