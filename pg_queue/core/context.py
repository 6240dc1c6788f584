"""What a running task may know about itself (``@task(takes_context=True)``)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field


def _never() -> bool:
    return False


@dataclass(frozen=True, kw_only=True, slots=True)
class JobContext:
    """Passed as the first argument to tasks registered with ``takes_context=True``."""

    task_id: uuid.UUID
    task_name: str
    queue_name: str
    attempt: int  # 1 on the first execution
    max_attempts: int
    worker_id: str
    cancel_check: Callable[[], bool] = field(default=_never, repr=False, compare=False)

    def cancel_requested(self) -> bool:
        """True once an operator cancelled this job (the heartbeat notices within lease/3).

        A long task should check it at safe points and return early; the job then ends with
        a 'cancelled' outcome whatever it returns.
        """
        return self.cancel_check()
