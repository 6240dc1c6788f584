"""Django's Tasks framework (``django.tasks``, Django 6.0+) on pg_queue's table.

``TASKS = {"default": {"BACKEND": "pg_queue.tasks_backend.PgQueueBackend", ...}}`` makes every
``@django.tasks.task`` function enqueue a pg_queue job, in the caller's transaction, that
``run_pg_worker`` runs. What is guaranteed, and how it maps onto pg_queue:

- **Names.** The job's task name is ``django.tasks:`` + the task's ``module_path``. The marker
  keeps the worker from importing anything a job names unless this backend wrote it: for such a
  name (and only when no native or Celery task has it) the worker imports the Django task by
  path once, checks that it is a Django ``Task``, and registers an adapter under the name, so
  later jobs of it cost one dictionary lookup like any native task. Jobs of native and Celery
  tasks take exactly the path they took before.
- **Ids.** ``TaskResult.id`` is ``str(task_id)``, the job's UUID (time-ordered, version 7).
- **Priority.** Django's -100..100 is stored unchanged as the job's priority (pg_queue's own
  range is a smallint, higher first, default 0 on both sides), so Django tasks and native tasks
  in one queue share one scale.
- **Queues.** A task's ``queue_name`` is the pg_queue queue it lands in; ``QUEUES`` is Django's
  allow-list (empty: any queue). ``run_after`` is the job's ``eta``.
- **Attempts.** Django's API has no retries: by default a task that raises is ``FAILED`` at once
  (``OPTIONS["MAX_ATTEMPTS"]`` > 1 retries it with pg_queue's backoff, ``READY`` in between).
- **Arguments.** The job's arguments are ``[meta, *args]`` and ``kwargs``; ``meta`` carries what
  the worker needs to rebuild the ``Task`` (backend alias, Django priority, ``run_after``,
  ``enqueued_at``).
- **Signals.** ``task_enqueued`` is sent by ``enqueue`` (inside the caller's transaction);
  ``task_started`` and ``task_finished`` in the worker, from the task thread, around the call
  (``task_finished`` only for the attempt that ends the job). A receiver that raises is logged,
  never the job's outcome.

On Django 5.2 (no ``django.tasks``) ``PgQueueBackend`` is absent and ``manage.py check`` says so
(``pg_queue.W004``).
"""

from __future__ import annotations

import builtins
import datetime as dt
import importlib.util
import logging
import re
import traceback
import uuid
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from django.utils import timezone
from django.utils.dateparse import parse_datetime
from django.utils.module_loading import import_string

from pg_queue.core.conf import queue_settings
from pg_queue.core.context import JobContext
from pg_queue.core.exceptions import PayloadError, PgQueueError, TaskNotFound
from pg_queue.core.options import EnqueueOptions, JobSpec, check_queue_name
from pg_queue.core.payload import coerce_json, dumps
from pg_queue.jobspec import QUEUE_NAME_MAX, TASK_NAME_MAX, new_task_id
from pg_queue.producer import enqueue_spec
from pg_queue.registry import DJANGO_TASK_PREFIX, register_task
from pg_queue.tasks import Task as NativeTask

logger = logging.getLogger("pg_queue.tasks_backend")

#: Whether the installed Django has the Tasks framework (6.0+); without it the backend is absent.
HAS_DJANGO_TASKS = importlib.util.find_spec("django.tasks") is not None

#: How a job written by this backend names its task: the marker, then the task's module path.
TASK_NAME_PREFIX = DJANGO_TASK_PREFIX
#: ``OPTIONS`` keys the backend reads, and the default of each.
OPTION_MAX_ATTEMPTS = "MAX_ATTEMPTS"
DEFAULT_MAX_ATTEMPTS = 1
OPTION_KEYS = frozenset({OPTION_MAX_ATTEMPTS})

#: ``Type: message`` or ``package.module.Type: message``: the last line of a traceback.
_EXCEPTION_LINE = re.compile(r"^([A-Za-z_][\w.]*)(?::|$)")


class JobAborted(PgQueueError):
    """What a Django ``TaskError`` names when the job ended without an exception of its own:
    cancelled by an operator, its worker lost on the last attempt, or dropped before it ran
    (unknown task, undecodable payload). The traceback field holds pg_queue's reason."""


def job_task_name(module_path: str) -> str:
    """The pg_queue task name of the Django task at ``module_path``."""
    return f"{TASK_NAME_PREFIX}{module_path}"


def django_priority(priority: int) -> int:
    """A job's priority as Django's: the same number, clamped to -100..100 (an operator may
    have set any smallint from the admin)."""
    return max(-100, min(100, priority))


