"""What a caller can ask for when queueing a job: per-call options and the job spec.

Pure value objects and the checks that need no database: a queue name a worker can serve, a
valid ``max_attempts``. ``pg_queue.jobspec`` applies task defaults and validates the rest.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, NamedTuple

from pg_queue.core.payload import ContinuationSpec, check_text

BackoffFn = Callable[[int], float]
"""A custom backoff: attempt number (1 = the first run failed) -> seconds before the next."""

#: Characters ``run_pg_worker --queues 'default=3,email=1'`` reads as syntax: a queue whose name
#: holds one could be enqueued to but never named to a worker.
QUEUE_NAME_SEPARATORS = ",="
#: ``max_attempts`` is stored in an int column.
MAX_ATTEMPTS_LIMIT = 2**31 - 1


def check_queue_name(queue: object, label: str = "queue") -> str:
    """``queue`` if jobs put there can be stored and served, else ``ValueError`` naming
    ``label``: a non-empty string without NUL, surrogates, ``,`` or ``=``."""
    if not isinstance(queue, str) or not queue:
        raise ValueError(f"{label} must be a non-empty string, got {queue!r}")
    check_text(label, queue)
    for char in QUEUE_NAME_SEPARATORS:
        if char in queue:
            raise ValueError(
                f"{label} {queue!r} contains {char!r}, which run_pg_worker --queues reads as a "
                "separator: no worker could be pointed at this queue"
            )
    return queue


def check_max_attempts(value: object) -> int:
    """``value`` if it is a valid ``max_attempts`` (an int, not a bool, in 1..2**31-1)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"max_attempts must be an int, got {type(value).__name__} {value!r}")
    if not 1 <= value <= MAX_ATTEMPTS_LIMIT:
        raise ValueError(f"max_attempts must be >= 1 and <= {MAX_ATTEMPTS_LIMIT}, got {value}")
    return value


@dataclass(frozen=True, kw_only=True, slots=True)
class EnqueueOptions:
    """Per-call options; ``None`` means "the task's default"."""

    queue: str | None = None
    priority: int | None = None
    delay: float | None = None
    eta: dt.datetime | None = None
    dedup_key: str | None = None
    max_attempts: int | None = None
    tenant_key: str = ""
    resource_key: str | None = None


NO_OPTIONS = EnqueueOptions()
EMPTY: Mapping[str, Any] = MappingProxyType({})


class JobSpec(NamedTuple):
    """One job to enqueue: task name, arguments and options.

    Immutable like a frozen dataclass, but a tuple: bulk enqueue builds one per job, and tuple
    construction costs a fraction of a frozen dataclass's ``__init__``.
    """

    task_name: str
    args: Sequence[Any] = ()
    kwargs: Mapping[str, Any] = EMPTY
    options: EnqueueOptions = NO_OPTIONS
    headers: Mapping[str, Any] = EMPTY
    on_success: ContinuationSpec | None = None
    on_error: ContinuationSpec | None = None
    reply_key: str = ""
    #: None: a fresh time-ordered id. A given id that already names a live job or a stored
    #: result is refused with ``DuplicateTaskId``.
    task_id: uuid.UUID | None = None
