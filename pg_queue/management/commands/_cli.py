"""What the commands that draw with rich share: the ``cli`` extra, named when it is missing.

rich is the optional ``pg-queue[cli]`` extra. ``pg_queue_status``, ``pg_queue_locks``,
``pg_queue_bench`` and ``pg_queue_demo`` import it when available and, without it, refuse with a
``CommandError`` that says what to install, never an ImportError while Django loads the
command (``pg_queue_status --json`` and ``pg_queue_locks --json`` or ``--release`` need none).
(Django skips modules whose name starts with an underscore when it lists commands.)
"""

from __future__ import annotations

import io
import shutil
import sys
from collections.abc import Iterable
from typing import Any

from django.core.management.base import CommandError

#: What to install for rich output.
CLI_EXTRA = "pg-queue[cli]"
#: Width of the tables when stdout is not a terminal (logs, pipes, tests): wide enough for a
#: task id and a key side by side.
PLAIN_WIDTH = 150


def require_rich(missing: ImportError | None, what: str) -> None:
    """Raise a ``CommandError`` naming the extra when rich could not be imported."""
    if missing is not None:
        raise CommandError(
            f"{what} needs rich, which is not installed ({missing}): pip install '{CLI_EXTRA}'"
        )


#: A held lock as the lock tables show it: key, holder kind, holder id, task id (None: not a
#: job), age text, expiry text, expired.
type LockLine = tuple[str, str, str, Any, str, str, bool]


def lock_table(title: str, lines: Iterable[LockLine]) -> Any:
    """The rich table of held locks ``pg_queue_status`` and ``pg_queue_locks`` print. Names are
    plain text (never rich markup); keys and holder ids fold, never cut (an operator copies
    them into ``--release``); the other columns keep to one line. Needs rich."""
    from rich import box
    from rich.table import Table
    from rich.text import Text

    table = Table(title=Text(title), box=box.SIMPLE_HEAVY, title_justify="left")
    for header in ("key", "holder", "holder id", "task", "age", "expires"):
        table.add_column(
            header,
            justify="right" if header == "age" else "left",
            overflow="fold",
            no_wrap=header not in ("key", "holder id"),
        )
    for key, kind, holder_id, task_id, age, expiry, expired in lines:
        table.add_row(
            Text(key),
            Text(kind),
            Text(holder_id),
            "-" if task_id is None else str(task_id),
            age,
            Text(expiry, style="bold red" if expired else ""),
        )
    return table


def render_text(renderables: Iterable[Any]) -> str:
    """Rich renderables as text: coloured and as wide as the terminal on one, plain and
    ``PLAIN_WIDTH`` wide otherwise. Needs rich."""
    from rich.console import Console

    terminal = sys.stdout.isatty()
    width = shutil.get_terminal_size((PLAIN_WIDTH, 40)).columns if terminal else PLAIN_WIDTH
    buffer = io.StringIO()
    console = Console(
        file=buffer,
        width=width,
        force_terminal=terminal,
        color_system="standard" if terminal else None,
        highlight=False,
    )
    for item in renderables:
        console.print(item)
    return buffer.getvalue()
