"""Rows for admin tests, written straight into the tables (no worker needed).

Every timestamp is relative to the database clock, like the queue's own: ``ago(s)`` and
``later(s)`` are SQL expressions, so a slow test machine cannot make a fresh row look stale.
"""

from __future__ import annotations

import uuid
from typing import Any

from django.db import connection
from django.db.models import Func
from django.db.models.functions import Now

from pg_queue.models import DeadLetter, Job, JobGroup, ResourceLock, TaskResult, Worker


class _Shift(Func):
    """``now() + make_interval(secs => N)``."""

    template = "(now() + make_interval(secs => %(seconds)s))"

    def __init__(self, seconds: float) -> None:
        super().__init__(seconds=float(seconds))


def ago(seconds: float) -> Any:
    return _Shift(-seconds)


def later(seconds: float) -> Any:
    return _Shift(seconds)


def job(
    *,
    queue: str = "default",
    task: str = "workers.tasks.echo",
    state: str = "ready",
    due_ago: float = 0.0,
    delay: float = 0.0,
    lease_left: float = 30.0,
    worker_id: str = "",
    attempts: int | None = None,
    payload: dict[str, Any] | None = None,
    **fields: Any,
) -> Job:
    """One message row: ready (due ``due_ago`` seconds ago, or ``delay`` seconds ahead) or
    claimed (lease ``lease_left`` seconds from now; negative = expired)."""
    row = Job.objects.create(
        task_id=fields.pop("task_id", None) or uuid.uuid4(),
        queue_name=queue,
        task_name=task,
        payload=payload if payload is not None else {"args": [1], "kwargs": {}},
        state=state,
        attempts=attempts if attempts is not None else (1 if state == "claimed" else 0),
        worker_id=worker_id if state == "claimed" else "",
        lease_token=uuid.uuid4() if state == "claimed" else None,
        **fields,
    )
    Job.objects.filter(pk=row.pk).update(
        available_at=later(delay) if delay else ago(due_ago),
        enqueued_at=ago(due_ago + 1),
        vt=later(lease_left) if state == "claimed" else None,
    )
    row.refresh_from_db()
    return row


def jobs(n: int, **kwargs: Any) -> list[Job]:
    """``n`` ready rows in one statement (for list-page query counts and bulk actions)."""
    queue = kwargs.pop("queue", "default")
    task = kwargs.pop("task", "workers.tasks.echo")
    rows = Job.objects.bulk_create(
        Job(
            task_id=uuid.uuid4(),
            queue_name=queue,
            task_name=task,
            payload={"args": [i], "kwargs": {}},
            **kwargs,
        )
        for i in range(n)
    )
    return rows


def result(
    *, queue: str = "default", status: str = "succeeded", finished_ago: float = 10.0, **f: Any
) -> TaskResult:
    row = TaskResult.objects.create(
        task_id=f.pop("task_id", None) or uuid.uuid4(),
        status=status,
        task_name=f.pop("task_name", "workers.tasks.echo"),
        queue_name=queue,
        expires_at=later(86400),
        **f,
    )
    TaskResult.objects.filter(pk=row.pk).update(
        finished_at=ago(finished_ago), started_at=ago(finished_ago + 0.25)
    )
    return row


def dead_letter(*, queue: str = "default", **f: Any) -> DeadLetter:
    return DeadLetter.objects.create(
        task_id=f.pop("task_id", None) or uuid.uuid4(),
        queue_name=queue,
        task_name=f.pop("task_name", "workers.tasks.always_fails"),
        payload=f.pop("payload", {"args": ["boom"], "kwargs": {}}),
        reason=f.pop("reason", "exhausted"),
        last_error=f.pop("last_error", "RuntimeError: boom"),
        traceback=f.pop(
            "traceback",
            'Traceback (most recent call last):\n  File "workers/tasks.py", line 45, in '
            "always_fails\n    raise RuntimeError(reason)\nRuntimeError: boom",
        ),
        attempts=f.pop("attempts", 2),
        max_attempts=f.pop("max_attempts", 2),
        **f,
    )


def worker(worker_id: str, *, queues: list[str], heartbeat_ago: float = 1.0, **f: Any) -> Worker:
    row = Worker.objects.create(
        worker_id=worker_id,
        hostname=f.pop("hostname", "host-a"),
        pid=f.pop("pid", 4242),
        queues=queues,
        concurrency=f.pop("concurrency", 8),
        **f,
    )
    Worker.objects.filter(pk=worker_id).update(
        heartbeat_at=ago(heartbeat_ago), started_at=ago(heartbeat_ago + 3600)
    )
    return row


def lock(
    key: str,
    *,
    holder_kind: str = "worker",
    holder_id: str = "web-1-4242-a1b2",
    held_for: float = 60.0,
    expires_in: float | None = None,
    task_id: uuid.UUID | None = None,
    **f: Any,
) -> ResourceLock:
    """A lock row: a job's (``worker``, no expiry; a task id of its own unless given) or, with
    ``expires_in`` (negative: expired), one taken by code outside the worker."""
    ResourceLock.objects.create(
        resource_key=key,
        holder_kind=holder_kind,
        holder_id=holder_id,
        task_id=task_id or (uuid.uuid4() if holder_kind == "worker" else None),
        acquired_at=ago(held_for),
        expires_at=None if expires_in is None else later(expires_in),
        **f,
    )
    return ResourceLock.objects.get(pk=key)


