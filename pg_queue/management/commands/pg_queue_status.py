"""``manage.py pg_queue_status [--json] [--watch SECONDS [--iterations N]]``: the queues overview.

The same snapshot as the admin's queues overview (two aggregate statements, whatever the number
of queues): per queue ready / delayed / running / lease-expired counts, the oldest due job's
wait, jobs finished and failed in the last 5 and 60 minutes, dead letters and live workers; then
every worker; then the held resource locks and the running groups and chains (the oldest
``SHOWN`` of each and how many more, one statement per section); then what is stuck, in words.
``--watch`` redraws until Ctrl-C (exit 0) or until ``--iterations`` snapshots were shown.

Names from the database (queues, tasks, workers, hosts, states, lock keys and holders) are
printed as they are: every one goes to rich as ``Text``, never as a markup string, so ``[/]``
cannot crash the command and ``[bold]x[/bold]`` or ``:smile:`` are not rewritten.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

try:  # the optional pg-queue[cli] extra: handle() names it when rich is missing
    from rich import box
    from rich.console import Console, Group
    from rich.live import Live
    from rich.table import Table
    from rich.text import Text
except ImportError as exc:
    _RICH_MISSING: ImportError | None = exc
else:
    _RICH_MISSING = None

from pg_queue.management.commands._cli import lock_table, render_text, require_rich
from pg_queue.ops.overview import (
    STUCK_READY_SECONDS,
    Overview,
    QueueStats,
    format_age,
    queue_overview,
)
from pg_queue.ops.workflow_overview import (
    WorkflowOverview,
    format_expiry,
    workflow_overview,
)

STUCK = "bold red"


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What one look shows: the queues overview and the workflow sections."""

    queues: Overview
    workflows: WorkflowOverview

    def to_json(self) -> dict[str, Any]:
        return {**self.queues.to_json(), **self.workflows.to_json()}


