"""Fault injection for the health tests, loaded by a worker with ``--include``.

``PG_QUEUE_TEST_FAULT=maintenance-once`` makes the maintenance service's first re-arm pass
raise, as an unforeseen bug would: the service must log it with its traceback, count it, turn
health red, and go on working. Nothing else is changed: every statement still runs for real.
"""

from __future__ import annotations

import os
from typing import Any

from pg_queue.worker.maintenance import Maintenance

_original = Maintenance._rearm_pass
_raised: list[bool] = []


def _rearm_pass_failing_once(self: Maintenance) -> Any:
    if not _raised:
        _raised.append(True)
        raise RuntimeError("injected fault in the re-arm pass")
    return _original(self)


if os.environ.get("PG_QUEUE_TEST_FAULT") == "maintenance-once":
    Maintenance._rearm_pass = _rearm_pass_failing_once  # type: ignore[method-assign]