def exception_class_path(traceback_text: str, error: str) -> str:
    """The dotted path of the exception a failed job raised, read back from what pg_queue
    stored: the traceback's last line (``module.Type: message``; builtins come bare), else the
    error text (``Type: message``). ``JobAborted`` when neither names an exception."""
    for text in (traceback_text, error):
        lines = [line for line in text.strip().splitlines() if line.strip()]
        match = _EXCEPTION_LINE.match(lines[-1].strip()) if lines else None
        if match is None:
            continue
        name = match.group(1)
        if "." in name:
            return name
        found = getattr(builtins, name, None)
        if isinstance(found, type) and issubclass(found, BaseException):
            return f"builtins.{name}"
    return f"{JobAborted.__module__}.{JobAborted.__qualname__}"


def _aware(value: dt.datetime) -> dt.datetime:
    """``run_after`` as the aware datetime pg_queue's ``eta`` needs (``USE_TZ=False``: local)."""
    return value if timezone.is_aware(value) else timezone.make_aware(value)


def _parse_time(value: object) -> dt.datetime | None:
    return parse_datetime(value) if isinstance(value, str) else None


def _import_django_task(module_path: str) -> Any:
    """The Django ``Task`` at ``module_path``; ``TaskNotFound`` saying why not."""
    try:
        found = import_string(module_path)
    except Exception as exc:  # ImportError, or the module's own import-time error
        raise TaskNotFound(
            f"Django task {module_path!r} cannot be imported: {type(exc).__name__}: {exc}"
        ) from exc
    from django.tasks import Task as DjangoTask

    if not isinstance(found, DjangoTask):
        raise TaskNotFound(f"{module_path!r} is not a Django task (@django.tasks.task)")
    return found


def resolve_task(name: str) -> NativeTask | None:
    """The worker's fallback for a task name no native or Celery task has (see
    ``pg_queue.registry.resolve``): for a name this backend wrote, an adapter that runs the
    Django task, registered under the name so the next job finds it directly. None for any
    other name; ``TaskNotFound`` for a marked name that is not an importable Django task."""
    if not name.startswith(TASK_NAME_PREFIX):
        return None
    django_task = _import_django_task(name[len(TASK_NAME_PREFIX) :])
    return register_task(
        NativeTask(
            func=_adapter(django_task),
            name=name,
            queue=django_task.queue_name,
            priority=django_task.priority,
            max_attempts=DEFAULT_MAX_ATTEMPTS,
            takes_context=True,
        )
    )


def _send(signal: Any, sender: type, task_result: Any) -> None:
    """Send a Django task signal; a receiver that raises is logged, never the job's outcome."""
    for receiver, response in signal.send_robust(sender=sender, task_result=task_result):
        if isinstance(response, BaseException):
            logger.error(
                "a Django task signal receiver failed receiver=%r task_id=%s queue=%s: %s: %s",
                receiver,
                task_result.id,
                task_result.task.queue_name,
                type(response).__name__,
                response,
            )


def _checked_return(raw: Any) -> Any:
    """The return value as Django's backends keep it (``normalize_json``), refused here when
    pg_queue could not store it, so ``task_finished`` never says SUCCESSFUL for a job that
    ends failed."""
    from django.utils.json import normalize_json

    value = normalize_json(raw)
    text = dumps(coerce_json(value, "result"), "result")
    limit = queue_settings().result_max_bytes
    if len(text) > limit // 4 and len(text.encode()) > limit:
        raise PayloadError(
            f"result: {len(text.encode())} bytes of JSON exceed RESULT_MAX_BYTES ({limit})"
        )
    return value


