"""Callbacks after a job: the ``on_success`` / ``on_error`` continuations.

Continuations are enqueued on the worker's connection inside the same transaction as the ack
(or dead-letter) that finished the job, under a savepoint: if a continuation cannot be enqueued
the failure is logged with the task id and the job is still acked, never redelivered for it.
``on_success`` receives the result as its first argument; ``on_error`` receives the failed job's
task id and the real error text as its first two arguments. (``job_failed`` and the other
signals are sent by ``worker.events``, off the hot threads.)
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

import psycopg

from pg_queue.core.conf import NOTIFY_CHANNEL, queue_settings
from pg_queue.core.options import EnqueueOptions, JobSpec
from pg_queue.core.payload import ContinuationSpec, loads
from pg_queue.db import queries, sql
from pg_queue.producer import bulk_params

logger = logging.getLogger("pg_queue.worker")


def lenient_on_error(raw_payload: Any) -> ContinuationSpec | None:
    """The ``on_error`` spec of a payload (decoded, or JSON text) that may be otherwise
    undecodable, if it has one. Never raises: an unreadable payload simply has none."""
    try:
        if isinstance(raw_payload, str | bytes):
            raw_payload = loads(raw_payload)
        if not isinstance(raw_payload, dict) or not raw_payload.get("on_error"):
            return None
        return ContinuationSpec.from_json(raw_payload["on_error"])
    except Exception as exc:
        logger.warning("on_error of an unreadable payload not fired: %s", exc)
        return None


def success_spec(spec: ContinuationSpec, value: Any) -> JobSpec:
    return JobSpec(
        task_name=spec.task_name,
        args=[value, *spec.args],
        kwargs=spec.kwargs,
        options=EnqueueOptions(queue=spec.queue),
    )


def error_spec(spec: ContinuationSpec, task_id: uuid.UUID, error: str) -> JobSpec:
    return JobSpec(
        task_name=spec.task_name,
        args=[str(task_id), error, *spec.args],
        kwargs=spec.kwargs,
        options=EnqueueOptions(queue=spec.queue),
    )


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
