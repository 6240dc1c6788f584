"""Callbacks after a job: the ``on_success`` / ``on_error`` continuations.

Continuations are enqueued on the worker's connection inside the same transaction as the ack
(or dead-letter) that finished the job, under a savepoint: if a continuation cannot be enqueued
the failure is logged with the task id and the job is still acked, never redelivered for it.
What they contain is ``pg_queue.core.continuations``. (``job_failed`` and the other signals are
sent by ``worker.events``, off the hot threads.)
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

import psycopg

from pg_queue.core.conf import NOTIFY_CHANNEL, queue_settings
from pg_queue.core.options import JobSpec
from pg_queue.db import queries, sql
from pg_queue.producer import bulk_params

logger = logging.getLogger("pg_queue.worker")


def enqueue_continuations(
    conn: psycopg.Connection[Any], specs: list[tuple[uuid.UUID, JobSpec]]
) -> int:
    """Insert continuation jobs under a savepoint of the caller's transaction.

    ``specs`` pairs each continuation with the task id of the job that fired it (for logs).
    Returns how many were enqueued; a failure is logged and swallowed so the ack commits.
    """
    if not specs:
        return 0
    try:
        with conn.transaction():
            queries.job_insert_many(conn, bulk_params([spec for _, spec in specs]))
            if queue_settings().notify:
                for queue in sorted({spec.options.queue or "" for _, spec in specs}):
                    conn.execute(sql.NOTIFY, {"channel": NOTIFY_CHANNEL, "queue": queue})
    except (psycopg.errors.DataError, psycopg.errors.IntegrityError, ValueError) as exc:
        for task_id, spec in specs:
            logger.error(
                "continuation not enqueued (job still acked) task_id=%s continuation=%s "
                "queue=%s error=%s",
                task_id,
                spec.task_name,
                spec.options.queue,
                exc,
            )
        return 0
    return len(specs)