def _adapter(django_task: Any) -> Callable[..., Any]:
    """What the worker calls for a job of ``django_task``: rebuild the Task and its
    TaskResult, send the signals, call the function (with a ``TaskContext`` when it takes
    one). Exceptions propagate to the worker, which records them as for any task."""
    from django.tasks import TaskContext, TaskResult, TaskResultStatus, task_backends
    from django.tasks.base import TaskError
    from django.tasks.exceptions import InvalidTask
    from django.tasks.signals import task_finished, task_started

    def run_django_task(context: JobContext, meta: Any, /, *args: Any, **kwargs: Any) -> Any:
        meta = meta if isinstance(meta, dict) else {}
        alias = meta.get("backend") or django_task.backend
        backend = task_backends[alias]
        try:
            task = replace(
                django_task,
                priority=meta.get("priority", django_task.priority),
                queue_name=context.queue_name,
                backend=alias,
                run_after=_parse_time(meta.get("run_after")),
            )
        except InvalidTask:  # the settings changed since the enqueue: run it as it is
            task = django_task
        started = timezone.now()
        result: TaskResult = TaskResult(
            task=task,
            id=str(context.task_id),
            status=TaskResultStatus.RUNNING,
            enqueued_at=_parse_time(meta.get("enqueued_at")),
            started_at=started,
            finished_at=None,
            last_attempted_at=started,
            args=list(args),
            kwargs=kwargs,
            backend=alias,
            errors=[],
            # One entry per attempt (Django counts attempts by them); pg_queue keeps no record
            # of earlier attempts' workers.
            worker_ids=[""] * (context.attempt - 1) + [context.worker_id],
        )
        sender = type(backend)
        _send(task_started, sender, result)
        try:
            if task.takes_context:
                raw = task.call(TaskContext(task_result=result), *args, **kwargs)
            else:
                raw = task.call(*args, **kwargs)
            value = _checked_return(raw)
        except BaseException as exc:
            if context.attempt >= context.max_attempts:  # no retry follows: the job failed
                kind = type(exc)
                result.errors.append(
                    TaskError(
                        exception_class_path=f"{kind.__module__}.{kind.__qualname__}",
                        traceback="".join(traceback.format_exception(exc)),
                    )
                )
                object.__setattr__(result, "status", TaskResultStatus.FAILED)
                object.__setattr__(result, "finished_at", timezone.now())
                _send(task_finished, sender, result)
            raise
        object.__setattr__(result, "_return_value", value)
        object.__setattr__(result, "status", TaskResultStatus.SUCCESSFUL)
        object.__setattr__(result, "finished_at", timezone.now())
        _send(task_finished, sender, result)
        return value

    return run_django_task


