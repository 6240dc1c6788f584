"""The queue's tables. Django owns their schema; the hot path speaks raw SQL to them (pg_queue/db).

Times are written by the database clock (``now()``), never a worker's clock. Text columns use
``''`` for "none". A job's status is derived so the hot path pays no extra write: a job row
means queued or running, a result row means finished, neither means unknown or expired.
"""

from __future__ import annotations

import uuid

from django.db import models
from django.db.models.functions import Now

from pg_queue.core.status import JobStatus


class JobState(models.TextChoices):
    READY = "ready", "ready"
    CLAIMED = "claimed", "claimed"


class ResultStatus(models.TextChoices):
    """The finished ``JobStatus`` values: what an outcome row can say."""

    SUCCEEDED = JobStatus.SUCCEEDED.value, "succeeded"
    FAILED = JobStatus.FAILED.value, "failed"
    CANCELLED = JobStatus.CANCELLED.value, "cancelled"


class DeadLetterReason(models.TextChoices):
    EXHAUSTED = "exhausted", "attempts exhausted"
    UNKNOWN_TASK = "unknown_task", "unknown task"
    UNDECODABLE = "undecodable", "undecodable payload"
    LEASE_EXPIRED = "lease_expired", "lease expired on the last attempt"
    UNSTORABLE = "unstorable", "outcome not storable"


class WorkerState(models.TextChoices):
    RUNNING = "running", "running"
    STOPPING = "stopping", "stopping"


class Job(models.Model):
    """One queued or running job. Finished jobs are deleted, so this table stays small."""

    msg_id = models.BigAutoField(primary_key=True)
    task_id = models.UUIDField(default=uuid.uuid4, unique=True)
    queue_name = models.CharField(max_length=200)
    task_name = models.CharField(max_length=300)
    payload = models.JSONField(default=dict)
    state = models.CharField(
        max_length=16,
        choices=JobState.choices,
        default=JobState.READY,
        db_default=JobState.READY,
    )
    priority = models.SmallIntegerField(default=0, db_default=0)
    available_at = models.DateTimeField(db_default=Now())
    enqueued_at = models.DateTimeField(db_default=Now())
    vt = models.DateTimeField(null=True, blank=True, help_text="lease expiry while claimed")
    lease_token = models.UUIDField(null=True, blank=True)
    worker_id = models.CharField(max_length=200, blank=True, default="", db_default="")
    attempts = models.IntegerField(default=0, db_default=0, help_text="executions started")
    max_attempts = models.IntegerField(default=3, db_default=3)
    tenant_key = models.CharField(max_length=200, blank=True, default="", db_default="")
    # NULL, not "": NULL keys never collide in the partial unique index / lock table.
    resource_key = models.CharField(max_length=300, null=True, blank=True)  # noqa: DJ001
    dedup_key = models.CharField(max_length=300, null=True, blank=True)  # noqa: DJ001
    last_error = models.TextField(blank=True, default="", db_default="")
    cancel_requested = models.BooleanField(
        default=False,
        db_default=False,
        help_text="an operator asked to cancel this running job; the worker stops it at the "
        "next safe point (before it starts, when the task checks, or when it returns)",
    )
    # A child of a group or a step of a chain (JobGroup), and its place in it.
    group_id = models.UUIDField(null=True, blank=True)
    group_index = models.IntegerField(null=True, blank=True)
    # A ready job waiting behind a live job of its resource key: out of the claim index until
    # that job ends (its finish unparks the next one). See pg_queue/db/sql.py (_KEY_DONE).
    parked = models.BooleanField(default=False, db_default=False)
    # A ready job due more than SCHEDULE_AHEAD seconds from now: out of the claim index until the
    # maintenance pass promotes it, ahead of its time (pg_queue/db/sql_worker.py, JOB_PROMOTE),
    # so that a million jobs delayed by a day cost a claim nothing.
    scheduled = models.BooleanField(default=False, db_default=False)

    class Meta:
        db_table = "pg_queue_message"
        indexes = [
            # Serves the claim: ready rows only, in claim order within each tenant (jobs
            # without a tenant are the tenant ""), so the plain claim reads tenant "" in order
            # and the fair claim finds each tenant's head (pg_queue/db/sql.py, JOB_CLAIM_FAIR).
            models.Index(
                fields=["queue_name", "tenant_key", "-priority", "available_at", "msg_id"],
                name="pg_queue_msg_claim_idx",
                condition=models.Q(state="ready", parked=False, scheduled=False),
            ),
            # Scheduled jobs by due time, for their promotion (scheduled rows only).
            models.Index(
                fields=["available_at"],
                name="pg_queue_msg_scheduled_idx",
                condition=models.Q(scheduled=True),
            ),
            # Serves the re-arm sweep and per-worker views: claimed rows only (as many as jobs
            # in flight), whose vt the sweep reads from the heap. vt itself is in no index, so a
            # lease renewal (which changes vt alone) is a HOT update: no index entry is written
            # and the new row version stays on its page (tests/integration/test_claim.py checks it).
            models.Index(
                fields=["worker_id"],
                name="pg_queue_msg_claimed_idx",
                condition=models.Q(state="claimed"),
            ),
            # Resource keys, keyed jobs only (keyless ones write no entry): is a key's job live
            # (parking at enqueue), and a key's parked jobs in claim order (unparking).
            models.Index(
                fields=["resource_key"],
                name="pg_queue_msg_key_live_idx",
                condition=models.Q(resource_key__isnull=False, parked=False),
            ),
            models.Index(
                fields=["resource_key", "-priority", "available_at", "msg_id"],
                name="pg_queue_msg_key_parked_idx",
                condition=models.Q(parked=True),
            ),
            # Does a queue hold a claimable or running keyed job (the worker's once-a-second
            # probe, QUEUE_KINDS): one probe per queue, however many keys other queues use.
            models.Index(
                fields=["queue_name"],
                name="pg_queue_msg_keyed_queue_idx",
                condition=models.Q(resource_key__isnull=False, parked=False, scheduled=False),
            ),
            # A group's queued children (admin, cancel): group members only, so jobs outside
            # groups write no entry.
            models.Index(
                fields=["group_id", "group_index"],
                name="pg_queue_msg_group_idx",
                condition=models.Q(group_id__isnull=False),
            ),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["dedup_key"],
                name="pg_queue_msg_dedup_uniq",
                condition=models.Q(dedup_key__isnull=False),
            ),
            models.CheckConstraint(
                condition=models.Q(state__in=["ready", "claimed"]), name="pg_queue_msg_state_ck"
            ),
            models.CheckConstraint(
                condition=models.Q(parked=False) | models.Q(state="ready"),
                name="pg_queue_msg_parked_ck",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.task_name}[{self.task_id}] {self.state}"


