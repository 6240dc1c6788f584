"""Starting an execution and finishing it, whichever transport runs it.

``start_execution`` is the request path: create the execution, take a slot, stage the input,
dispatch ``run_execution`` with success / error callbacks. Its one promise: **an execution never
stays PENDING because the request failed before the work was handed over.** A failure before
dispatch (no slot, staging, the dispatch call itself) marks the execution ERROR with the reason,
releases the slot and deletes the staged input; each of those steps is guarded on its own, so a
failure to mark ERROR still releases the slot and cleans up. Once the dispatch returned, the
execution belongs to the worker and its callbacks: a later error in the same request is logged
and never overwrites the status.

Finishing (``complete``, ``fail``, the ``job_failed`` receiver) uses conditional updates that
only move an open execution (PENDING / EXECUTING), then releases the slot and cleans up; every
step is idempotent, so a callback and the dead-letter signal may both arrive.

Settings (read with defaults, all optional): ``EXECUTION_STAGING_DIR`` (a directory every
worker can read; default ``<tmp>/backend-executions``), ``EXECUTION_QUEUE`` (default
``executions``), ``EXECUTION_CALLBACK_QUEUE`` (default ``execution-callbacks``),
``EXECUTION_SLOTS_PER_ORG`` (default 10).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from backend.models import OPEN_STATUSES, Execution, ExecutionSlot, ExecutionStatus

if TYPE_CHECKING:
    from pg_queue.routing import RoutingDispatcher

logger = logging.getLogger("backend.executions")

#: Task names, registered by ``workers.executions`` (both workers run them by name).
RUN_TASK = "workers.executions.run_execution"
COMPLETE_TASK = "workers.executions.complete_execution"
FAIL_TASK = "workers.executions.fail_execution"
#: Where staged inputs live when ``EXECUTION_STAGING_DIR`` is not set.
DEFAULT_STAGING_DIR = Path(tempfile.gettempdir()) / "backend-executions"
DEFAULT_QUEUE = "executions"
DEFAULT_CALLBACK_QUEUE = "execution-callbacks"
#: Executions one organisation may have running at once.
DEFAULT_SLOTS_PER_ORG = 10
#: File name of the staged input inside the execution's staging folder.
INPUT_FILE = "input.txt"


class SlotUnavailable(RuntimeError):
    """The organisation already runs as many executions as it may."""


# --- configuration ----------------------------------------------------------------------------


def staging_dir() -> Path:
    return Path(getattr(settings, "EXECUTION_STAGING_DIR", "") or DEFAULT_STAGING_DIR)


def staged_input_path(execution_id: str) -> Path:
    return staging_dir() / str(execution_id) / INPUT_FILE


def execution_queue() -> str:
    return str(getattr(settings, "EXECUTION_QUEUE", "") or DEFAULT_QUEUE)


def execution_callback_queue() -> str:
    return str(getattr(settings, "EXECUTION_CALLBACK_QUEUE", "") or DEFAULT_CALLBACK_QUEUE)


def slots_per_org() -> int:
    return int(getattr(settings, "EXECUTION_SLOTS_PER_ORG", DEFAULT_SLOTS_PER_ORG))


# --- slots and staging ------------------------------------------------------------------------


def acquire_slot(execution: Execution) -> None:
    """Take one of the organisation's slots, or raise ``SlotUnavailable``.

    An advisory lock per organisation serialises the count-then-insert, so two requests can
    never both take the last slot.
    """
    limit = slots_per_org()
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pg_advisory_xact_lock(hashtext('backend.execution_slot'), hashtext(%s))",
                [execution.org_id],
            )
        held = ExecutionSlot.objects.filter(org_id=execution.org_id).count()
        if held >= limit:
            raise SlotUnavailable(
                f"organisation {execution.org_id!r} already runs {held} executions "
                f"(EXECUTION_SLOTS_PER_ORG={limit})"
            )
        ExecutionSlot.objects.create(execution=execution, org_id=execution.org_id)


def release_slot(execution_id: str) -> int:
    """Give the slot back (deleting its row); returns how many rows went (0 if none held)."""
    deleted, _ = ExecutionSlot.objects.filter(execution_id=execution_id).delete()
    return deleted


def stage_input(execution_id: str, input_text: str) -> Path:
    """Write the execution's input where the worker will read it."""
    path = staged_input_path(execution_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(input_text, encoding="utf-8")
    return path


def read_staged_input(execution_id: str) -> str:
    return staged_input_path(execution_id).read_text(encoding="utf-8")


def delete_staged_input(execution_id: str) -> None:
    """Remove the execution's staging folder (missing is fine)."""
    folder = staged_input_path(execution_id).parent
    if folder.exists():
        shutil.rmtree(folder)


# --- status moves (all conditional) -----------------------------------------------------------


def mark_error_before_dispatch(execution_id: str, reason: str) -> bool:
    """PENDING -> ERROR only: the request failed before the work was handed over."""
    moved = Execution.objects.filter(pk=execution_id, status=ExecutionStatus.PENDING).update(
        status=ExecutionStatus.ERROR, error=reason, updated_at=timezone.now()
    )
    return moved == 1


def mark_executing(execution_id: str, task_id: str) -> str | None:
    """PENDING -> EXECUTING; returns the status found (None if the execution does not exist).

    A redelivered run finds EXECUTING and may proceed; a final status means "do not run".
    """
    fields: dict[str, Any] = {"status": ExecutionStatus.EXECUTING, "updated_at": timezone.now()}
    if task_id:
        fields["task_id"] = task_id
    if Execution.objects.filter(pk=execution_id, status=ExecutionStatus.PENDING).update(**fields):
        return ExecutionStatus.PENDING
    return Execution.objects.filter(pk=execution_id).values_list("status", flat=True).first()


def finish_execution(
    execution_id: str, status: ExecutionStatus, *, result: Any = None, error: str = ""
) -> bool:
    """Move an open execution to COMPLETED or ERROR, then release its slot and clean up.

    Returns whether this call moved the status. The cleanup runs either way (it is
    idempotent), and each of its steps is guarded so one failure does not skip the next.
    """
    if status not in (ExecutionStatus.COMPLETED, ExecutionStatus.ERROR):
        raise ValueError(f"finish_execution moves to COMPLETED or ERROR, not {status}")
    moved = False
    try:
        moved = (
            Execution.objects.filter(pk=execution_id, status__in=OPEN_STATUSES).update(
                status=status, result=result, error=error, updated_at=timezone.now()
            )
            == 1
        )
    except Exception:
        logger.exception(
            "execution status not written execution_id=%s status=%s", execution_id, status
        )
    if moved:
        logger.info("execution finished execution_id=%s status=%s", execution_id, status)
    else:
        logger.info(
            "execution already final or missing, status kept execution_id=%s wanted=%s",
            execution_id,
            status,
        )
    release_and_clean(execution_id)
    return moved


def fail_by_task_id(task_id: str, error: str) -> list[str]:
    """Mark every open execution run by ``task_id`` ERROR and clean up; returns their ids."""
    ids = [
        str(pk)
        for pk in Execution.objects.filter(task_id=task_id, status__in=OPEN_STATUSES).values_list(
            "pk", flat=True
        )
    ]
    for execution_id in ids:
        finish_execution(execution_id, ExecutionStatus.ERROR, error=error)
    return ids


def release_and_clean(execution_id: str) -> None:
    """Release the slot and delete the staged input; each step guarded and logged."""
    try:
        release_slot(execution_id)
    except Exception:
        logger.exception("slot not released execution_id=%s", execution_id)
    try:
        delete_staged_input(execution_id)
    except Exception:
        logger.exception("staged input not deleted execution_id=%s", execution_id)


# --- the request path -------------------------------------------------------------------------


def _abort_before_dispatch(execution: Execution, reason: str) -> None:
    """The request failed before dispatch: mark ERROR, release, clean; never raises."""
    logger.error(
        "execution failed before dispatch execution_id=%s org_id=%s reason=%s",
        execution.id,
        execution.org_id,
        reason,
    )
    try:
        if mark_error_before_dispatch(str(execution.id), reason):
            execution.status = ExecutionStatus.ERROR
            execution.error = reason
    except Exception:
        logger.exception("execution not marked ERROR execution_id=%s", execution.id)
    release_and_clean(str(execution.id))


def start_execution(
    org_id: str,
    input_text: str,
    *,
    dispatcher: RoutingDispatcher,
    queue: str | None = None,
    callback_queue: str | None = None,
) -> Execution:
    """Create an execution and hand it to a worker; returns the execution.

    On success the execution is PENDING (or further along already) with ``task_id`` and
    ``transport`` set. If anything failed before the dispatch returned, it is ERROR with the
    reason in ``error`` (unless even that write failed: then it is logged), its slot is
    released and its staged input deleted. Raises only if the execution row itself cannot be
    created, or when called inside ``transaction.atomic()`` (a Celery worker could receive the
    job before the execution row commits).
    """
    if connection.in_atomic_block:
        raise RuntimeError(
            "start_execution() inside transaction.atomic(): the execution must be committed "
            "before a worker can pick it up; call it outside the block"
        )
    run_queue = queue or execution_queue()
    cb_queue = callback_queue or execution_callback_queue()
    execution = Execution.objects.create(org_id=org_id)
    execution_id = str(execution.id)

    try:
        acquire_slot(execution)
        stage_input(execution_id, input_text)
    except Exception as exc:
        _abort_before_dispatch(execution, f"{type(exc).__name__}: {exc}")
        return execution

    # Callbacks by name (the task module imports this one, never the other way round).
    app = dispatcher.celery_app
    callback_kwargs = {"execution_id": execution_id}
    try:
        handle = dispatcher.dispatch_with_callback(
            RUN_TASK,
            kwargs={"execution_id": execution_id},
            queue=run_queue,
            on_success=app.signature(COMPLETE_TASK, kwargs=callback_kwargs, queue=cb_queue),
            on_error=app.signature(FAIL_TASK, kwargs=callback_kwargs, queue=cb_queue),
            org_id=org_id,
            execution_id=execution_id,
        )
    except Exception as exc:
        _abort_before_dispatch(execution, f"dispatch failed: {type(exc).__name__}: {exc}")
        return execution

    # Dispatched: from here on the worker and its callbacks own the status. Nothing below may
    # mark the execution ERROR, release its slot or delete its input.
    try:
        record_dispatch(execution_id, handle.task_id, handle.transport)
        execution.task_id, execution.transport = handle.task_id, handle.transport
    except Exception:
        logger.exception(
            "dispatch not recorded (execution still runs) execution_id=%s task_id=%s",
            execution_id,
            handle.task_id,
        )
    logger.info(
        "execution dispatched execution_id=%s org_id=%s task_id=%s transport=%s queue=%s",
        execution_id,
        org_id,
        handle.task_id,
        handle.transport,
        run_queue,
    )
    return execution


def record_dispatch(execution_id: str, task_id: str, transport: str) -> None:
    """Remember which job runs the execution (the ``job_failed`` receiver matches on it)."""
    Execution.objects.filter(pk=execution_id).update(
        task_id=task_id, transport=transport, updated_at=timezone.now()
    )
