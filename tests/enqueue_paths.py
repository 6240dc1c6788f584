"""Every way a job enters the queue, as one callable each, so a test can ask them all the same.

Each takes ``(args, kwargs, **options)`` (options as for ``enqueue``), writes through Django's
connection like the real call would, and returns the task ids it wrote.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest
from django.db import connection

from pg_queue.core.options import EnqueueOptions, JobSpec
from pg_queue.db import sql
from pg_queue.producer import bulk_params, enqueue, enqueue_many, job
from tests.payload_echo import echo

Enqueue = Callable[..., list[uuid.UUID]]

#: Options ``Task.using`` takes (the others only exist on enqueue/job).
USING_OPTIONS = {
    "queue",
    "priority",
    "delay",
    "eta",
    "dedup_key",
    "max_attempts",
    "tenant_key",
    "resource_key",
}
SPEC_FIELDS = {"headers", "on_success", "on_error", "reply_key", "task_id"}


def via_enqueue(args: Any, kwargs: Any, **options: Any) -> list[uuid.UUID]:
    return [enqueue(echo.name, args, kwargs, **options).task_id]


def via_task_enqueue(args: Any, kwargs: Any, **options: Any) -> list[uuid.UUID]:
    return [echo.using(**options).enqueue(*args, **kwargs).task_id]


def via_enqueue_many_copy(args: Any, kwargs: Any, **options: Any) -> list[uuid.UUID]:
    """An immediate job: the COPY path (unless a task id or dedup key is given)."""
    return [h.task_id for h in enqueue_many([job(echo.name, args, kwargs, **options)])]


def via_enqueue_many_insert(args: Any, kwargs: Any, **options: Any) -> list[uuid.UUID]:
    """A delayed job: the multi-row INSERT path."""
    if "eta" not in options:
        options.setdefault("delay", 3600)
    return [h.task_id for h in enqueue_many([job(echo.name, args, kwargs, **options)])]


def via_task_job(args: Any, kwargs: Any, **options: Any) -> list[uuid.UUID]:
    return [h.task_id for h in enqueue_many([echo.using(**options).job(*args, **kwargs)])]


def via_bulk_params(args: Any, kwargs: Any, **options: Any) -> list[uuid.UUID]:
    """The worker's continuation path: ``bulk_params``, then the statement the worker runs."""
    fields = {k: options.pop(k) for k in list(options) if k in SPEC_FIELDS}
    spec = JobSpec(echo.name, args, kwargs, EnqueueOptions(**options), **fields)
    params = bulk_params([spec])
    with connection.cursor() as cursor:
        cursor.execute(sql.insert_many(params), params)
    return list(params["task_ids"])


ALL = [
    pytest.param(via_enqueue, id="enqueue"),
    pytest.param(via_task_enqueue, id="task.enqueue"),
    pytest.param(via_enqueue_many_copy, id="enqueue_many-copy"),
    pytest.param(via_enqueue_many_insert, id="enqueue_many-insert"),
    pytest.param(via_task_job, id="task.job"),
    pytest.param(via_bulk_params, id="bulk_params"),
]
#: The entry points that take any enqueue option (Task.using has no headers, task_id...).
BY_NAME = [
    pytest.param(via_enqueue, id="enqueue"),
    pytest.param(via_enqueue_many_copy, id="enqueue_many-copy"),
    pytest.param(via_enqueue_many_insert, id="enqueue_many-insert"),
    pytest.param(via_bulk_params, id="bulk_params"),
]


def supports(entry: Enqueue, options: dict[str, Any]) -> bool:
    """Whether ``entry`` can be given ``options`` at all."""
    if entry in (via_task_enqueue, via_task_job):
        return set(options) <= USING_OPTIONS
    return True
