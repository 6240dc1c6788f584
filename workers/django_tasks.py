"""Example tasks written against Django's own Tasks framework (Django 6.0+), run by pg_queue.

With ``TASKS = {"default": {"BACKEND": "pg_queue.tasks_backend.PgQueueBackend"}}`` these enqueue
pg_queue jobs and ``run_pg_worker`` runs them: nothing here imports pg_queue. The worker imports
this module by the task's path on the first job; it needs no ``PG_QUEUE['IMPORTS']`` entry.
"""

from __future__ import annotations

import threading
from typing import Any

from django.dispatch import receiver
from django.tasks import TaskContext, task
from django.tasks.signals import task_finished, task_started


@task
def add(a: int, b: int) -> int:
    return a + b


@task(queue_name="django", priority=50)
def urgent_echo(value: Any) -> Any:
    return value


@task(takes_context=True)
def describe_run(context: TaskContext, label: str) -> dict[str, Any]:
    """What a task can learn about its own run from Django's ``TaskContext``."""
    result = context.task_result
    return {
        "label": label,
        "id": result.id,
        "attempt": context.attempt,
        "status": result.status,
        "queue_name": result.task.queue_name,
        "priority": result.task.priority,
        "args": result.args,
        "worker_ids": result.worker_ids,
    }


class ReportGenerationError(Exception):
    """Raised by ``fail`` so a failed result names an exception class of this module."""


@task
def fail(reason: str) -> None:
    raise ReportGenerationError(reason)


@task(takes_context=True)
def succeed_on_attempt(context: TaskContext, attempt: int) -> int:
    """Fails until its ``attempt``-th run: retried only by a backend with MAX_ATTEMPTS > 1."""
    if context.attempt < attempt:
        raise ConnectionError(f"attempt {context.attempt}: the upstream is not there yet")
    return context.attempt


@task
async def async_multiply(a: int, b: int) -> int:
    return a * b


# Signals of this process's runs, newest last, for ``signals_seen`` (a worker runs both).
_seen: list[tuple[str, str, str]] = []
_seen_lock = threading.Lock()


@receiver(task_started)
def _record_started(sender: type, task_result: Any, **kwargs: Any) -> None:
    with _seen_lock:
        _seen.append(("started", task_result.id, str(task_result.status)))


@receiver(task_finished)
def _record_finished(sender: type, task_result: Any, **kwargs: Any) -> None:
    with _seen_lock:
        _seen.append(("finished", task_result.id, str(task_result.status)))


@task
def signals_seen() -> list[list[str]]:
    """``[signal, task id, status]`` for every ``task_started``/``task_finished`` this worker
    process sent so far (this run's own ``started`` included)."""
    with _seen_lock:
        return [list(event) for event in _seen]
