"""The example backend's execution tasks: plain Celery tasks, run by name on either transport.

``run_execution`` does the work; ``complete_execution`` / ``fail_execution`` are its callbacks
(``link`` / ``link_error`` on Celery, continuations on Postgres). Names are explicit so the
Celery worker and the Postgres worker resolve the same strings.

``fail_execution`` accepts every shape an error callback is called with:

- Postgres worker: ``(task_id: str, error: str, *signature_args, **signature_kwargs)``;
- Celery ``link_error`` when the function takes more than one positional parameter (this one
  does): ``(request, exc, traceback)``, called inline in the worker that ran the failed task;
- Celery's older shape, used when the errback cannot be called inline: ``(task_id,)``, with no
  error text (Celery passes none; the text says so instead of inventing one).
"""

from __future__ import annotations

import logging
from typing import Any

from celery import shared_task

from backend.executions import (
    finish_execution,
    mark_executing,
    read_staged_input,
)
from backend.models import ExecutionStatus

logger = logging.getLogger("backend.executions")

#: Input text that makes ``run_execution`` raise (the example's way to exercise failures).
FAIL_INPUT = "fail"


@shared_task(bind=True, name="workers.executions.run_execution")
def run_execution(self: Any, execution_id: str) -> dict[str, Any]:
    """Mark the execution EXECUTING, read its staged input, return the output."""
    task_id = str(self.request.id or "")
    found = mark_executing(execution_id, task_id)
    if found is None:
        raise LookupError(f"execution {execution_id} does not exist")
    if found not in (ExecutionStatus.PENDING, ExecutionStatus.EXECUTING):
        # Already final (e.g. marked ERROR while this job waited): do not run it again.
        logger.warning(
            "execution already final, not run execution_id=%s task_id=%s status=%s",
            execution_id,
            task_id,
            found,
        )
        return {"execution_id": execution_id, "skipped": str(found)}
    text = read_staged_input(execution_id)
    if text.strip() == FAIL_INPUT:
        raise RuntimeError(f"execution {execution_id}: the input asked the run to fail")
    return {"execution_id": execution_id, "output": text.upper(), "characters": len(text)}


@shared_task(name="workers.executions.complete_execution", ignore_result=True)
def complete_execution(result: Any, execution_id: str) -> None:
    """on_success: the run's result comes first (both transports)."""
    if isinstance(result, dict) and "skipped" in result:
        return
    finish_execution(execution_id, ExecutionStatus.COMPLETED, result=result)


def error_details(first: Any, second: Any = None) -> tuple[str, str]:
    """(task id, error text) from any of the error-callback call shapes."""
    if second is None:  # Celery's (task_id,) shape
        task_id = str(getattr(first, "id", first) or "")
        return task_id, f"task {task_id} failed (Celery passed no error text to the callback)"
    task_id = str(getattr(first, "id", first) or "")  # a Celery request, or the id itself
    if isinstance(second, BaseException):
        text = str(second)
        return task_id, f"{type(second).__name__}: {text}" if text else type(second).__name__
    return task_id, str(second)


@shared_task(name="workers.executions.fail_execution", ignore_result=True)
def fail_execution(
    first: Any, second: Any = None, traceback: Any = None, *args: Any, execution_id: str = ""
) -> None:
    """on_error: marks the execution ERROR with the real error text where there is one."""
    task_id, error = error_details(first, second)
    if not execution_id:
        logger.error("fail_execution without execution_id task_id=%s error=%s", task_id, error)
        return
    logger.warning(
        "execution run failed execution_id=%s task_id=%s error=%s", execution_id, task_id, error
    )
    finish_execution(execution_id, ExecutionStatus.ERROR, error=error)
