"""``manage.py pg_queue_purge --queue Q [--state ready|delayed|queued|claimed|all] [--yes]``.

Deletes a queue's jobs. Dry run by default: it prints how many jobs would go and
changes nothing until ``--yes``. A purge throws jobs away: no outcome, no ``on_error``
callback (use ``pg_queue_cancel`` for that). A purged running job still runs to its end; its
ack then matches nothing.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from pg_queue.models import Job
from pg_queue.ops.operations import PURGE_STATES, jobs_purge, jobs_purge_count

#: What each --state covers, in words (for the report).
STATE_WORDS = {
    "ready": "ready (due now)",
    "delayed": "delayed",
    "queued": "queued (due or delayed, not running)",
    "claimed": "running (claimed)",
    "all": "",
}


class Command(BaseCommand):
    help = "Delete a queue's jobs (dry run unless --yes)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--queue", required=True, help="the queue to purge")
        parser.add_argument(
            "--state",
            choices=list(PURGE_STATES),
            default="queued",
            help="which jobs: ready (due), delayed, queued (both; the default), "
            "claimed (running), all",
        )
        parser.add_argument("--yes", action="store_true", help="really delete them")

    def handle(self, *args: Any, **options: Any) -> None:
        queue: str = options["queue"].strip()
        state: str = options["state"]
        if not queue:
            raise CommandError("--queue must name a queue, got an empty string")
        count = jobs_purge_count(queue, state)
        what = f"{STATE_WORDS[state]} job(s) from queue {queue!r}".strip()
        if not options["yes"]:
            self.stdout.write(f"Dry run: would delete {count} {what}.")
            if count:
                self.stdout.write("Run again with --yes to delete them.")
            elif not Job.objects.filter(queue_name=queue).exists():
                self.stdout.write(f"Queue {queue!r} has no jobs at all (a typo?).")
            return
        deleted = jobs_purge(queue, state)
        self.stdout.write(f"Deleted {deleted} {what}.")