if HAS_DJANGO_TASKS or TYPE_CHECKING:
    from django.tasks import Task, TaskResult, TaskResultStatus
    from django.tasks.backends.base import BaseTaskBackend
    from django.tasks.base import TaskError
    from django.tasks.exceptions import InvalidTask, TaskResultDoesNotExist
    from django.tasks.signals import task_enqueued

    class PgQueueBackend(BaseTaskBackend):
        """Django's Tasks framework backend on pg_queue: enqueue writes a job in the caller's
        transaction, ``run_pg_worker`` runs it, ``get_result`` reads its row or its outcome.

        ``OPTIONS``: ``MAX_ATTEMPTS`` (default 1: a task that raises is FAILED; more retries
        it with pg_queue's backoff). ``manage.py check`` reports bad ``OPTIONS`` and
        ``QUEUES`` (``pg_queue.E019``, ``pg_queue.E020``).
        """

        supports_defer = True
        supports_async_task = True
        supports_get_result = True
        supports_priority = True

        def __init__(self, alias: str, params: dict[str, Any]) -> None:
            super().__init__(alias, params)
            options = self.options if isinstance(self.options, dict) else {}  # E019 says so
            self.max_attempts = options.get(OPTION_MAX_ATTEMPTS, DEFAULT_MAX_ATTEMPTS)

        def validate_task(self, task: Task) -> None:
            """Django's rules, plus what a pg_queue job needs: a queue name a worker can be
            pointed at, and a module path that fits the task name column."""
            super().validate_task(task)
            try:
                check_queue_name(task.queue_name, "queue_name")
            except ValueError as exc:
                raise InvalidTask(str(exc)) from None
            if len(task.queue_name) > QUEUE_NAME_MAX:
                raise InvalidTask(f"queue_name is longer than {QUEUE_NAME_MAX} characters")
            if len(job_task_name(task.module_path)) > TASK_NAME_MAX:
                raise InvalidTask(
                    f"the task's module path is longer than "
                    f"{TASK_NAME_MAX - len(TASK_NAME_PREFIX)} characters"
                )

        def enqueue(self, task: Task, args: Any, kwargs: Any) -> TaskResult:
            """Write the job in the caller's transaction (rolled back with it); returns a READY
            result. Arguments Django or pg_queue cannot keep exactly are refused before any SQL
            runs (``TypeError``/``ValueError``), so the caller's transaction stays usable."""
            self.validate_task(task)
            task_id = new_task_id()
            result: TaskResult = TaskResult(
                task=task,
                id=str(task_id),
                status=TaskResultStatus.READY,
                enqueued_at=timezone.now(),
                started_at=None,
                finished_at=None,
                last_attempted_at=None,
                args=args,
                kwargs=kwargs,
                backend=self.alias,
                errors=[],
                worker_ids=[],
            )
            meta = {
                "backend": self.alias,
                "priority": task.priority,
                "run_after": task.run_after,
                "enqueued_at": result.enqueued_at,
            }
            options = EnqueueOptions(
                queue=task.queue_name,
                priority=task.priority,
                eta=None if task.run_after is None else _aware(task.run_after),
                max_attempts=self.max_attempts,
            )
            spec = JobSpec(
                job_task_name(task.module_path),
                [meta, *result.args],
                result.kwargs,
                options,
                task_id=task_id,
            )
            enqueue_spec(spec, "default", check_task_id=False)  # a fresh id: nothing to check
            task_enqueued.send(type(self), task_result=result)
            return result

        def get_result(self, result_id: str) -> TaskResult:
            """The job's state now: READY or RUNNING while its row lives, SUCCESSFUL or FAILED
            (cancelled jobs too) from its outcome. ``TaskResultDoesNotExist`` for an id that is
            not a job of a Django task, never enqueued, rolled back, or whose result expired.

            A finished result's ``args``/``kwargs`` are empty (pg_queue deletes a finished job's
            row) and its ``worker_ids`` hold one empty string per attempt."""
            from pg_queue.models import Job
            from pg_queue.models import TaskResult as Outcome

            try:
                task_id = uuid.UUID(str(result_id))
            except ValueError:
                raise TaskResultDoesNotExist(result_id) from None
            done = (
                Outcome.objects.filter(task_id=task_id, task_name__startswith=TASK_NAME_PREFIX)
                .values()
                .first()
            )
            if done is not None:
                return self._finished(result_id, done)
            live = (
                Job.objects.filter(task_id=task_id, task_name__startswith=TASK_NAME_PREFIX)
                .values()
                .first()
            )
            if live is not None:
                return self._live(result_id, live)
            raise TaskResultDoesNotExist(result_id)

        def _task(self, task_name: str, **changes: Any) -> Task:
            module_path = task_name[len(TASK_NAME_PREFIX) :]
            try:
                task = _import_django_task(module_path)
            except TaskNotFound as exc:
                raise TaskResultDoesNotExist(str(exc)) from None
            try:
                return replace(task, backend=self.alias, **changes)
            except InvalidTask:  # the settings changed since the enqueue: the task as it is
                return task

        def _finished(self, result_id: str, row: Mapping[str, Any]) -> TaskResult:
            succeeded = row["status"] == "succeeded"
            errors = []
            if not succeeded:
                errors.append(
                    TaskError(
                        exception_class_path=exception_class_path(row["traceback"], row["error"]),
                        traceback=row["traceback"] or row["error"],
                    )
                )
            result: TaskResult = TaskResult(
                task=self._task(row["task_name"], queue_name=row["queue_name"]),
                id=result_id,
                status=TaskResultStatus.SUCCESSFUL if succeeded else TaskResultStatus.FAILED,
                enqueued_at=row["enqueued_at"],
                started_at=row["started_at"],
                finished_at=row["finished_at"],
                last_attempted_at=row["started_at"],
                args=[],
                kwargs={},
                backend=self.alias,
                errors=errors,
                worker_ids=[""] * row["attempts"],
            )
            if succeeded:
                object.__setattr__(result, "_return_value", row["result"])
            return result

        def _live(self, result_id: str, row: Mapping[str, Any]) -> TaskResult:
            payload = row["payload"] if isinstance(row["payload"], dict) else {}
            args = payload.get("args") or [{}]
            meta = args[0] if isinstance(args[0], dict) else {}
            running = row["state"] == "claimed"
            attempts = row["attempts"]
            errors = []
            if row["last_error"]:  # an earlier attempt failed (MAX_ATTEMPTS > 1)
                errors.append(
                    TaskError(
                        exception_class_path=exception_class_path("", row["last_error"]),
                        traceback=row["last_error"],
                    )
                )
            workers = [""] * attempts
            if attempts and row["worker_id"]:
                workers[-1] = row["worker_id"]
            return TaskResult(
                task=self._task(
                    row["task_name"],
                    queue_name=row["queue_name"],
                    priority=django_priority(row["priority"]),
                    run_after=_parse_time(meta.get("run_after")),
                ),
                id=result_id,
                status=TaskResultStatus.RUNNING if running else TaskResultStatus.READY,
                enqueued_at=row["enqueued_at"],
                started_at=None,
                finished_at=None,
                last_attempted_at=None,
                args=args[1:],
                kwargs=payload.get("kwargs") or {},
                backend=self.alias,
                errors=errors,
                worker_ids=workers,
            )

        def check(self, **kwargs: Any) -> list[Any]:
            """``OPTIONS`` and ``QUEUES`` problems, with pg_queue's check ids."""
            from pg_queue.checks import tasks_backend_messages

            return tasks_backend_messages(self.alias, self.options, self.queues)
