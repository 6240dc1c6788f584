"""``FinishLog``: what the finisher records once the database has taken (or refused) a batch.

Counters (``WorkerStats`` and Prometheus, one increment per queue per batch, not per job),
one log line per job that did not simply succeed (task id, task and queue on every line), and
the ``job_failed`` signal for each dead letter, queued for the events thread.
"""

from __future__ import annotations

import logging
from typing import Any

from pg_queue import metrics
from pg_queue.core.outcomes import Bury, ClaimedJob, Outcome, RetryLater, Success
from pg_queue.signals import (
    chain_finished,
    group_finished,
    job_failed,
    job_retried,
    job_succeeded,
)
from pg_queue.worker.events import Events
from pg_queue.worker.stats import WorkerStats
from pg_queue.workflows.progress import GroupEnded

logger = logging.getLogger("pg_queue.worker")

#: What a kind of finish is called in the "skipped: lease lost" line.
_WHAT = {Success: "ack", RetryLater: "retry", Bury: "dead-letter"}


def job_fields(msg: ClaimedJob) -> str:
    """``task_id=... task=... queue=...``: what every log line about a job carries."""
    return f"task_id={msg.task_id} task={msg.task_name} queue={msg.queue_name}"


class FinishLog:
    """Counts, logs and signals finishes; see the module docstring."""

    def __init__(self, stats: WorkerStats, events: Events) -> None:
        self.stats = stats
        self.events = events

    def written(self, items: list[Any], written: set[int]) -> None:
        """``items`` (one kind) were sent; ``written`` are the ids the database changed."""
        kind = type(items[0])
        per_queue: dict[str, int] = {}
        for item in items:
            if item.msg.msg_id in written:
                per_queue[item.msg.queue_name] = per_queue.get(item.msg.queue_name, 0) + 1
            else:
                self.stats.lease_lost += 1
                metrics.LEASE_LOST.labels(item.msg.queue_name).inc()
                logger.warning(
                    "%s skipped: lease lost %s", _WHAT.get(kind, "cancel"), job_fields(item.msg)
                )
        total = sum(per_queue.values())
        done = [item for item in items if item.msg.msg_id in written]
        if kind is Success:
            self.stats.succeeded += total
            _count(metrics.SUCCEEDED, per_queue)
            for d in done:
                self.events.emit(job_succeeded, **_job_kwargs(d.msg))
        elif kind is RetryLater:
            self.stats.retried += total
            _count(metrics.RETRIED, per_queue)
            _count(metrics.FAILED, per_queue)
            for r in done:
                logger.warning(
                    "job failed, retrying %s attempt=%d/%d delay=%.2fs error=%s",
                    job_fields(r.msg),
                    r.msg.attempts,
                    r.msg.max_attempts,
                    r.delay,
                    r.error,
                )
                self.events.emit(job_retried, **_job_kwargs(r.msg), error=r.error, delay=r.delay)
        elif kind is Bury:
            self.stats.dead_lettered += total
            _count(metrics.DEAD_LETTERED, per_queue)
            _count(metrics.FAILED, per_queue)
            for b in done:
                self._buried(b)
        else:
            self.stats.cancelled += total
            for c in done:
                logger.warning("job cancelled %s error=%s", job_fields(c.msg), c.error)

    def groups_ended(self, ended: list[GroupEnded]) -> None:
        """Signal the groups and chains a write ended (their callbacks are already queued)."""
        for end in ended:
            signal = chain_finished if end.kind == "chain" else group_finished
            self.events.emit(signal, group_id=end.group_id, status=end.status)

    def _buried(self, b: Bury) -> None:
        logger.error(
            "job dead-lettered %s attempts=%d reason=%s error=%s",
            job_fields(b.msg),
            b.msg.attempts,
            b.reason,
            b.error,
        )
        self.events.emit(job_failed, **_job_kwargs(b.msg), reason=b.reason, error=b.error)

    def discarded(self, outcome: Outcome) -> None:
        logger.info("finish discarded, its lease was lost earlier %s", job_fields(outcome.msg))

    def deferred(self, outcome: Outcome, retry_in: float, error: str) -> None:
        logger.warning(
            "finish deferred after a transient error %s retry_in=%.1fs error=%s",
            job_fields(outcome.msg),
            retry_in,
            error,
        )

    def unstorable(self, outcome: Outcome) -> None:
        self.stats.unstorable += 1
        metrics.UNSTORABLE.labels(outcome.msg.queue_name).inc()

    def given_up(self, outcome: Outcome, error: str) -> None:
        logger.error(
            "finish given up: the database refused even its dead letter %s error=%s; its lease "
            "expires and re-arm hands the job out again",
            job_fields(outcome.msg),
            error,
        )


def _job_kwargs(msg: ClaimedJob) -> dict[str, Any]:
    return {"task_id": msg.task_id, "task_name": msg.task_name, "queue_name": msg.queue_name}


def _count(counter: Any, per_queue: dict[str, int]) -> None:
    """Add one batch to a per-queue counter (one inc per queue, not per job)."""
    for queue_name, count in per_queue.items():
        counter.labels(queue_name).inc(count)
