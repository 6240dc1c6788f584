"""``manage.py pg_queue_bench``: the standard workloads, measured on this machine."""

from __future__ import annotations

import json
import os
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

try:  # the optional pg-queue[cli] extra: handle() names it when rich is missing
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
    from rich.table import Table
except ImportError as exc:
    _RICH_MISSING: ImportError | None = exc
else:
    _RICH_MISSING = None

from pg_queue.bench import delayed as delayed_bench
from pg_queue.bench import fairness as fairness_bench
from pg_queue.bench import producers as producers_bench
from pg_queue.bench import runner as bench
from pg_queue.bench import workflows as workflow_bench
from pg_queue.core.conf import queue_settings
from pg_queue.management.commands._cli import require_rich

WORKLOADS = (
    "drain",
    "enqueue",
    "latency",
    "rpc",
    "scale",
    "locks",
    "group",
    "fairness",
    "delayed",
    "producers",
    "all",
)
DEFAULT_N = {
    "drain": 20_000,
    "enqueue": 5_000,
    "latency": 1_000,
    "rpc": 500,
    "scale": 1_000_000,
    "locks": 20_000,
    "group": 1_000,
    "fairness": 50_100,
    "delayed": 20_000,
    "producers": 8,  # producer processes, not jobs
}
#: Interleaved repetitions of each variant of the A/B workloads (their figures are medians).
DEFAULT_REPS = 3


class Command(BaseCommand):
    help = (
        "Benchmark pg_queue: drain, enqueue, latency, rpc, scale, locks, group, fairness, "
        "delayed and producers workloads."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--workload", choices=WORKLOADS, default="all")
        parser.add_argument(
            "--n", type=int, default=None, help="jobs (producers: processes; default per workload)"
        )
        parser.add_argument(
            "--reps",
            type=int,
            default=DEFAULT_REPS,
            help="repetitions of each variant of locks, group, fairness, delayed and producers "
            f"(medians; {DEFAULT_REPS})",
        )
        parser.add_argument(
            "--held",
            type=int,
            default=workflow_bench.HELD_BACKLOG,
            help="locks: jobs of the held key queued ahead of the keyless ones "
            f"(default {workflow_bench.HELD_BACKLOG:,})",
        )
        parser.add_argument("--json", action="store_true", help="one JSON line per figure")

    def handle(self, *args: Any, **options: Any) -> None:
        n = options["n"]
        if n is not None and n < 1:
            raise CommandError(f"--n must be >= 1, got {n}")
        reps = options["reps"]
        if reps < 1:
            raise CommandError(f"--reps must be >= 1, got {reps}")
        held = options["held"]
        if held < 1:
            raise CommandError(f"--held must be >= 1, got {held}")
        require_rich(_RICH_MISSING, "pg_queue_bench")
        console = Console(stderr=options["json"])
        conf = queue_settings()
        console.print(
            f"pg_queue bench: worker defaults concurrency={conf.concurrency} "
            f"batch={conf.batch_size} lease={conf.lease_seconds}s notify={conf.notify} "
            f"prepared={conf.prepared_statements}; database "
            f"{os.environ.get('PG_QUEUE_DATABASE_SOURCE', 'DATABASE_URL')}"
        )
        figures: list[bench.Figures] = []
        chosen = WORKLOADS[:-1] if options["workload"] == "all" else (options["workload"],)
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed:,.0f}/{task.total:,.0f}"),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        ) as progress:
            bars: dict[str, TaskID] = {}

            def report(label: str, done: float, total: float) -> None:
                if label not in bars:
                    bars[label] = progress.add_task(label, total=total)
                progress.update(bars[label], completed=done, total=total)

            try:
                for workload in chosen:
                    figures += self._run(workload, n or DEFAULT_N[workload], reps, held, report)
            finally:
                bench.cleanup()
        if options["json"]:
            for f in figures:
                self.stdout.write(json.dumps(f.as_dict()))
        else:
            console.print(_table(figures))

    @staticmethod
    def _run(
        workload: str, n: int, reps: int, held: int, report: bench.Progress
    ) -> list[bench.Figures]:
        if workload == "drain":
            return [
                bench.workload_drain(n, store_results=False, progress=report),
                bench.workload_drain(n, store_results=True, progress=report),
            ]
        if workload == "enqueue":
            return bench.workload_enqueue(n, progress=report)
        if workload == "latency":
            return [
                bench.workload_latency(n, notify=True, progress=report),
                bench.workload_latency(n, notify=False, progress=report),
            ]
        if workload == "rpc":
            return [
                bench.workload_rpc(n, notify=True, progress=report),
                bench.workload_rpc(n, notify=False, progress=report),
            ]
        if workload == "locks":
            return workflow_bench.workload_locks(n, reps, progress=report, held_backlog=held)
        if workload == "group":
            return workflow_bench.workload_group(n, reps, progress=report)
        if workload == "fairness":
            return fairness_bench.workload_fairness(n, reps, progress=report)
        if workload == "delayed":
            return delayed_bench.workload_delayed(n, reps, progress=report)
        if workload == "producers":
            return producers_bench.workload_producers(n, reps, progress=report)
        return bench.workload_scale(n, min(20_000, max(1, n // 10)), progress=report)


def _table(figures: list[bench.Figures]) -> Table:
    table = Table(title="pg_queue benchmark")
    for column in ("workload", "variant", "n", "jobs/s", "p50 ms", "p95 ms", "p99 ms", "notes"):
        table.add_column(column, justify="left" if column in ("workload", "variant") else "right")

    def fmt(value: float | None, spec: str) -> str:
        return "" if value is None else format(value, spec)

    for f in figures:
        table.add_row(
            f.workload,
            f.variant,
            f"{f.n:,}",
            fmt(f.jobs_per_s, ",.0f"),
            fmt(f.p50_ms, ".2f"),
            fmt(f.p95_ms, ".2f"),
            fmt(f.p99_ms, ".2f"),
            " ".join(f"{k}={v}" for k, v in f.extra.items()),
        )
    return table
