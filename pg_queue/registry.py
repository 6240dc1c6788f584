"""Task lookup: native ``@pg_queue.task`` functions, and Celery-registered tasks by name.

The decorator mirrors Django's own Tasks framework: a frozen ``Task`` value, ``.using(...)`` to
override enqueue options, ``.enqueue(...)`` to queue a call. Calling the task runs it in-process.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, overload

from django.utils.module_loading import import_string

from pg_queue.conf import queue_settings
from pg_queue.exceptions import ConfigurationError, TaskNotFound
from pg_queue.payload import check_text

if TYPE_CHECKING:
    from pg_queue.jobspec import JobSpec
    from pg_queue.results import TaskHandle

BackoffFn = Callable[[int], float]
"""A custom backoff: attempt number (1 = the first run failed) -> seconds before the next."""

#: Characters ``run_pg_worker --queues 'default=3,email=1'`` reads as syntax: a queue whose name
#: holds one could be enqueued to but never named to a worker.
QUEUE_NAME_SEPARATORS = ",="
#: ``max_attempts`` is stored in an int column.
MAX_ATTEMPTS_LIMIT = 2**31 - 1


def check_queue_name(queue: object, label: str = "queue") -> str:
    """``queue`` if jobs put there can be stored and served, else ``ValueError`` naming
    ``label``: a non-empty string without NUL, surrogates, ``,`` or ``=``."""
    if not isinstance(queue, str) or not queue:
        raise ValueError(f"{label} must be a non-empty string, got {queue!r}")
    check_text(label, queue)
    for char in QUEUE_NAME_SEPARATORS:
        if char in queue:
            raise ValueError(
                f"{label} {queue!r} contains {char!r}, which run_pg_worker --queues reads as a "
                "separator: no worker could be pointed at this queue"
            )
    return queue


def check_max_attempts(value: object) -> int:
    """``value`` if it is a valid ``max_attempts`` (an int, not a bool, in 1..2**31-1)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"max_attempts must be an int, got {type(value).__name__} {value!r}")
    if not 1 <= value <= MAX_ATTEMPTS_LIMIT:
        raise ValueError(f"max_attempts must be >= 1 and <= {MAX_ATTEMPTS_LIMIT}, got {value}")
    return value


@dataclass(frozen=True, kw_only=True, slots=True)
class EnqueueOptions:
    """Per-call options; ``None`` means "the task's default"."""

    queue: str | None = None
    priority: int | None = None
    delay: float | None = None
    eta: dt.datetime | None = None
    dedup_key: str | None = None
    max_attempts: int | None = None
    tenant_key: str = ""
    resource_key: str | None = None


@dataclass(frozen=True, kw_only=True)
class Task:
    """A registered task function and its defaults."""

    func: Callable[..., Any]
    name: str
    queue: str
    priority: int = 0
    max_attempts: int = 3
    store_result: bool = True
    takes_context: bool = False
    time_limit: float = 0.0
    retry_backoff: float | BackoffFn | None = None
    options: EnqueueOptions = dataclasses.field(default_factory=EnqueueOptions)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run the function here and now, like calling a Celery task."""
        return self.func(*args, **kwargs)

    def using(
        self,
        *,
        queue: str | None = None,
        priority: int | None = None,
        delay: float | None = None,
        eta: dt.datetime | None = None,
        dedup_key: str | None = None,
        max_attempts: int | None = None,
        tenant_key: str | None = None,
        resource_key: str | None = None,
    ) -> Task:
        """A copy of this task whose next enqueues use these options.

        A queue name no worker could serve is refused here; every other option is checked by
        the enqueue that uses it.
        """
        if queue:
            check_queue_name(queue)
        given: dict[str, Any] = {
            "queue": queue,
            "priority": priority,
            "delay": delay,
            "eta": eta,
            "dedup_key": dedup_key,
            "max_attempts": max_attempts,
            "tenant_key": tenant_key,
            "resource_key": resource_key,
        }
        changes = {k: v for k, v in given.items() if v is not None}
        return dataclasses.replace(self, options=dataclasses.replace(self.options, **changes))

    def job(self, *args: Any, **kwargs: Any) -> JobSpec:
        """A job description for ``enqueue_many`` (no database access)."""
        from pg_queue.jobspec import JobSpec

        return JobSpec(task_name=self.name, args=list(args), kwargs=kwargs, options=self.options)

    def enqueue(self, *args: Any, **kwargs: Any) -> TaskHandle:
        """Queue one call in the caller's transaction; returns its handle."""
        from pg_queue.producer import enqueue_job

        return enqueue_job(self.job(*args, **kwargs))


