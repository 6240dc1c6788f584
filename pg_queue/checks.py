"""Misconfiguration reported by ``manage.py check`` instead of at 3 a.m. in a worker log."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, Warning, register
from django.db import connections

from pg_queue.conf import queue_settings, unknown_keys


@register()
def check_pg_queue(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    messages: list[CheckMessage] = []
    raw = getattr(settings, "PG_QUEUE", {}) or {}
    if not isinstance(raw, dict):
        return [Error("PG_QUEUE must be a dict", id="pg_queue.E001")]
    for key in unknown_keys(raw):
        messages.append(
            Warning(f"PG_QUEUE has an unknown key {key!r}; it is ignored", id="pg_queue.W001")
        )
    if connections["default"].vendor != "postgresql":
        messages.append(
            Error("pg_queue needs PostgreSQL as the default database", id="pg_queue.E002")
        )
    conf = queue_settings()
    if conf.lease_seconds <= 0:
        messages.append(Error("PG_QUEUE['LEASE_SECONDS'] must be > 0", id="pg_queue.E003"))
    if conf.concurrency < 1 or conf.batch_size < 1:
        messages.append(
            Error("PG_QUEUE CONCURRENCY and BATCH_SIZE must be >= 1", id="pg_queue.E004")
        )
    if conf.max_attempts < 1:
        messages.append(Error("PG_QUEUE['MAX_ATTEMPTS'] must be >= 1", id="pg_queue.E005"))
    if conf.poll_interval_min <= 0 or conf.poll_interval_max < conf.poll_interval_min:
        messages.append(
            Error(
                "PG_QUEUE POLL_INTERVAL_MIN must be > 0 and <= POLL_INTERVAL_MAX",
                id="pg_queue.E006",
            )
        )
    return messages
