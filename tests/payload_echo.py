"""Helpers for the payload contract tests: an echo task a worker subprocess can import
(``run_pg_worker --include tests.payload_echo``), nested values, and type-exact comparison."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from django.db import connection

from pg_queue import task
from pg_queue.core.payload import loads

#: Its own queue, so a worker for these jobs claims nothing else.
ECHO_QUEUE = "payload-echo"


@task(queue=ECHO_QUEUE, max_attempts=1)
def echo(*args: Any, **kwargs: Any) -> list[Any]:
    """Returns ``[*args, kwargs]``: each argument at the depth it arrived at."""
    return [*args, kwargs]


def nested(levels: int, leaf: Any = 0) -> Any:
    """``leaf`` inside ``levels`` lists: nested(2) == [[0]]."""
    value = leaf
    for _ in range(levels):
        value = [value]
    return value


def stored_payloads(task_ids: list[Any]) -> dict[Any, Any]:
    """The payload column of each message, as the database prints it, decoded by ``loads``."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT task_id, payload::text FROM pg_queue_message WHERE task_id = ANY(%s)",
            [list(task_ids)],
        )
        return {task_id: loads(text) for task_id, text in cursor.fetchall()}


def same_json(got: Any, want: Any, path: str = "value") -> None:
    """Assert ``got`` is ``want`` type for type (an int stays an int, a float a float).

    Dicts compare as mappings (jsonb orders keys its own way). -0.0 may come back as 0.0:
    PostgreSQL's numeric has no negative zero.
    """
    assert type(got) is type(want), f"{path}: {got!r} ({type(got).__name__}) != {want!r}"
    compare: Callable[[Any, Any], bool]
    if isinstance(want, dict):
        assert got.keys() == want.keys(), f"{path}: keys {list(got)} != {list(want)}"
        for key in want:
            same_json(got[key], want[key], f"{path}[{key!r}]")
    elif isinstance(want, list):
        assert len(got) == len(want), f"{path}: {len(got)} items != {len(want)}"
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            same_json(g, w, f"{path}[{i}]")
    else:
        compare = _float_equal if isinstance(want, float) else _equal
        assert compare(got, want), f"{path}: {got!r} != {want!r}"


def _equal(a: Any, b: Any) -> bool:
    return bool(a == b)


def _float_equal(a: float, b: float) -> bool:
    if b == 0.0:
        return a == 0.0 and math.copysign(1.0, a) == 1.0  # what comes back is always +0.0
    return a == b
