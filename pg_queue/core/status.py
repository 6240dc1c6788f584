"""``JobStatus``: the one set of words for where a job stands, from enqueue to outcome.

A ``str`` enum, so a status compares equal to the text stored in ``pg_task_result.status``
and to what ``JobHandle.status()`` returned before it was an enum. The database stores the
finished ones (``models.ResultStatus`` takes its choices from here); ``queued`` and
``running`` are read from the job's row, ``timeout`` and ``unknown`` only ever come from a
caller's wait.
"""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    QUEUED = "queued"  # a row in pg_queue_message, ready (due now or later)
    RUNNING = "running"  # a row in pg_queue_message, claimed by a worker
    SUCCEEDED = "succeeded"  # an outcome in pg_task_result
    FAILED = "failed"  # an outcome in pg_task_result (dead-lettered too)
    CANCELLED = "cancelled"  # an outcome in pg_task_result
    TIMEOUT = "timeout"  # a wait ended before the job did
    UNKNOWN = "unknown"  # neither a row nor an outcome (never committed, expired, not stored)

    @property
    def finished(self) -> bool:
        return self in FINISHED


FINISHED = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})
