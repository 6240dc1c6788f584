"""``manage.py pg_queue_requeue --dead-letter [--task T] [--queue Q] [--since ISO |
--since-minutes N] [--yes]``.

Puts dead letters back on their queues with fresh attempts, under their original task ids.
Dry run by default: it prints how many letters match (by queue, task and reason) and changes
nothing until ``--yes``. A letter whose task id is live in the queue again is skipped.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db.models import Count, DateTimeField, ExpressionWrapper, QuerySet, Value
from django.db.models.functions import Now

from pg_queue.models import DeadLetter
from pg_queue.ops.operations import dead_letters_requeue

#: Lines of the per (queue, task, reason) breakdown.
BREAKDOWN_LINES = 20


def parse_since(raw: str) -> dt.datetime:
    """An aware datetime from ISO 8601 text, or ``CommandError`` saying what is wrong."""
    try:
        when = dt.datetime.fromisoformat(raw.strip())
    except ValueError:
        raise CommandError(
            f"--since {raw!r} is not an ISO 8601 date/time (e.g. 2025-06-01T09:00:00+00:00)"
        ) from None
    if when.tzinfo is None:
        raise CommandError(
            f"--since {raw!r} has no time zone; add one (e.g. +00:00 or Z) so it is not ambiguous"
        )
    return when


class Command(BaseCommand):
    help = "Requeue dead letters with fresh attempts (dry run unless --yes)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--dead-letter",
            action="store_true",
            help="requeue from the dead-letter table (required: it is what gets requeued)",
        )
        parser.add_argument("--task", help="only letters of this task name")
        parser.add_argument("--queue", help="only letters of this queue")
        since = parser.add_mutually_exclusive_group()
        since.add_argument("--since", help="only letters failed at or after this ISO time")
        since.add_argument(
            "--since-minutes", type=float, help="only letters failed in the last N minutes"
        )
        parser.add_argument("--yes", action="store_true", help="really requeue them")

    def handle(self, *args: Any, **options: Any) -> None:
        if not options["dead_letter"]:
            raise CommandError("say what to requeue: --dead-letter (the only source so far)")
        letters = self._matching(options)
        ids = list(letters.values_list("id", flat=True))
        described = self._describe(options)
        if not options["yes"]:
            self.stdout.write(f"Dry run: would requeue {len(ids)} dead letter(s){described}.")
            self._breakdown(letters)
            if ids:
                self.stdout.write("Run again with --yes to requeue them.")
            return
        requeued, skipped = dead_letters_requeue(ids)
        self.stdout.write(
            f"Requeued {len(requeued)} dead letter(s){described} with fresh attempts."
        )
        if skipped:
            self.stdout.write(
                f"Skipped {len(skipped)}: their task id is live in the queue again "
                "(requeued earlier)."
            )

    def _matching(self, options: dict[str, Any]) -> QuerySet[DeadLetter]:
        letters = DeadLetter.objects.all()
        for flag, column in (("task", "task_name"), ("queue", "queue_name")):
            value = options[flag]
            if value is not None:
                if not value.strip():
                    raise CommandError(f"--{flag} must not be empty")
                letters = letters.filter(**{column: value.strip()})
        if options["since"] is not None:
            letters = letters.filter(failed_at__gte=parse_since(options["since"]))
        minutes = options["since_minutes"]
        if minutes is not None:
            if not 0 < minutes < float("inf"):
                raise CommandError(f"--since-minutes must be a number > 0, got {minutes:g}")
            cutoff = ExpressionWrapper(
                Now() - Value(dt.timedelta(minutes=minutes)), output_field=DateTimeField()
            )
            letters = letters.filter(failed_at__gte=cutoff)  # the database clock, as everywhere
        return letters.order_by("id")

    def _describe(self, options: dict[str, Any]) -> str:
        parts = []
        if options["queue"]:
            parts.append(f"queue {options['queue'].strip()!r}")
        if options["task"]:
            parts.append(f"task {options['task'].strip()!r}")
        if options["since"]:
            parts.append(f"failed since {options['since']}")
        if options["since_minutes"] is not None:
            parts.append(f"failed in the last {options['since_minutes']:g} min")
        return f" ({', '.join(parts)})" if parts else ""

    def _breakdown(self, letters: QuerySet[DeadLetter]) -> None:
        groups = (
            letters.order_by()
            .values("queue_name", "task_name", "reason")
            .annotate(n=Count("id"))
            .order_by("-n", "queue_name", "task_name")
        )
        rows = list(groups[: BREAKDOWN_LINES + 1])
        for row in rows[:BREAKDOWN_LINES]:
            self.stdout.write(
                f"  {row['n']:>7}  queue={row['queue_name']} task={row['task_name']} "
                f"reason={row['reason']}"
            )
        if len(rows) > BREAKDOWN_LINES:
            self.stdout.write("  ... (more groups)")