class Command(BaseCommand):
    help = "Show every queue's counts, the workers, held locks, running groups, what is stuck."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
        parser.add_argument(
            "--watch",
            type=float,
            default=None,
            metavar="SECONDS",
            help="refresh every SECONDS until Ctrl-C",
        )
        parser.add_argument(
            "--iterations",
            type=int,
            default=None,
            metavar="N",
            help="with --watch: stop after N snapshots",
        )
        parser.add_argument(
            "--stuck-ready-seconds",
            type=float,
            default=STUCK_READY_SECONDS,
            metavar="S",
            help=f"a due job waiting longer is stuck (default {STUCK_READY_SECONDS:g})",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        watch: float | None = options["watch"]
        iterations: int | None = options["iterations"]
        if watch is not None and not 0 < watch <= 3600:
            raise CommandError(f"--watch must be between 0 and 3600 seconds, got {watch:g}")
        if iterations is not None:
            if iterations < 1:
                raise CommandError(f"--iterations must be >= 1, got {iterations}")
            if watch is None:
                raise CommandError("--iterations needs --watch")
        if options["stuck_ready_seconds"] <= 0:
            raise CommandError(
                f"--stuck-ready-seconds must be > 0, got {options['stuck_ready_seconds']:g}"
            )
        if not options["json"]:
            require_rich(_RICH_MISSING, "pg_queue_status (use --json without it)")
        out = getattr(self.stdout, "_out", sys.stdout)
        try:
            if watch is None:
                self._show_once(options)
            elif not options["json"] and out.isatty():
                self._watch_live(out, watch, iterations, options)
            else:
                self._watch_plain(watch, iterations, options)
        except KeyboardInterrupt:
            self.stdout.write("")  # Ctrl-C ends a watch normally (exit 0)

    def _snapshot(self, options: dict[str, Any]) -> Snapshot:
        return Snapshot(
            queue_overview(stuck_ready_seconds=options["stuck_ready_seconds"]),
            workflow_overview(),
        )

    def _show_once(self, options: dict[str, Any]) -> None:
        snapshot = self._snapshot(options)
        if options["json"]:
            self.stdout.write(json.dumps(snapshot.to_json(), indent=2))
        else:
            self.stdout.write(_render_text(snapshot), ending="")

    def _watch_plain(self, every: float, iterations: int | None, options: dict[str, Any]) -> None:
        shown = 0
        while True:
            snapshot = self._snapshot(options)
            shown += 1
            if options["json"]:  # one document per line
                self.stdout.write(json.dumps(snapshot.to_json()))
            else:
                self.stdout.write(_render_text(snapshot), ending="")
            self.stdout.flush()
            if iterations is not None and shown >= iterations:
                return
            time.sleep(every)

    def _watch_live(
        self, out: Any, every: float, iterations: int | None, options: dict[str, Any]
    ) -> None:
        console = Console(file=out, highlight=False)
        shown = 0
        with Live(console=console, auto_refresh=False, screen=False) as live:
            while True:
                snapshot = self._snapshot(options)
                shown += 1
                live.update(
                    Group(
                        *_renderables(snapshot),
                        Text(f"refreshing every {every:g} s; Ctrl-C to stop", style="dim"),
                    ),
                    refresh=True,
                )
                if iterations is not None and shown >= iterations:
                    return
                time.sleep(every)


def _render_text(snapshot: Snapshot) -> str:
    """The tables as text: coloured on a terminal, plain (with words for red) otherwise."""
    return render_text(_renderables(snapshot))


def _cell(value: str, stuck: bool) -> Text:
    """A value as plain text (never markup), marked when stuck."""
    return Text(f"{value} !" if stuck else value, style=STUCK if stuck else "")


def _renderables(snapshot: Snapshot) -> list[Any]:
    overview = snapshot.queues
    taken = overview.taken_at.strftime("%Y-%m-%d %H:%M:%S %Z")
    queues = Table(
        title=Text(f"pg_queue queues at {taken}"),
        box=box.SIMPLE_HEAVY,
        title_justify="left",
        show_footer=bool(overview.queues),
    )
    total = overview.totals
    columns: list[tuple[str, str, Any]] = [
        ("queue", "all", None),
        ("ready", str(total.ready), None),
        ("oldest ready", format_age(total.oldest_ready_seconds), None),
        ("delayed", str(total.delayed), None),
        ("running", str(total.running), None),
        ("lease expired", str(total.lease_expired), None),
        ("done 5m", str(total.finished_5m), None),
        ("failed 5m", str(total.failed_5m), None),
        ("done 60m", str(total.finished_60m), None),
        ("failed 60m", str(total.failed_60m), None),
        ("dead", str(total.dead_letters), None),
        ("workers", str(total.workers), None),
    ]
    for i, (header, footer, _) in enumerate(columns):
        queues.add_column(header, footer=footer, justify="left" if i == 0 else "right")
    for q in overview.queues:
        queues.add_row(*_queue_cells(q))
    workers = Table(title="workers", box=box.SIMPLE_HEAVY, title_justify="left")
    for header in ("worker", "host", "pid", "queues", "conc.", "state", "heartbeat", "in flight"):
        workers.add_column(header, justify="right" if header in ("pid", "conc.") else "left")
    for w in overview.workers:
        workers.add_row(
            _cell(w.worker_id, w.stale),
            Text(w.hostname),
            str(w.pid),
            Text(", ".join(w.queues)),
            str(w.concurrency),
            Text(w.state),
            _cell(f"{format_age(w.heartbeat_age_seconds)} ago", w.stale),
            str(w.in_flight),
        )
    items: list[Any] = [queues if overview.queues else Text("No queues: nothing queued yet.")]
    items.append(workers if overview.workers else Text("No worker is registered."))
    items += _workflow_renderables(snapshot.workflows)
    items.append(_problems(overview))
    return items


def _workflow_renderables(flows: WorkflowOverview) -> list[Any]:
    """The held locks and the running groups/chains: a table each, or a line saying none."""
    items: list[Any] = []
    if flows.locks:
        locks = lock_table(
            f"resource locks ({flows.locks_total} held)",
            (
                (
                    lock.resource_key,
                    lock.holder_kind,
                    lock.holder_id,
                    lock.task_id,
                    format_age(lock.age_seconds),
                    format_expiry(lock.expires_in_seconds),
                    False,
                )
                for lock in flows.locks
            ),
        )
        items.append(locks)
        if flows.locks_more:
            items.append(Text(f"  ... and {flows.locks_more} more held lock(s)"))
    else:
        items.append(Text("No resource lock is held."))
    if flows.groups:
        groups = Table(
            title=Text(f"running groups and chains ({flows.groups_total})"),
            box=box.SIMPLE_HEAVY,
            title_justify="left",
        )
        for header in ("id", "kind", "finished", "failed", "age"):
            groups.add_column(header, justify="left" if header in ("id", "kind") else "right")
        for g in flows.groups:
            groups.add_row(
                str(g.group_id),
                Text(g.kind),
                f"{g.finished}/{g.total}",
                str(g.failed),
                format_age(g.age_seconds),
            )
        items.append(groups)
        if flows.groups_more:
            items.append(Text(f"  ... and {flows.groups_more} more running"))
    else:
        items.append(Text("No group or chain is running."))
    return items


def _queue_cells(q: QueueStats) -> list[Any]:
    return [
        _cell(q.queue, q.stuck),
        str(q.ready),
        _cell(format_age(q.oldest_ready_seconds), q.ready_stuck),
        str(q.delayed),
        str(q.running),
        _cell(str(q.lease_expired), q.lease_stuck),
        str(q.finished_5m),
        str(q.failed_5m),
        str(q.finished_60m),
        str(q.failed_60m),
        str(q.dead_letters),
        _cell(str(q.workers), q.no_workers),
    ]


def _problems(overview: Overview) -> Text:
    lines: list[str] = []
    for q in overview.queues:
        if q.ready_stuck:
            lines.append(
                f"{q.queue}: oldest due job has waited {format_age(q.oldest_ready_seconds)} "
                f"(more than {format_age(overview.stuck_ready_seconds)})"
            )
        if q.lease_stuck:
            lines.append(
                f"{q.queue}: {q.lease_expired} job(s) running past their lease "
                "(worker died or stalled; any worker's re-arm will retry them)"
            )
        if q.no_workers:
            lines.append(f"{q.queue}: jobs are due or running but no live worker listens")
    for w in overview.workers:
        if w.stale:
            lines.append(
                f"worker {w.worker_id} on {w.hostname}: no heartbeat for "
                f"{format_age(w.heartbeat_age_seconds)} ({w.in_flight} job(s) in flight)"
            )
    if not lines:
        return Text("Nothing stuck.", style="green")
    return Text("Stuck (! above):\n" + "\n".join(f"  - {line}" for line in lines), style=STUCK)
