"""The queues overview: per-queue counts, oldest ready age, recent outcomes, live workers.

Two aggregate statements in one read-only snapshot, whatever the number of queues; shared by the
admin page and ``pg_queue_status``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from django.db import connections, transaction

from pg_queue.core.conf import queue_settings
from pg_queue.db import sql_ops

#: A queue whose oldest due job has waited longer than this (seconds) is shown red: nobody is
#: draining it fast enough. Five minutes is long for interactive work and short enough to page
#: someone before a backlog becomes an outage. (A candidate for ``PG_QUEUE``; a constant for now.)
STUCK_READY_SECONDS = 300.0
#: The two recent windows (minutes) of finished / failed counts in the overview.
RECENT_MINUTES = (5, 60)


def format_age(seconds: float | None) -> str:
    """``42s``, ``4m 05s``, ``3h 12m``, ``2d 4h``; ``-`` for none."""
    if seconds is None:
        return "-"
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86400}d {s % 86400 // 3600}h"


# --- overview --------------------------------------------------------------------------------


#: The first statement of the overview's own transaction: one snapshot for both statements.


@dataclass(frozen=True, kw_only=True, slots=True)
class QueueStats:
    """One queue's line in the overview. Counts of finished jobs cover tasks that store results."""

    queue: str
    ready: int  # due now
    delayed: int  # ready but due later (delay, eta, retry backoff)
    running: int  # claimed
    lease_expired: int  # claimed, lease past: the worker died or stalled; re-arm will act
    cancel_requested: int
    oldest_ready_seconds: float | None  # how long the oldest due job has been due
    finished_5m: int
    failed_5m: int
    finished_60m: int
    failed_60m: int
    dead_letters: int
    workers: int  # live workers (fresh heartbeat) listening on this queue
    stuck_ready_seconds: float = STUCK_READY_SECONDS

    @property
    def ready_stuck(self) -> bool:
        """The oldest due job has waited past ``STUCK_READY_SECONDS``."""
        return (self.oldest_ready_seconds or 0.0) > self.stuck_ready_seconds

    @property
    def lease_stuck(self) -> bool:
        """Some job is running past its lease."""
        return self.lease_expired > 0

    @property
    def no_workers(self) -> bool:
        """Jobs are due or running but no live worker listens on the queue."""
        return self.workers == 0 and (self.ready > 0 or self.running > 0)

    @property
    def stuck(self) -> bool:
        return self.ready_stuck or self.lease_stuck or self.no_workers

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("stuck_ready_seconds")
        data.update(
            ready_stuck=self.ready_stuck,
            lease_stuck=self.lease_stuck,
            no_workers=self.no_workers,
            stuck=self.stuck,
        )
        return data


@dataclass(frozen=True, kw_only=True, slots=True)
class WorkerStats:
    worker_id: str
    hostname: str
    pid: int
    queues: list[str]
    concurrency: int
    state: str
    uptime_seconds: float
    heartbeat_age_seconds: float
    in_flight: int
    stale: bool  # no heartbeat for a whole lease: dead or stalled

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, kw_only=True, slots=True)
class Overview:
    """A snapshot of every queue and worker, taken with two statements."""

    taken_at: dt.datetime  # database clock
    queues: list[QueueStats]
    workers: list[WorkerStats]
    stuck_ready_seconds: float
    worker_stale_seconds: float
    totals: QueueStats = field(init=False)

    def __post_init__(self) -> None:
        ages = [q.oldest_ready_seconds for q in self.queues if q.oldest_ready_seconds is not None]
        total = QueueStats(
            queue="(all)",
            oldest_ready_seconds=max(ages) if ages else None,
            workers=sum(1 for w in self.workers if not w.stale),
            stuck_ready_seconds=self.stuck_ready_seconds,
            **{
                name: sum(getattr(q, name) for q in self.queues)
                for name in (
                    "ready",
                    "delayed",
                    "running",
                    "lease_expired",
                    "cancel_requested",
                    "finished_5m",
                    "failed_5m",
                    "finished_60m",
                    "failed_60m",
                    "dead_letters",
                )
            },
        )
        object.__setattr__(self, "totals", total)

    @property
    def stuck(self) -> bool:
        return any(q.stuck for q in self.queues)

    def to_json(self) -> dict[str, Any]:
        return {
            "taken_at": self.taken_at.isoformat(),
            "stuck_ready_seconds": self.stuck_ready_seconds,
            "worker_stale_seconds": self.worker_stale_seconds,
            "stuck": self.stuck,
            "queues": [q.to_json() for q in self.queues],
            "totals": self.totals.to_json(),
            "workers": [w.to_json() for w in self.workers],
        }


def worker_stale_seconds() -> float:
    """A worker renews its heartbeat every third of a lease: a lease without one means stale."""
    return float(queue_settings().lease_seconds)


def queue_overview(
    *, stuck_ready_seconds: float = STUCK_READY_SECONDS, using: str = "default"
) -> Overview:
    """Every queue's counts and every worker, in two aggregate statements (not one per queue)."""
    stale = worker_stale_seconds()
    short, long = RECENT_MINUTES
    conn = connections[using]
    # Both statements read one snapshot (and one now()), so a worker's in-flight count matches
    # the queue's running count even while batches are claimed and acked in between. Inside
    # a caller's transaction, that transaction's snapshot rules instead.
    own = not conn.in_atomic_block
    with transaction.atomic(using) if own else contextlib.nullcontext(), conn.cursor() as cursor:
        if own:
            cursor.execute(sql_ops.OVERVIEW_SNAPSHOT)
        cursor.execute(sql_ops.QUEUE_OVERVIEW, {"short": short, "long": long, "stale": stale})
        queue_rows = cursor.fetchall()
        cursor.execute(sql_ops.WORKER_OVERVIEW)
        worker_rows = cursor.fetchall()
        if not worker_rows:
            cursor.execute(sql_ops.DB_NOW)
            (taken_at,) = cursor.fetchone()
        else:
            taken_at = worker_rows[0][-1]
    queues = [
        QueueStats(
            queue=r[0],
            ready=r[1],
            delayed=r[2],
            running=r[3],
            lease_expired=r[4],
            cancel_requested=r[5],
            oldest_ready_seconds=r[6],
            finished_5m=r[7],
            failed_5m=r[8],
            finished_60m=r[9],
            failed_60m=r[10],
            dead_letters=r[11],
            workers=r[12],
            stuck_ready_seconds=stuck_ready_seconds,
        )
        for r in queue_rows
    ]
    workers = [
        WorkerStats(
            worker_id=r[0],
            hostname=r[1],
            pid=r[2],
            queues=_queue_list(r[3]),
            concurrency=r[4],
            state=r[5],
            uptime_seconds=r[6],
            heartbeat_age_seconds=r[7],
            in_flight=r[8],
            stale=r[7] > stale,
        )
        for r in worker_rows
    ]
    return Overview(
        taken_at=taken_at,
        queues=queues,
        workers=workers,
        stuck_ready_seconds=stuck_ready_seconds,
        worker_stale_seconds=stale,
    )


def _queue_list(raw: Any) -> list[str]:
    """``pg_worker.queues`` as a list of names (Django hands jsonb over as text)."""
    data = json.loads(raw) if isinstance(raw, str) else raw
    return [str(q) for q in data] if isinstance(data, list) else []
