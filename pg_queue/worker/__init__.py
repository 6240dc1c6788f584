"""The worker: claim loop, task threads, heartbeat, shutdown."""

from pg_queue.worker.core import Worker, WorkerStats, parse_queues

__all__ = ["Worker", "WorkerStats", "parse_queues"]
