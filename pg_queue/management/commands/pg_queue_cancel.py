"""``manage.py pg_queue_cancel TASK_ID... [--by NAME]``: cancel jobs by task id.

As in the admin: a queued job is removed with a ``cancelled`` outcome and its ``on_error``
callback is enqueued with ``[task_id, "cancelled by <NAME>", *args]``, in one transaction; a
running job gets ``cancel_requested`` and its worker stops it at the next safe point. Prints
one line per id (cancelled / cancel requested / not found). Exits non-zero when an id is not a
UUID (before anything changes) or when some id was not found.
"""

from __future__ import annotations

import getpass
import uuid
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from pg_queue.ops.operations import jobs_cancel


def default_actor() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no login name in a bare container
        user = "unknown user"
    return f"{user} via pg_queue_cancel"


class Command(BaseCommand):
    help = "Cancel queued or running jobs by task id."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("task_ids", nargs="+", metavar="TASK_ID", help="task ids (UUIDs)")
        parser.add_argument(
            "--by",
            default=None,
            help="who cancels, for the outcome and on_error text (default: your login name)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        task_ids: list[uuid.UUID] = []
        for raw in options["task_ids"]:
            try:
                task_ids.append(uuid.UUID(raw.strip()))
            except ValueError:
                raise CommandError(
                    f"{raw!r} is not a task id (a UUID); nothing was cancelled"
                ) from None
        actor = (options["by"] or "").strip() or default_actor()
        report = jobs_cancel(task_ids=task_ids, actor=actor)
        cancelled = {ref.task_id: ref for ref in report.cancelled}
        requested = {ref.task_id: ref for ref in report.requested}
        for task_id in dict.fromkeys(task_ids):
            if task_id in cancelled:
                ref = cancelled[task_id]
                line = f"cancelled (queued {ref.task_name} on {ref.queue_name}; removed)"
            elif task_id in requested:
                ref = requested[task_id]
                line = (
                    f"cancel requested (running {ref.task_name} on {ref.queue_name}; "
                    "its worker stops it at the next safe point)"
                )
            else:
                line = "not found (not queued or running: finished, unknown or expired)"
            self.stdout.write(f"{task_id}  {line}")
        summary = (
            f"{len(report.cancelled)} cancelled, {len(report.requested)} cancel requested, "
            f"{len(report.not_found)} not found"
        )
        if report.continuations:
            summary += f"; {report.continuations} on_error callback(s) enqueued"
        self.stdout.write(summary)
        if report.continuation_error:
            self.stderr.write(f"on_error callbacks not enqueued: {report.continuation_error}")
        if report.not_found:
            raise CommandError(f"{len(report.not_found)} of {len(task_ids)} task id(s) not found")
