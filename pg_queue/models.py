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

    class Meta:
        db_table = "pg_queue_message"
        indexes = [
            # Serves the claim: ready rows only, in claim order.
            models.Index(
                fields=["queue_name", "-priority", "available_at", "msg_id"],
                name="pg_queue_msg_claim_idx",
                condition=models.Q(state="ready"),
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

    class Meta:
        db_table = "pg_task_result"
        indexes = [
            models.Index(fields=["expires_at"], name="pg_task_result_expires_idx"),
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

    class Meta:
        db_table = "pg_queue_dead_letter"
        indexes = [models.Index(fields=["queue_name", "failed_at"], name="pg_queue_dl_queue_idx")]

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
