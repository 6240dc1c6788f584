"""The task the test schedules name (never run: its jobs stay queued to be counted)."""

from pg_queue import task


@task(queue="idle")
def noop() -> None:
    return None
