"""Helpers the admin tests share: submitting a confirmation page, and checking that a list page
runs a fixed number of queries however many rows it shows."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.db import connection
from django.test.utils import CaptureQueriesContext


def confirm(client: Any, response: Any, url: str, **fields: Any) -> Any:
    """Submit a confirmation page the way its form does (``fields`` added to what it echoes)."""
    assert response.status_code == 200, response
    data: dict[str, list[str]] = {}
    for name, value in response.context["echo"]:
        data.setdefault(name, []).append(value)
    return client.post(url, {**data, "pgq_confirm": "yes", **fields})


def same_queries_for_3_and_50(client: Any, url: str, make: Callable[[int], Any]) -> int:
    """The number of queries ``url`` runs, asserted equal for 3 rows and for 50 (``make(n)``
    adds n rows)."""
    make(3)
    client.get(url)
    with CaptureQueriesContext(connection) as few:
        assert client.get(url).status_code == 200
    make(47)
    with CaptureQueriesContext(connection) as many:
        response = client.get(url)
    assert len(response.context["cl"].result_list) == 50
    assert len(many) == len(few), [q["sql"][:80] for q in many.captured_queries]
    return len(few)
