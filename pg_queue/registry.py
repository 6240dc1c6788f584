"""Task lookup by name: native ``@pg_queue.task`` functions, and Celery-registered tasks.

Producers look tasks up to apply their defaults (queue, max_attempts) when a call names a task
by string; workers look them up to run them. ``pg_queue.tasks`` defines ``Task`` and the
decorator, which registers here; this module never imports it back (no import cycle).
"""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from django.utils.module_loading import import_string

from pg_queue.core.conf import queue_settings
from pg_queue.core.exceptions import ConfigurationError, TaskNotFound

if TYPE_CHECKING:
    from pg_queue.tasks import Task

_lock = threading.Lock()
_tasks: dict[str, Task] = {}


def register_task(t: Task) -> Task:
    """Make ``t`` findable by its name; the same function registered again is fine, two
    different functions under one name are a ``ConfigurationError``."""
    with _lock:
        existing = _tasks.get(t.name)
        if existing is not None and existing.func is not t.func:
            same_origin = (existing.func.__module__, existing.func.__qualname__) == (
                t.func.__module__,
                t.func.__qualname__,
            )
            if not same_origin:
                raise ConfigurationError(f"two different tasks are named {t.name!r}")
        _tasks[t.name] = t
    return t


def native_task(name: str) -> Task | None:
    """The ``@task`` registered under ``name``, if any."""
    return _tasks.get(name)


def native_tasks() -> dict[str, Task]:
    """A snapshot of every natively registered task."""
    with _lock:
        return dict(_tasks)


#: What to install for ``PG_QUEUE['CELERY_APP']``; named by this error and by ``manage.py check``.
CELERY_EXTRA = "pg-queue[celery]"


def celery_installed() -> bool:
    """Whether Celery can be imported (the ``pg-queue[celery]`` extra); imports nothing."""
    try:
        return importlib.util.find_spec("celery") is not None
    except (ImportError, ValueError):  # a finder that refuses it says the same
        return False


def celery_app() -> Any | None:
    """The Celery app named by ``PG_QUEUE['CELERY_APP']`` (``module:attr``), or None.

    ``ConfigurationError`` naming the extra when the setting is on but Celery is not installed
    (``manage.py check`` reports the same as ``pg_queue.E016`` before any worker starts).
    """
    path = queue_settings().celery_app
    if not path:
        return None
    if not celery_installed():
        raise ConfigurationError(
            f"PG_QUEUE['CELERY_APP'] is {path!r} but Celery is not installed: "
            f"pip install '{CELERY_EXTRA}'"
        )
    return import_string(path.replace(":", "."))


def celery_task(name: str) -> Any | None:
    """The Celery task registered under ``name`` in the configured app, or None."""
    app = celery_app()
    if app is None:
        return None
    return app.tasks.get(name)


#: Asked, in order, for a name no native or Celery task has; each returns a Task (registered,
#: so the next lookup of the name is a plain dictionary hit), None (not mine), or raises
#: ``TaskNotFound`` saying why. Django's Tasks framework backend adds one (``pg_queue.apps``).
type Fallback = Callable[[str], Task | None]
_fallbacks: list[Fallback] = []


#: How a job written by the Django Tasks backend names its task: this marker, then the task's
#: module path (``pg_queue.tasks_backend``).
DJANGO_TASK_PREFIX = "django.tasks:"


def add_fallback(fallback: Fallback) -> None:
    """Let ``resolve`` ask ``fallback`` for names nothing registered; adding it again is a no-op."""
    with _lock:
        if fallback not in _fallbacks:
            _fallbacks.append(fallback)


def resolve(name: str) -> Task | Any:
    """A native Task, else a Celery task, else what a fallback finds; ``TaskNotFound`` names
    what was looked for."""
    found = native_task(name) or celery_task(name)
    if found is None:
        for fallback in tuple(_fallbacks):
            found = fallback(name)
            if found is not None:
                return found
        raise TaskNotFound(f"no task named {name!r} is registered (native or Celery)")
    return found


def import_task_modules(extra: list[str] | tuple[str, ...] = ()) -> list[str]:
    """Import ``PG_QUEUE['IMPORTS']`` plus ``extra`` so their tasks register; returns the names."""
    import importlib

    modules = [*queue_settings().imports, *extra]
    for module in modules:
        importlib.import_module(module)
    return modules
