"""What a running task may know about itself (``@task(takes_context=True)``)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True, slots=True)
class JobContext:
    """Passed as the first argument to tasks registered with ``takes_context=True``."""

    task_id: uuid.UUID
    task_name: str
    queue_name: str
    attempt: int  # 1 on the first execution
    max_attempts: int
    worker_id: str
