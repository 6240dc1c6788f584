"""Running a Celery task's own code inside the Postgres worker, keeping Celery's semantics.

The task runs in-process under a request whose ``id`` is the job's stable task id and whose
``retries`` is the number of earlier attempts. ``self.retry(countdown=..., max_retries=...)``
becomes a Postgres retry with that delay (Celery checks ``max_retries`` itself and raises
``MaxRetriesExceededError`` when they run out); ``autoretry_for`` / ``retry_backoff`` work because
Celery implements them on top of ``self.retry``. An exception that is not a retry fails the job
for good, as it does on a Celery worker.

Not supported under the Postgres worker (documented in docs/cutover.md): ``task.request``
delivery details (exchange, routing key), ``acks_late``/``reject_on_worker_lost`` (the lease
already gives at-least-once), Celery signals (``task_prerun`` etc.), soft time limits, canvas
primitives beyond a single link / link_error, and chords.

Celery is the optional ``pg-queue[celery]`` extra: this module is imported by every producer and
worker, so it imports Celery only inside the functions that run a Celery task (which exist only
when Celery does).
"""

from __future__ import annotations

import datetime as dt
import sys
import uuid
from typing import Any

from django.utils import timezone

from pg_queue.core.exceptions import Reject, Retry

#: Celery's own default for ``max_retries``; used when a task does not set it.
CELERY_DEFAULT_MAX_RETRIES = 3
#: Stand-in for ``max_retries=None`` (retry forever): large, but still a bound.
UNBOUNDED_ATTEMPTS = 10_000


def is_celery_task(obj: Any) -> bool:
    """True for a Celery task object; never imports Celery (no Celery loaded, no Celery task)."""
    module = sys.modules.get("celery.app.task")
    return module is not None and isinstance(obj, module.Task)


def celery_max_attempts(task: Any) -> int:
    """Attempts a Celery task gets: ``max_retries + 1`` (its retries plus the first run)."""
    max_retries = getattr(task, "max_retries", CELERY_DEFAULT_MAX_RETRIES)
    return UNBOUNDED_ATTEMPTS if max_retries is None else int(max_retries) + 1


def _retry_delay(task: Any, when: Any) -> float:
    if isinstance(when, dt.datetime):
        if timezone.is_naive(when):
            when = timezone.make_aware(when, dt.UTC)
        return max(0.0, (when - timezone.now()).total_seconds())
    if when is None:
        return float(getattr(task, "default_retry_delay", 180) or 0)
    return max(0.0, float(when))


def run_celery_task(
    task: Any, task_id: uuid.UUID, args: list[Any], kwargs: dict[str, Any], attempt: int
) -> Any:
    """Run ``task`` here; returns its value, or raises ``Retry`` / ``Reject`` for the worker."""
    from celery.exceptions import Retry as CeleryRetry  # a Celery task exists: so does Celery

    task.push_request(
        id=str(task_id),
        args=args,
        kwargs=kwargs,
        retries=attempt - 1,
        is_eager=True,  # makes self.retry() raise instead of publishing to a broker
        called_directly=False,
        delivery_info={"is_eager": True},
    )
    try:
        return task.run(*args, **kwargs)
    except CeleryRetry as retry:
        raise Retry(
            delay=_retry_delay(task, retry.when),
            reason=str(retry.exc or ""),
            bounded_by_task=True,
        ) from retry
    except Exception as exc:
        raise Reject(exc) from exc
    finally:
        task.pop_request()