_lock = threading.Lock()
_tasks: dict[str, Task] = {}


@overload
def task(func: Callable[..., Any], /) -> Task: ...


@overload
def task(
    *,
    name: str | None = None,
    queue: str | None = None,
    priority: int = 0,
    max_attempts: int | None = None,
    store_result: bool = True,
    takes_context: bool = False,
    time_limit: float = 0.0,
    retry_backoff: float | BackoffFn | None = None,
) -> Callable[[Callable[..., Any]], Task]: ...


def task(
    func: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    queue: str | None = None,
    priority: int = 0,
    max_attempts: int | None = None,
    store_result: bool = True,
    takes_context: bool = False,
    time_limit: float = 0.0,
    retry_backoff: float | BackoffFn | None = None,
) -> Task | Callable[[Callable[..., Any]], Task]:
    """Register a function as a task; usable bare (``@task``) or with options (``@task(...)``).

    ``name`` defaults to ``module.function``. ``takes_context=True`` passes a ``JobContext``
    (task id, attempt, queue) as the first argument, like Django's Tasks framework.
    """

    def register(fn: Callable[..., Any]) -> Task:
        conf = queue_settings()
        try:
            if max_attempts is not None:
                check_max_attempts(max_attempts)
            if queue:
                check_queue_name(queue)
        except ValueError as exc:
            raise ConfigurationError(f"task {fn.__qualname__}: {exc}") from None
        t = Task(
            func=fn,
            name=name or f"{fn.__module__}.{fn.__qualname__}",
            queue=queue or conf.default_queue,
            priority=priority,
            max_attempts=max_attempts or conf.max_attempts,
            store_result=store_result,
            takes_context=takes_context,
            time_limit=time_limit,
            retry_backoff=retry_backoff,
        )
        with _lock:
            existing = _tasks.get(t.name)
            if existing is not None and existing.func is not fn:
                same_origin = (existing.func.__module__, existing.func.__qualname__) == (
                    fn.__module__,
                    fn.__qualname__,
                )
                if not same_origin:
                    raise ConfigurationError(f"two different tasks are named {t.name!r}")
            _tasks[t.name] = t
        return t

    if func is not None:
        return register(func)
    return register


def native_task(name: str) -> Task | None:
    """The ``@task`` registered under ``name``, if any."""
    return _tasks.get(name)


def native_tasks() -> dict[str, Task]:
    """A snapshot of every natively registered task."""
    with _lock:
        return dict(_tasks)


def celery_app() -> Any | None:
    """The Celery app named by ``PG_QUEUE['CELERY_APP']`` (``module:attr``), or None."""
    path = queue_settings().celery_app
    if not path:
        return None
    return import_string(path.replace(":", "."))


def celery_task(name: str) -> Any | None:
    """The Celery task registered under ``name`` in the configured app, or None."""
    app = celery_app()
    if app is None:
        return None
    return app.tasks.get(name)


def resolve(name: str) -> Task | Any:
    """A native Task, else a Celery task; ``TaskNotFound`` names what was looked for."""
    found = native_task(name) or celery_task(name)
    if found is None:
        raise TaskNotFound(f"no task named {name!r} is registered (native or Celery)")
    return found


def import_task_modules(extra: list[str] | tuple[str, ...] = ()) -> list[str]:
    """Import ``PG_QUEUE['IMPORTS']`` plus ``extra`` so their tasks register; returns the names."""
    import importlib

    modules = [*queue_settings().imports, *extra]
    for module in modules:
        importlib.import_module(module)
    return modules
