"""What a finished job's continuations become: the ``on_success`` / ``on_error`` job specs.

Pure: ``on_success`` receives the result as its first argument; ``on_error`` receives the
failed job's task id and the real error text as its first two arguments; the continuation's
own arguments follow. Writing them (in the same transaction as the finish) is the worker's
``pg_queue.worker.continuations``; operators' cancels use the same specs.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from pg_queue.core.options import EnqueueOptions, JobSpec
from pg_queue.core.payload import ContinuationSpec, loads

logger = logging.getLogger("pg_queue.continuations")


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
