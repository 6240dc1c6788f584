"""pg_queue: PostgreSQL as a durable task queue for Django, routable per call from Celery.

Public API (import from here)::

    from pg_queue import task, enqueue, enqueue_many, job, call, Retry, JobContext
    from pg_queue import group, chain, resource_lock, ResourceLocked
"""

from typing import TYPE_CHECKING, Any


def _version() -> str:
    """The installed distribution's version; in a source checkout never installed, the one
    its pyproject.toml names."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("pg-queue")
    except PackageNotFoundError:
        import tomllib
        from pathlib import Path

        try:
            with (Path(__file__).resolve().parent.parent / "pyproject.toml").open("rb") as f:
                project = tomllib.load(f).get("project", {})
        except (OSError, tomllib.TOMLDecodeError):
            project = {}
        return (
            str(project.get("version", "0+unknown"))
            if project.get("name") == "pg-queue"
            else "0+unknown"
        )


__version__ = _version()

__all__ = [
    "JobContext",
    "JobHandle",
    "JobOutcome",
    "JobSpec",
    "ResourceLocked",
    "Retry",
    "call",
    "chain",
    "enqueue",
    "enqueue_many",
    "group",
    "job",
    "resource_lock",
    "task",
]

if TYPE_CHECKING:
    from pg_queue.core.context import JobContext
    from pg_queue.core.exceptions import ResourceLocked, Retry
    from pg_queue.core.options import JobSpec
    from pg_queue.producer import call, enqueue, enqueue_many, job
    from pg_queue.results import JobHandle, JobOutcome
    from pg_queue.tasks import task
    from pg_queue.workflows.groups import chain, group
    from pg_queue.workflows.locks import resource_lock

_LAZY = {
    "JobContext": "pg_queue.core.context",
    "Retry": "pg_queue.core.exceptions",
    "JobSpec": "pg_queue.core.options",
    "call": "pg_queue.producer",
    "enqueue": "pg_queue.producer",
    "enqueue_many": "pg_queue.producer",
    "job": "pg_queue.producer",
    "task": "pg_queue.tasks",
    "JobHandle": "pg_queue.results",
    "JobOutcome": "pg_queue.results",
    "ResourceLocked": "pg_queue.core.exceptions",
    "group": "pg_queue.workflows.groups",
    "chain": "pg_queue.workflows.groups",
    "resource_lock": "pg_queue.workflows.locks",
}


def __getattr__(name: str) -> Any:
    # Lazy, so that ``import pg_queue`` in settings or INSTALLED_APPS never touches models
    # before the app registry is ready.
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'pg_queue' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
