"""Receivers of pg_queue signals: a dead-lettered job never leaves its execution open."""

from __future__ import annotations

import logging
import uuid
from typing import Any

from django.db import InterfaceError, OperationalError, close_old_connections
from django.dispatch import receiver

from backend.executions import fail_by_task_id, finish_execution
from backend.models import ExecutionStatus
from pg_queue.models import DeadLetter
from pg_queue.signals import job_failed

logger = logging.getLogger("backend.executions")

#: Callback tasks whose payload names the execution they were finishing.
CALLBACK_TASKS = frozenset(
    {"workers.executions.complete_execution", "workers.executions.fail_execution"}
)


@receiver(job_failed, dispatch_uid="backend.executions.job_failed")
def mark_execution_of_dead_job(
    sender: Any,
    *,
    task_id: uuid.UUID,
    task_name: str = "",
    queue_name: str = "",
    reason: str = "",
    error: str = "",
    **kwargs: Any,
) -> None:
    """Mark the open execution of a dead-lettered job ERROR, with the real error text.

    Covers what no ``on_error`` callback can: a run enqueued without one, a run whose callback
    cannot run, and a dead callback itself (its execution is found through the dead letter's
    payload). Conditional, so it never overwrites a final status. Runs in a worker thread that
    has no request cycle, so a connection broken since the last call is replaced (once).
    """
    text = (error if reason == "exhausted" else f"{reason}: {error}") or f"dead-lettered ({reason})"
    ids: list[str] = []
    for attempt in (1, 2):
        close_old_connections()
        try:
            ids = _close_executions(str(task_id), task_name, text)
            break
        except (OperationalError, InterfaceError):
            if attempt == 2:
                raise
    if ids:
        logger.warning(
            "execution marked ERROR by job_failed task_id=%s task=%s queue=%s reason=%s "
            "execution_ids=%s",
            task_id,
            task_name,
            queue_name,
            reason,
            ",".join(ids),
        )


def _close_executions(task_id: str, task_name: str, error: str) -> list[str]:
    ids = fail_by_task_id(task_id, error)
    if task_name in CALLBACK_TASKS:
        payload = DeadLetter.objects.filter(task_id=task_id).values_list("payload", flat=True)
        found = payload.first()
        kwargs = found.get("kwargs") if isinstance(found, dict) else None
        execution_id = kwargs.get("execution_id") if isinstance(kwargs, dict) else None
        if isinstance(execution_id, str) and execution_id:
            callback_error = f"{task_name.rsplit('.', 1)[-1]} dead-lettered: {error}"
            if finish_execution(execution_id, ExecutionStatus.ERROR, error=callback_error):
                ids.append(execution_id)
    return ids
