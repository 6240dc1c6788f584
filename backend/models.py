"""The example backend's execution-status tables: what "the existing backend" tracks per run.

An ``Execution`` is one user-visible run (an API call, a workflow run). Its status only moves
forward, and every move is a conditional UPDATE (``WHERE status IN (...)``), so a late or
duplicate writer (a retried callback, the ``job_failed`` receiver racing the ``on_error``
callback, a synchronous error after dispatch) can never overwrite a status it did not expect.

An ``ExecutionSlot`` row exists while an execution holds one of its organisation's concurrency
slots; releasing the slot deletes the row, so releasing twice is harmless.
"""

from __future__ import annotations

import uuid

from django.db import models


class ExecutionStatus(models.TextChoices):
    PENDING = "PENDING", "pending"
    EXECUTING = "EXECUTING", "executing"
    COMPLETED = "COMPLETED", "completed"
    ERROR = "ERROR", "error"


#: Statuses from which an execution may still move; COMPLETED and ERROR are final.
OPEN_STATUSES = (ExecutionStatus.PENDING, ExecutionStatus.EXECUTING)


class Execution(models.Model):
    """One run of the example backend's work, whichever transport carried it."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    org_id = models.CharField(max_length=200, db_index=True)
    status = models.CharField(
        max_length=16, choices=ExecutionStatus.choices, default=ExecutionStatus.PENDING
    )
    error = models.TextField(blank=True, default="")
    task_id = models.CharField(max_length=200, blank=True, default="", db_index=True)
    transport = models.CharField(max_length=16, blank=True, default="")
    result = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "backend_execution"
        indexes = [models.Index(fields=["status", "created_at"], name="backend_exec_status_idx")]

    def __str__(self) -> str:
        return f"execution {self.id} {self.status}"


class ExecutionSlot(models.Model):
    """A concurrency slot held by one running execution (the row is the slot)."""

    execution = models.OneToOneField(
        Execution, primary_key=True, on_delete=models.CASCADE, related_name="slot"
    )
    org_id = models.CharField(max_length=200, db_index=True)
    acquired_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "backend_execution_slot"

    def __str__(self) -> str:
        return f"slot of {self.execution_id} ({self.org_id})"
