"""``@task``: a registered task function, its defaults, and how to queue a call of it.

Mirrors Django's own Tasks framework: a frozen ``Task`` value, ``.using(...)`` to override
enqueue options, ``.enqueue(...)`` to queue a call, ``.job(...)`` to describe one for
``enqueue_many``. Calling the task runs it in-process, like calling a Celery task. The
decorator registers the task in ``pg_queue.registry`` so workers and producers find it by name.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, overload

from pg_queue.core.conf import queue_settings
from pg_queue.core.exceptions import ConfigurationError
from pg_queue.core.options import (
    BackoffFn,
    EnqueueOptions,
    JobSpec,
    check_max_attempts,
    check_queue_name,
)
from pg_queue.producer import enqueue_job
from pg_queue.registry import register_task
from pg_queue.results import JobHandle

#: ``@task(resource_key=fn)``: called with a call's own arguments, returns its key or None.
type ResourceKeyFn = Callable[..., str | None]


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
    #: A fixed key, or a function of the call's arguments returning one (or None: no key).
    resource_key: str | ResourceKeyFn | None = None
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
        """A job description for ``enqueue_many`` (no database access).

        The task's ``resource_key`` applies unless ``.using(resource_key=...)`` set one; a
        callable gets this call's arguments.
        """
        options = self.options
        if self.resource_key is not None and options.resource_key is None:
            key = self._key(args, kwargs)
            if key is not None:
                options = dataclasses.replace(options, resource_key=key)
        return JobSpec(task_name=self.name, args=list(args), kwargs=kwargs, options=options)

    def _key(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
        if not callable(self.resource_key):
            return self.resource_key
        try:
            key = self.resource_key(*args, **kwargs)
        except Exception as exc:
            raise ValueError(
                f"task {self.name}: its resource_key function raised {exc!r} for this call's "
                "arguments; nothing was queued"
            ) from exc
        if key is not None and not isinstance(key, str):
            raise ValueError(
                f"task {self.name}: its resource_key function returned {key!r} "
                f"({type(key).__name__}); it must return a str or None"
            )
        return key

    def enqueue(self, *args: Any, **kwargs: Any) -> JobHandle:
        """Queue one call in the caller's transaction; returns its handle."""
        return enqueue_job(self.job(*args, **kwargs))


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
    resource_key: str | ResourceKeyFn | None = None,
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
    resource_key: str | ResourceKeyFn | None = None,
) -> Task | Callable[[Callable[..., Any]], Task]:
    """Register a function as a task; usable bare (``@task``) or with options (``@task(...)``).

    ``name`` defaults to ``module.function``. ``takes_context=True`` passes a ``JobContext``
    (task id, attempt, queue) as the first argument, like Django's Tasks framework.
    ``resource_key`` (a str, or a function called with each call's arguments at enqueue that
    returns one or None) makes jobs of the same key run one at a time across every worker
    (see ``docs/workflows.md``).
    """

    def register(fn: Callable[..., Any]) -> Task:
        conf = queue_settings()
        try:
            if max_attempts is not None:
                check_max_attempts(max_attempts)
            if queue:
                check_queue_name(queue)
            if resource_key is not None and not (
                callable(resource_key) or isinstance(resource_key, str)
            ):
                raise ValueError(
                    f"resource_key must be a str or a function of the task's arguments, "
                    f"not {type(resource_key).__name__}"
                )
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
            resource_key=resource_key,
        )
        return register_task(t)

    if func is not None:
        return register(func)
    return register
