"""The hand-over scheduler as beat runs it, recording each tick it sends (``beat_fire``)."""

from __future__ import annotations

from typing import Any

from django.db import connection

from pg_queue.scheduling.beat import PgQueueBeatScheduler


class RecordingBeatScheduler(PgQueueBeatScheduler):
    def apply_async(self, entry: Any, producer: Any = None, advance: bool = True, **kw: Any):
        with connection.cursor() as cursor:
            cursor.execute(
                "INSERT INTO beat_fire (name, fired_at) VALUES (%s, now())", [entry.name]
            )
        return super().apply_async(entry, producer=producer, advance=advance, **kw)
