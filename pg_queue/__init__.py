"""pg_queue: PostgreSQL as a durable task queue for Django, routable per call from Celery.

Public API (import from here)::

    from pg_queue import task, enqueue, enqueue_many, job, call, Retry, JobContext
"""

from typing import TYPE_CHECKING, Any

__all__ = [
    "JobContext",
    "JobSpec",
    "Retry",
    "TaskHandle",
    "TaskOutcome",
    "call",
    "enqueue",
    "enqueue_many",
    "job",
    "task",
]

if TYPE_CHECKING:
    from pg_queue.context import JobContext
    from pg_queue.exceptions import Retry
    from pg_queue.producer import JobSpec, call, enqueue, enqueue_many, job
    from pg_queue.registry import task
    from pg_queue.results import TaskHandle, TaskOutcome

_LAZY = {
    "JobContext": "pg_queue.context",
    "Retry": "pg_queue.exceptions",
    "JobSpec": "pg_queue.producer",
    "call": "pg_queue.producer",
    "enqueue": "pg_queue.producer",
    "enqueue_many": "pg_queue.producer",
    "job": "pg_queue.producer",
    "task": "pg_queue.registry",
    "TaskHandle": "pg_queue.results",
    "TaskOutcome": "pg_queue.results",
}


def __getattr__(name: str) -> Any:
    # Lazy, so that ``import pg_queue`` in settings or INSTALLED_APPS never touches models
    # before the app registry is ready.
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'pg_queue' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
