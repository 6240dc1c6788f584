"""Prometheus metrics of the worker (prometheus-client), and the queue-depth collector.

Counters are incremented once per batch, not per job, so the hot path pays a lock per batch.
In ``--processes`` mode the supervisor sets ``PROMETHEUS_MULTIPROC_DIR`` for its children and
serves their aggregate.

prometheus-client is the optional ``pg-queue[metrics]`` extra. Without it every metric here is a
no-op stand-in with the same methods (``labels``, ``inc``, ``observe``), so the worker runs
unchanged, and ``/metrics`` answers with ``METRICS_UNAVAILABLE`` (see ``worker/health.py``).
"""

from __future__ import annotations

import importlib
import logging
import threading
from collections.abc import Iterator, Sequence
from types import ModuleType
from typing import Any

logger = logging.getLogger("pg_queue.metrics")

#: What to install for metrics; named wherever their absence shows.
METRICS_EXTRA = "pg-queue[metrics]"
#: The body ``/metrics`` answers when prometheus-client is not installed.
METRICS_UNAVAILABLE = (
    f"prometheus-client is not installed, so this worker keeps no metrics: "
    f"pip install '{METRICS_EXTRA}'\n"
)


def _prometheus() -> ModuleType | None:
    try:
        return importlib.import_module("prometheus_client")
    except ImportError:
        return None


#: prometheus_client, or None when the ``metrics`` extra is not installed.
prometheus: ModuleType | None = _prometheus()


class NoOpMetric:
    """Stands in for a Counter or Histogram (and their labelled children): records nothing."""

    def labels(self, *values: Any, **labels: Any) -> NoOpMetric:
        return self

    def inc(self, amount: float = 1) -> None:
        pass

    def observe(self, amount: float) -> None:
        pass


def counter(name: str, documentation: str, labels: Sequence[str] = ()) -> Any:
    """A prometheus-client Counter, or a ``NoOpMetric`` without the ``metrics`` extra."""
    if prometheus is None:
        return NoOpMetric()
    return prometheus.Counter(name, documentation, list(labels))


def histogram(
    name: str, documentation: str, labels: Sequence[str] = (), buckets: Sequence[float] = ()
) -> Any:
    """A prometheus-client Histogram, or a ``NoOpMetric`` without the ``metrics`` extra."""
    if prometheus is None:
        return NoOpMetric()
    return prometheus.Histogram(name, documentation, list(labels), buckets=tuple(buckets))


_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

CLAIMED = counter("pg_queue_claimed", "Messages claimed", ["queue"])
SUCCEEDED = counter("pg_queue_succeeded", "Jobs acked as succeeded", ["queue"])
FAILED = counter("pg_queue_failed", "Failed executions (retried or dead-lettered)", ["queue"])
RETRIED = counter("pg_queue_retried", "Jobs put back for another attempt", ["queue"])
DEAD_LETTERED = counter("pg_queue_dead_lettered", "Jobs moved to the dead-letter table", ["queue"])
LEASE_LOST = counter("pg_queue_lease_lost", "Leases found taken away from this worker", ["queue"])
REARMED = counter("pg_queue_rearmed", "Expired claims returned to ready by this worker")
TIME_LIMITED = counter("pg_queue_time_limited", "Jobs failed for exceeding their time limit")
RECONNECTS = counter("pg_queue_reconnects", "Database reconnects after a lost connection")
THREAD_ERRORS = counter(
    "pg_queue_thread_errors",
    "Unexpected exceptions in worker threads (each one turns /healthz red)",
    ["thread"],
)
UNSTORABLE = counter(
    "pg_queue_unstorable",
    "Finishes the database refused for their content, dead-lettered as 'unstorable'",
    ["queue"],
)
EVENTS_DROPPED = counter(
    "pg_queue_events_dropped", "Lifecycle signals not sent because their receivers fell behind"
)
TASK_DURATION = histogram(
    "pg_queue_task_duration_seconds", "Task run time", ["queue"], buckets=_LATENCY_BUCKETS
)
ENQUEUE_TO_START = histogram(
    "pg_queue_enqueue_to_start_seconds",
    "Time from enqueue (or due time) to start",
    ["queue"],
    buckets=_LATENCY_BUCKETS,
)


class QueueDepthCollector:
    """Queue depth by state and oldest ready age, from the snapshot one worker refreshes
    (``pg_queue_stats``, every ``QUEUE_STATS_INTERVAL``): a scrape never counts the queue
    table. ``pg_queue_depth_snapshot_age_seconds`` says how old the figures are.

    A prometheus-client collector (it needs only ``collect``); build it only when
    ``prometheus`` is not None.
    """

    def __init__(self, database: str = "default") -> None:
        self.database = database

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        from pg_queue.db import sql_ops
        from pg_queue.db.connection import worker_connection

        depth = GaugeMetricFamily(
            "pg_queue_depth", "Messages by queue and state", labels=["queue", "state"]
        )
        oldest = GaugeMetricFamily(
            "pg_queue_oldest_ready_age_seconds", "Age of the oldest due job", labels=["queue"]
        )
        age = GaugeMetricFamily(
            "pg_queue_depth_snapshot_age_seconds",
            "Seconds since the depth figures were counted (one worker recounts them every "
            "QUEUE_STATS_INTERVAL)",
            labels=["queue"],
        )
        try:
            with worker_connection(self.database) as conn:
                rows = conn.execute(sql_ops.QUEUE_STATS).fetchall()
        except Exception:
            logger.exception("queue depth scrape failed")
            return
        for queue, ready, delayed, running, oldest_ready, taken_ago in rows:
            depth.add_metric([queue, "ready"], ready)
            depth.add_metric([queue, "delayed"], delayed)
            depth.add_metric([queue, "running"], running)
            oldest.add_metric([queue], float(oldest_ready))
            age.add_metric([queue], float(taken_ago))
        yield depth
        yield oldest
        yield age


_depth_lock = threading.Lock()
_depth_registered = False


def register_queue_depth() -> None:
    """Add the queue-depth collector to the default registry, once per process.

    The registry refuses a second collector with the same metric names; without the
    ``metrics`` extra there is nothing to register into, and this does nothing.
    """
    global _depth_registered
    if prometheus is None:
        return
    with _depth_lock:
        if not _depth_registered:
            prometheus.REGISTRY.register(QueueDepthCollector())
            _depth_registered = True
