"""Prometheus metrics of the worker (prometheus-client), and the queue-depth collector.

Counters are incremented once per batch, not per job, so the hot path pays a lock per batch.
In ``--processes`` mode the supervisor sets ``PROMETHEUS_MULTIPROC_DIR`` for its children and
serves their aggregate.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

logger = logging.getLogger("pg_queue.metrics")

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

CLAIMED = Counter("pg_queue_claimed", "Messages claimed", ["queue"])
SUCCEEDED = Counter("pg_queue_succeeded", "Jobs acked as succeeded", ["queue"])
FAILED = Counter("pg_queue_failed", "Failed executions (retried or dead-lettered)", ["queue"])
RETRIED = Counter("pg_queue_retried", "Jobs put back for another attempt", ["queue"])
DEAD_LETTERED = Counter("pg_queue_dead_lettered", "Jobs moved to the dead-letter table", ["queue"])
LEASE_LOST = Counter("pg_queue_lease_lost", "Leases found taken away from this worker", ["queue"])
REARMED = Counter("pg_queue_rearmed", "Expired claims returned to ready by this worker")
TIME_LIMITED = Counter("pg_queue_time_limited", "Jobs failed for exceeding their time limit")
RECONNECTS = Counter("pg_queue_reconnects", "Database reconnects after a lost connection")
THREAD_ERRORS = Counter(
    "pg_queue_thread_errors",
    "Unexpected exceptions in worker threads (each one turns /healthz red)",
    ["thread"],
)
UNSTORABLE = Counter(
    "pg_queue_unstorable",
    "Finishes the database refused for their content, dead-lettered as 'unstorable'",
    ["queue"],
)
EVENTS_DROPPED = Counter(
    "pg_queue_events_dropped", "Lifecycle signals not sent because their receivers fell behind"
)
TASK_DURATION = Histogram(
    "pg_queue_task_duration_seconds", "Task run time", ["queue"], buckets=_LATENCY_BUCKETS
)
ENQUEUE_TO_START = Histogram(
    "pg_queue_enqueue_to_start_seconds",
    "Time from enqueue (or due time) to start",
    ["queue"],
    buckets=_LATENCY_BUCKETS,
)


class QueueDepthCollector(Collector):
    """Queue depth by state and oldest ready age, read from the database at scrape time."""

    def __init__(self, database: str = "default") -> None:
        self.database = database

    def collect(self) -> Iterator[Any]:
        from pg_queue.db import sql_ops
        from pg_queue.db.connection import worker_connection

        depth = GaugeMetricFamily(
            "pg_queue_depth", "Messages by queue and state", labels=["queue", "state"]
        )
        oldest = GaugeMetricFamily(
            "pg_queue_oldest_ready_age_seconds", "Age of the oldest due job", labels=["queue"]
        )
        try:
            with worker_connection(self.database) as conn:
                rows = conn.execute(sql_ops.QUEUE_DEPTH).fetchall()
        except Exception:
            logger.exception("queue depth scrape failed")
            return
        for queue, ready, delayed, running, oldest_ready in rows:
            depth.add_metric([queue, "ready"], ready)
            depth.add_metric([queue, "delayed"], delayed)
            depth.add_metric([queue, "running"], running)
            oldest.add_metric([queue], float(oldest_ready))
        yield depth
        yield oldest