def job_group(
    *, kind: str = "group", total: int = 3, finished: int = 0, failed: int = 0, **f: Any
) -> JobGroup:
    """A group (or chain) row alone, without children: for lists and their query counts."""
    status = f.pop("status", "running" if finished < total else "succeeded")
    return JobGroup.objects.create(
        group_id=f.pop("group_id", None) or uuid.uuid4(),
        kind=kind,
        total=total,
        finished=finished,
        failed=failed,
        status=status,
        **f,
    )


def keep_alive(*worker_ids: str, lease: float = 30.0) -> None:
    """What live workers do all the time: renew their heartbeat and their running jobs' leases.

    Rows written once only age: ``LEASE_SECONDS`` (30 s) after ``busy_queues()``, its live
    workers look stale and their running jobs' leases expired, so a healthy queue turns red. A
    test that looks much later (a browser starting under load) calls this right before.
    """
    Worker.objects.filter(worker_id__in=worker_ids).update(heartbeat_at=Now())
    Job.objects.filter(state="claimed", worker_id__in=worker_ids).update(vt=later(lease))


#: The workers of ``busy_queues()`` that are alive (heartbeating), for ``keep_alive()``.
LIVE_WORKERS = ("web-1-4242-a1b2", "web-2-5151-c3d4")
#: How far ahead ``busy_queues()`` puts its delayed retries: beyond any test's run, so they
#: stay delayed however late a test looks (30 s was once too short for a browser test).
RETRY_DELAY_SECONDS = 1800.0


def busy_queues() -> None:
    """A realistic, partly stuck picture: what the docs and the screenshot show.

    - ``default``: healthy, two live workers draining it, a few delayed retries.
    - ``email``: stuck: its oldest due job waits for 12 minutes, one job runs past its lease
      (its worker stopped heartbeating), dead letters piling up.
    - ``reports``: nothing due, a delayed nightly job, results from earlier.

    The picture is of now: delayed jobs stay delayed for half an hour, but ``default`` looks
    healthy for ``LEASE_SECONDS`` only, unless ``keep_alive(*LIVE_WORKERS)`` runs before a look.
    """
    web_1, web_2 = LIVE_WORKERS
    worker(web_1, queues=["default", "email"], hostname="web-1", pid=4242)
    worker(web_2, queues=["default"], hostname="web-2", pid=5151, concurrency=16)
    worker("mail-1-777-dead", queues=["email"], hostname="mail-1", pid=777, heartbeat_ago=340)
    for i in range(12):
        job(queue="default", due_ago=0.5 + i * 0.1)
    for _ in range(5):
        job(queue="default", state="claimed", worker_id=web_1, due_ago=2)
    for _ in range(3):
        job(queue="default", state="claimed", worker_id=web_2, due_ago=1)
    for i in range(4):
        job(
            queue="default",
            delay=RETRY_DELAY_SECONDS + i * 60,
            attempts=1,
            last_error="TimeoutError: upstream",
        )
    for i in range(40):
        job(queue="email", task="workers.tasks.send_receipt", due_ago=720 - i * 5)
    job(
        queue="email",
        task="workers.tasks.send_receipt",
        state="claimed",
        worker_id="mail-1-777-dead",
        due_ago=400,
        lease_left=-300,
    )
    job(queue="reports", task="workers.tasks.nightly_report", delay=6 * 3600)
    for i in range(30):
        result(queue="default", finished_ago=20 + i * 5)
    for i in range(200):
        result(queue="default", finished_ago=400 + i * 15)
    for i in range(3):
        result(queue="default", status="failed", finished_ago=90 + i, error="ValueError: bad")
    for i in range(25):
        result(queue="email", finished_ago=900 + i * 60, task_name="workers.tasks.send_receipt")
    for i in range(6):
        result(
            queue="email",
            status="failed",
            finished_ago=100 + i * 30,
            task_name="workers.tasks.send_receipt",
            error="SMTPServerDisconnected: Connection unexpectedly closed",
        )
    for _ in range(6):
        dead_letter(
            queue="email",
            task_name="workers.tasks.send_receipt",
            last_error="SMTPServerDisconnected: Connection unexpectedly closed",
        )
    for i in range(4):
        result(queue="reports", finished_ago=2000 + i * 300, task_name="workers.tasks.nightly")
    with connection.cursor() as cursor:  # keep the planner honest on freshly filled tables
        cursor.execute("ANALYZE pg_queue_message")


__all__ = [
    "LIVE_WORKERS",
    "ago",
    "busy_queues",
    "dead_letter",
    "job",
    "job_group",
    "jobs",
    "keep_alive",
    "later",
    "lock",
    "result",
]