class TaskResult(models.Model):
    """A job's outcome; first write wins (``INSERT ... ON CONFLICT DO NOTHING``)."""

    task_id = models.UUIDField(primary_key=True)
    status = models.CharField(max_length=16, choices=ResultStatus.choices)
    result = models.JSONField(null=True, blank=True)
    error = models.TextField(blank=True, default="")
    traceback = models.TextField(blank=True, default="")
    task_name = models.CharField(max_length=300, blank=True, default="")
    queue_name = models.CharField(max_length=200, blank=True, default="")
    attempts = models.IntegerField(default=0)
    enqueued_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(db_default=Now())
    expires_at = models.DateTimeField()
    group_id = models.UUIDField(null=True, blank=True)
    group_index = models.IntegerField(null=True, blank=True)

    class Meta:
        db_table = "pg_task_result"
        indexes = [
            models.Index(fields=["expires_at"], name="pg_task_result_expires_idx"),
            # A group's results in job order, read once when the group completes.
            models.Index(
                fields=["group_id", "group_index"],
                name="pg_task_result_group_idx",
                condition=models.Q(group_id__isnull=False),
            ),
            # The admin overview's "finished in the last 5/60 minutes" and newest-first lists.
            models.Index(fields=["finished_at"], name="pg_task_result_finished_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.task_name}[{self.task_id}] {self.status}"


class DeadLetter(models.Model):
    """A job that will not run again by itself. Nothing is deleted silently."""

    id = models.BigAutoField(primary_key=True)
    task_id = models.UUIDField(db_index=True)
    queue_name = models.CharField(max_length=200)
    task_name = models.CharField(max_length=300)
    payload = models.JSONField(null=True, blank=True)
    reason = models.CharField(max_length=32, choices=DeadLetterReason.choices)
    last_error = models.TextField(blank=True, default="")
    traceback = models.TextField(blank=True, default="")
    attempts = models.IntegerField(default=0)
    max_attempts = models.IntegerField(default=0)
    priority = models.SmallIntegerField(default=0)
    tenant_key = models.CharField(max_length=200, blank=True, default="")
    enqueued_at = models.DateTimeField(null=True, blank=True)
    failed_at = models.DateTimeField(db_default=Now())
    group_id = models.UUIDField(null=True, blank=True)
    group_index = models.IntegerField(null=True, blank=True)
    resource_key = models.CharField(max_length=300, null=True, blank=True)  # noqa: DJ001

    class Meta:
        db_table = "pg_queue_dead_letter"
        indexes = [
            models.Index(fields=["queue_name", "failed_at"], name="pg_queue_dl_queue_idx"),
            models.Index(
                fields=["group_id", "group_index"],
                name="pg_queue_dl_group_idx",
                condition=models.Q(group_id__isnull=False),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.task_name}[{self.task_id}] {self.reason}"


class Worker(models.Model):
    """One live worker process. The id is unique per process start, never a reusable host/pid."""

    worker_id = models.CharField(max_length=200, primary_key=True)
    hostname = models.CharField(max_length=255)
    pid = models.IntegerField()
    queues = models.JSONField(default=list)
    concurrency = models.IntegerField()
    started_at = models.DateTimeField(db_default=Now())
    heartbeat_at = models.DateTimeField(db_default=Now())
    state = models.CharField(
        max_length=16, choices=WorkerState.choices, default=WorkerState.RUNNING
    )

    class Meta:
        db_table = "pg_worker"

    def __str__(self) -> str:
        return self.worker_id


class GroupKind(models.TextChoices):
    GROUP = "group", "group"
    CHAIN = "chain", "chain"


class GroupStatus(models.TextChoices):
    RUNNING = "running", "running"
    SUCCEEDED = "succeeded", "succeeded"
    FAILED = "failed", "failed"


class JobGroup(models.Model):
    """A fan-out/fan-in group or a chain: how far its jobs got, and what fires at the end.

    Children carry ``group_id``; their results stay in ``pg_task_result``. Progress and the end
    are one conditional UPDATE in the transaction of each child's finish, so a callback fires
    exactly once however many workers race.
    """

    group_id = models.UUIDField(primary_key=True)
    kind = models.CharField(max_length=8, choices=GroupKind.choices)
    total = models.IntegerField(help_text="children of a group, steps of a chain")
    finished = models.IntegerField(default=0, db_default=0)
    failed = models.IntegerField(default=0, db_default=0)
    status = models.CharField(
        max_length=16,
        choices=GroupStatus.choices,
        default=GroupStatus.RUNNING,
        db_default=GroupStatus.RUNNING,
    )
    on_success = models.JSONField(null=True, blank=True, help_text="continuation spec")
    on_error = models.JSONField(null=True, blank=True, help_text="continuation spec")
    # A chain's steps (task name, args, kwargs, queue, task id...), enqueued one by one.
    steps = models.JSONField(default=list, blank=True)
    created_at = models.DateTimeField(db_default=Now())
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "pg_queue_group"
        verbose_name = "group"
        indexes = [
            models.Index(
                fields=["created_at"],
                name="pg_queue_group_running_idx",
                condition=models.Q(status="running"),
            )
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.group_id} {self.status} {self.finished}/{self.total}"


class ResourceLock(models.Model):
    """An exclusive lock on a named resource (``rag:/data/a``): the row is the mutex.

    Held by a job (``holder_kind`` ``worker``: inserted with its claim, deleted with its
    finish or when its expired lease is re-armed) or by code running elsewhere (``cli``,
    ``web``, ``admin``...: ``resource_lock()``, renewed while it runs, expired after ``ttl``).
    """

    resource_key = models.CharField(max_length=300, primary_key=True)
    holder_id = models.CharField(max_length=200)
    holder_kind = models.CharField(max_length=32)
    task_id = models.UUIDField(null=True, blank=True, help_text="the job holding it, if any")
    acquired_at = models.DateTimeField(db_default=Now())
    expires_at = models.DateTimeField(
        null=True, blank=True, help_text="none for a job's lock: it lives as long as the job"
    )
    holder_meta = models.JSONField(default=dict, blank=True)

    class Meta:
        db_table = "pg_resource_lock"
        indexes = [models.Index(fields=["task_id"], name="pg_resource_lock_task_idx")]

    def __str__(self) -> str:
        return f"{self.resource_key} held by {self.holder_kind} {self.holder_id}"


class Transport(models.TextChoices):
    POSTGRES = "postgres", "PostgreSQL"
    CELERY = "celery", "Celery"


class RoutingPin(models.Model):
    """The transport chosen once for a multi-step execution; first decision wins."""

    execution_id = models.CharField(max_length=200, primary_key=True)
    transport = models.CharField(max_length=16, choices=Transport.choices)
    reason = models.CharField(max_length=200, blank=True, default="")
    pinned_at = models.DateTimeField(db_default=Now())

    class Meta:
        db_table = "pg_queue_routing_pin"

    def __str__(self) -> str:
        return f"{self.execution_id} -> {self.transport}"


class PeriodicTask(models.Model):
    """A cron schedule: the leader scheduler enqueues ``task_name`` at each tick.

    ``next_run_at`` is the next tick (NULL: not yet computed; the scheduler sets it from the
    database clock without firing, so a new or changed schedule never fires at once). Firing
    is one transaction: the job's INSERT and this row's advance. ``last_fired_by`` says which
    side fired last (``postgres``, or ``celery`` for the Celery beat hand-over scheduler), so
    that a tick fired on one side is not fired again on the other when the flag turns.
    """

    name = models.CharField(max_length=200, primary_key=True)
    task_name = models.CharField(max_length=300)
    queue_name = models.CharField(
        max_length=200, blank=True, default="", help_text="'' = the task's own queue"
    )
    args = models.JSONField(default=list, blank=True)
    kwargs = models.JSONField(default=dict, blank=True)
    cron = models.CharField(
        max_length=120, help_text="5 fields (minute hour day month weekday), or 6 with seconds"
    )
    timezone = models.CharField(max_length=64, default="UTC", db_default="UTC")
    enabled = models.BooleanField(default=True, db_default=True)
    in_settings = models.BooleanField(
        default=False,
        db_default=False,
        help_text="declared in PG_QUEUE['SCHEDULE'] (synced at worker start)",
    )
    last_run_at = models.DateTimeField(null=True, blank=True)
    next_run_at = models.DateTimeField(null=True, blank=True)
    last_task_id = models.UUIDField(null=True, blank=True)
    last_fired_by = models.CharField(max_length=16, blank=True, default="", db_default="")
    updated_at = models.DateTimeField(db_default=Now())

    class Meta:
        db_table = "pg_periodic_task"
        verbose_name = "periodic task"
        indexes = [
            models.Index(
                fields=["next_run_at"],
                name="pg_periodic_task_due_idx",
                condition=models.Q(enabled=True),
            )
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.cron} {self.timezone})"


class LeaderLease(models.Model):
    """One row per leader role (``scheduler``): who leads until ``expires_at`` (database clock).

    Acquired by one conditional INSERT ... ON CONFLICT (free, or expired), renewed by one
    conditional UPDATE (still ours, not expired); every leader-only statement re-checks it.
    """

    role = models.CharField(max_length=64, primary_key=True)
    holder = models.CharField(max_length=200)
    acquired_at = models.DateTimeField(db_default=Now())
    renewed_at = models.DateTimeField(db_default=Now())
    expires_at = models.DateTimeField()

    class Meta:
        db_table = "pg_leader_lease"

    def __str__(self) -> str:
        return f"{self.role} led by {self.holder} until {self.expires_at}"


class QueueStats(models.Model):
    """One queue's depth as of ``taken_at``: the snapshot ``/metrics`` serves.

    Refreshed by the one worker that holds the ``queue_stats`` lease (``pg_leader_lease``),
    every ``QUEUE_STATS_INTERVAL`` seconds (pg_queue/worker/maintenance.py), so that a scrape
    reads this small table and never counts the queue table itself, however many processes
    are scraped and however deep the queue is.
    """

    queue_name = models.CharField(max_length=200, primary_key=True)
    ready = models.BigIntegerField()
    delayed = models.BigIntegerField()
    running = models.BigIntegerField()
    oldest_ready_seconds = models.FloatField()
    taken_at = models.DateTimeField()

    class Meta:
        db_table = "pg_queue_stats"
        verbose_name_plural = "queue stats"

    def __str__(self) -> str:
        return f"{self.queue_name}: {self.ready} ready at {self.taken_at}"


class QueueWaiter(models.Model):
    """A worker's wake-up mark on one queue: ``waiting`` while it may sleep until a NOTIFY.

    An enqueue that is its own transaction sends a NOTIFY only when the queue has a waiting
    mark, so a stream of single enqueues with no worker waiting sends none. A ``takeable``
    mark is also taken (set false) by the enqueue that NOTIFYs, so that a worker flooded with
    wake-ups gets one per idle spell instead of one per job, and sets it again before it next
    sleeps; a worker woken about once per claim keeps its marks standing (not takeable) and
    writes nothing per job (pg_queue/worker/coordinator.py, "wake-up marks"). Unlogged: a
    crash empties it, and a worker sets its marks again within ``MARKS_REFRESH``.
    """

    pk = models.CompositePrimaryKey("queue_name", "worker_id")
    queue_name = models.CharField(max_length=200)
    worker_id = models.CharField(max_length=200)
    waiting = models.BooleanField(default=False)
    takeable = models.BooleanField(default=False)

    class Meta:
        db_table = "pg_queue_waiter"

    def __str__(self) -> str:
        state = "waiting" if self.waiting else "busy"
        return f"{self.worker_id} on {self.queue_name}: {state}{' (takeable)' * self.takeable}"
