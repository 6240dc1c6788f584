"""What the commands that draw with rich share: the ``cli`` extra, named when it is missing.

rich is the optional ``pg-queue[cli]`` extra. ``pg_queue_status``, ``pg_queue_locks``,
``pg_queue_bench`` and ``pg_queue_demo`` import it when available and, without it, refuse with a
``CommandError`` that says what to install, never an ImportError while Django loads the
command (``pg_queue_status --json`` and ``pg_queue_locks --json`` or ``--release`` need none).
(Django skips modules whose name starts with an underscore when it lists commands.)
"""

from __future__ import annotations

from django.core.management.base import CommandError

#: What to install for rich output.
CLI_EXTRA = "pg-queue[cli]"


def require_rich(missing: ImportError | None, what: str) -> None:
    """Raise a ``CommandError`` naming the extra when rich could not be imported."""
    if missing is not None:
        raise CommandError(
            f"{what} needs rich, which is not installed ({missing}): pip install '{CLI_EXTRA}'"
        )
