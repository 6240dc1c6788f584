"""``manage.py pg_queue_demo``: a few thousand jobs through a real worker, then the numbers.

What it shows, end to end, on whatever PostgreSQL the project uses:

1. ``enqueue_many`` puts every job in with one transaction (COPY under the hood);
2. a real ``run_pg_worker --burst`` subprocess drains them with threads, retries the flaky ones
   after a short backoff and dead-letters the hopeless ones;
3. the outcome of every job is queryable in SQL: the summary (latency percentiles included) is
   computed by the database from ``pg_task_result`` and ``pg_queue_dead_letter``.

The demo only ever touches rows of its own queue ("demo"), so it is safe to run again and again
next to other work. Every wait is bounded by ``--timeout``; on timeout or a worker crash the
worker is stopped and the tail of its log is shown.

Task names from the database and paths reach rich as plain text (``Text`` or ``escape``), never
as markup: a ``[/]`` in either cannot crash the demo.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connection, transaction

try:  # the optional pg-queue[cli] extra: handle() names it when rich is missing
    from rich.console import Console
    from rich.markup import escape
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )
    from rich.table import Table
    from rich.text import Text
except ImportError as exc:
    _RICH_MISSING: ImportError | None = exc
else:
    _RICH_MISSING = None

from pg_queue.core.options import JobSpec
from pg_queue.db import sql_ops
from pg_queue.management.commands._cli import require_rich
from pg_queue.producer import enqueue_many, job

#: Module whose tasks the demo enqueues; the worker imports it with ``--include``.
DEFAULT_TASKS_MODULE = "pg_queue.demo.tasks"
#: The queue the demo tasks use; the only queue whose rows the demo clears and counts.
DEMO_QUEUE = "demo"
DEFAULT_JOBS = 3000
DEFAULT_CONCURRENCY = 8
#: The whole demo (enqueue, drain, worker exit) gives up after this many seconds.
DEFAULT_TIMEOUT = 120.0
#: Seconds between two progress polls of the result tables.
POLL_INTERVAL = 0.2
#: Seconds a worker gets to exit after SIGTERM before it is killed.
STOP_GRACE = 5.0
#: Worker log lines shown when something goes wrong.
LOG_TAIL_LINES = 25

#: Printed under the summary: how to read the latency figures.
LATENCY_NOTE = (
    "All jobs are enqueued before the worker starts, so latency is mostly backlog wait; "
    "a retried job's start is its last attempt."
)
#: Out of every 20 jobs: 12 fast, 4 slow, 3 flaky (then fine), 1 doomed (dead-lettered).
MIX_CYCLE = 20
FAST_UNTIL, SLOW_UNTIL, FLAKY_UNTIL = 12, 16, 19


@dataclass(frozen=True, kw_only=True)
class Plan:
    """The jobs to enqueue and the outcome they must produce."""

    specs: list[JobSpec]
    counts: dict[str, int]  # kind -> jobs
    expected_succeeded: int
    expected_failed: int
    expected_retries: int


@dataclass(frozen=True, kw_only=True)
class Summary:
    done: int
    succeeded: int
    failed: int
    retries: int
    p50_ms: float | None
    p99_ms: float | None
    drain_seconds: float | None
    first_start_ms: float | None
    dead_letters: int
    left_in_queue: int


class DemoFailed(CommandError):
    """The demo could not finish; the message says why and shows the worker log's tail."""


class Command(BaseCommand):
    help = (
        "Enqueue a few thousand demo jobs (fast, slow, flaky, doomed), drain them with a real "
        "run_pg_worker subprocess behind a progress bar, and print a summary."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--jobs", type=int, default=DEFAULT_JOBS, help=f"jobs to enqueue ({DEFAULT_JOBS})"
        )
        parser.add_argument(
            "--concurrency",
            type=int,
            default=DEFAULT_CONCURRENCY,
            help=f"worker threads ({DEFAULT_CONCURRENCY})",
        )
        parser.add_argument(
            "--timeout",
            type=float,
            default=DEFAULT_TIMEOUT,
            help=f"give up after this many seconds ({DEFAULT_TIMEOUT:g})",
        )
        parser.add_argument(
            "--tasks-module",
            default=DEFAULT_TASKS_MODULE,
            help=f"module defining echo, sleep_ms, flaky, doomed ({DEFAULT_TASKS_MODULE})",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        require_rich(_RICH_MISSING, "pg_queue_demo")
        jobs: int = options["jobs"]
        concurrency: int = options["concurrency"]
        timeout: float = options["timeout"]
        module: str = options["tasks_module"]
        if jobs < 1:
            raise CommandError(f"--jobs must be >= 1, got {jobs}")
        if concurrency < 1:
            raise CommandError(f"--concurrency must be >= 1, got {concurrency}")
        if timeout <= 0:
            raise CommandError(f"--timeout must be > 0 seconds, got {timeout:g}")
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise CommandError(f"--tasks-module: cannot import {module!r}: {exc}") from None

        # Django's OutputWrapper appends a newline to every write; rich writes fragments.
        console = Console(file=getattr(self.stdout, "_out", sys.stdout), highlight=False)
        console.print(f"database: {escape(_describe_database())}", soft_wrap=True)
        deadline = time.monotonic() + timeout

        _clear_demo_rows()
        plan = _plan(jobs, module)
        started = time.monotonic()
        with transaction.atomic():
            enqueue_many(plan.specs)
        enqueue_seconds = time.monotonic() - started
        mix = ", ".join(f"{n} {kind}" for kind, n in plan.counts.items())
        console.print(
            f"enqueued {jobs} jobs ({mix}) with enqueue_many in one transaction "
            f"in {enqueue_seconds * 1000:.0f} ms",
            soft_wrap=True,
        )

        log_dir = Path(tempfile.mkdtemp(prefix="pg_queue_demo_"))
        log_path = log_dir / "worker.log"
        command = _worker_command(module, concurrency)
        console.print(f"worker: {escape(' '.join(command[1:]))}", soft_wrap=True)
        console.print(f"worker log: {escape(str(log_path))}", soft_wrap=True)
        wall_start = time.monotonic()
        with log_path.open("wb") as log:
            worker = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        try:
            self._watch(console, worker, jobs, deadline, log_path)
            try:
                code = worker.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                raise DemoFailed(
                    _failure(
                        f"every job finished but the worker did not exit within {timeout:g}s",
                        log_path,
                    )
                ) from None
            if code != 0:
                raise DemoFailed(_failure(f"the worker exited with code {code}", log_path))
        finally:
            _stop(worker)
        wall_seconds = time.monotonic() - wall_start

        summary = _summary()
        console.print(_summary_table(summary, plan, wall_seconds, enqueue_seconds, concurrency))
        console.print(LATENCY_NOTE, style="dim", soft_wrap=True)
        console.print(_per_task_table(module))
        problems = _problems(summary, plan, jobs)
        if problems:
            raise DemoFailed(
                "outcomes differ from what the jobs must produce: "
                + "; ".join(problems)
                + f" (worker log: {log_path})"
            )

    def _watch(
        self,
        console: Console,
        worker: subprocess.Popen[bytes],
        jobs: int,
        deadline: float,
        log_path: Path,
    ) -> None:
        """Show progress until every job has an outcome; raise if the worker dies or time is up."""
        columns = (
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[detail]}"),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=console) as progress:
            bar = progress.add_task("draining", total=jobs, detail="")
            while True:
                finished, dead = _finished_count()
                rate = finished / max(1e-6, progress.tasks[0].elapsed or 0.0)
                progress.update(
                    bar, completed=finished, detail=f"dead-lettered {dead}  {rate:,.0f}/s"
                )
                if finished >= jobs:
                    return
                if worker.poll() is not None:
                    finished, _ = _finished_count()
                    if finished >= jobs:
                        progress.update(bar, completed=finished)
                        return
                    raise DemoFailed(
                        _failure(
                            f"the worker exited (code {worker.returncode}) with "
                            f"{jobs - finished} of {jobs} jobs unfinished",
                            log_path,
                        )
                    )
                if time.monotonic() >= deadline:
                    raise DemoFailed(
                        _failure(
                            f"timed out: {finished} of {jobs} jobs finished before the deadline; "
                            "worker stopped",
                            log_path,
                        )
                    )
                time.sleep(POLL_INTERVAL)


def _describe_database() -> str:
    """One line: where the database came from, and where it is (never the password)."""
    source = os.environ.get("PG_QUEUE_DATABASE_SOURCE") or "DATABASE_URL"
    db = settings.DATABASES["default"]
    host = str(db.get("HOST") or "localhost")
    user = f"{db['USER']}@" if db.get("USER") else ""
    if host.startswith("/"):
        return f"{source} -> database {db.get('NAME', '')!r} as {user}socket {host}"
    port = f":{db['PORT']}" if db.get("PORT") else ""
    return f"{source} -> {user}{host}{port}/{db.get('NAME', '')}"


def _clear_demo_rows() -> None:
    """Remove earlier demo runs' rows: the demo queue's jobs, results and dead letters only."""
    with transaction.atomic(), connection.cursor() as cursor:
        for statement in sql_ops.QUEUE_CLEAR:
            cursor.execute(statement, {"queue": DEMO_QUEUE})


def _plan(jobs: int, module: str) -> Plan:
    """Interleave the four kinds so that progress shows all of them at once."""
    specs: list[JobSpec] = []
    counts = {"fast": 0, "slow": 0, "flaky": 0, "doomed": 0}
    retries = 0
    for i in range(jobs):
        slot = i % MIX_CYCLE
        if slot < FAST_UNTIL:
            specs.append(job(f"{module}.echo", [i]))
            counts["fast"] += 1
        elif slot < SLOW_UNTIL:
            specs.append(job(f"{module}.sleep_ms", [1 + i % 5]))
            counts["slow"] += 1
        elif slot < FLAKY_UNTIL:
            fail_times = 1 + i % 2  # fails once or twice, succeeds within max_attempts=3
            specs.append(job(f"{module}.flaky", [fail_times]))
            counts["flaky"] += 1
            retries += fail_times
        else:
            specs.append(job(f"{module}.doomed", ["demo: this input can never succeed"]))
            counts["doomed"] += 1
    doomed_attempts = _max_attempts(f"{module}.doomed")
    retries += counts["doomed"] * (doomed_attempts - 1)
    return Plan(
        specs=specs,
        counts=counts,
        expected_succeeded=jobs - counts["doomed"],
        expected_failed=counts["doomed"],
        expected_retries=retries,
    )


def _max_attempts(task_name: str) -> int:
    from pg_queue.registry import native_task

    found = native_task(task_name)
    if found is None:
        raise CommandError(f"the demo needs a task named {task_name!r}; it is not registered")
    return found.max_attempts


def _worker_command(module: str, concurrency: int) -> list[str]:
    """The same ``run_pg_worker`` an operator would start, on the demo queue, in burst mode."""
    manage = Path(sys.argv[0])
    entry = (
        [str(manage.resolve())]
        if manage.name == "manage.py" and manage.is_file()
        else ["-m", "django"]
    )
    return [
        sys.executable,
        *entry,
        "run_pg_worker",
        "--queues",
        DEMO_QUEUE,
        "--burst",
        "--concurrency",
        str(concurrency),
        "--include",
        module,
        "--shutdown-grace",
        str(STOP_GRACE),
    ]


def _finished_count() -> tuple[int, int]:
    """(jobs with an outcome, dead letters) for the demo queue."""
    with connection.cursor() as cursor:
        cursor.execute(sql_ops.DEMO_FINISHED_COUNT, {"queue": DEMO_QUEUE})
        row = cursor.fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def _summary() -> Summary:
    with connection.cursor() as cursor:
        cursor.execute(sql_ops.DEMO_SUMMARY, {"queue": DEMO_QUEUE})
        row = cursor.fetchone()
    assert row is not None
    return Summary(
        done=row[0],
        succeeded=row[1],
        failed=row[2],
        retries=int(row[3]),
        p50_ms=row[4],
        p99_ms=row[5],
        drain_seconds=row[6],
        first_start_ms=row[7],
        dead_letters=row[8],
        left_in_queue=row[9],
    )


def _summary_table(
    s: Summary, plan: Plan, wall_seconds: float, enqueue_seconds: float, concurrency: int
) -> Table:
    table = Table(title=f"pg_queue demo: queue {DEMO_QUEUE!r}, concurrency {concurrency}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("expected", justify="right")
    total = len(plan.specs)
    table.add_row("jobs done", f"{s.done:,}", f"{total:,}")
    table.add_row(
        "succeeded / failed",
        f"{s.succeeded:,} / {s.failed:,}",
        f"{plan.expected_succeeded:,} / {plan.expected_failed:,}",
    )
    table.add_row("retries (sum of attempts - 1)", f"{s.retries:,}", f"{plan.expected_retries:,}")
    table.add_row("dead letters", f"{s.dead_letters:,}", f"{plan.expected_failed:,}")
    table.add_row("left in queue", f"{s.left_in_queue:,}", "0")
    table.add_row("enqueue (enqueue_many, 1 transaction)", f"{enqueue_seconds * 1000:,.0f} ms", "")
    table.add_row("wall time (worker start to exit)", f"{wall_seconds:.2f} s", "")
    table.add_row("throughput (jobs / wall time)", f"{s.done / wall_seconds:,.0f} jobs/s", "")
    if s.drain_seconds:
        table.add_row(
            "throughput (first start to last finish)",
            f"{s.done / s.drain_seconds:,.0f} jobs/s",
            "",
        )
    table.add_row("first job started after enqueue", _ms(s.first_start_ms), "")
    table.add_row("enqueue-to-start latency p50", _ms(s.p50_ms), "")
    table.add_row("enqueue-to-start latency p99", _ms(s.p99_ms), "")
    return table


def _per_task_table(module: str) -> Table:
    table = Table(title="per task")
    table.add_column("task")
    for name in ("jobs", "succeeded", "failed", "retries"):
        table.add_column(name, justify="right")
    with connection.cursor() as cursor:
        cursor.execute(sql_ops.DEMO_PER_TASK, {"queue": DEMO_QUEUE})
        for name, jobs, ok, failed, retries in cursor.fetchall():
            short = Text(name.removeprefix(f"{module}."))  # a name, never markup
            table.add_row(short, f"{jobs:,}", f"{ok:,}", f"{failed:,}", f"{int(retries):,}")
    return table


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f} ms"


def _problems(s: Summary, plan: Plan, jobs: int) -> list[str]:
    problems = []
    if s.done != jobs:
        problems.append(f"{s.done} outcomes for {jobs} jobs")
    if (s.succeeded, s.failed) != (plan.expected_succeeded, plan.expected_failed):
        problems.append(
            f"succeeded/failed {s.succeeded}/{s.failed}, expected "
            f"{plan.expected_succeeded}/{plan.expected_failed}"
        )
    if s.dead_letters != plan.expected_failed:
        problems.append(f"{s.dead_letters} dead letters, expected {plan.expected_failed}")
    if s.retries != plan.expected_retries:
        problems.append(f"{s.retries} retries, expected {plan.expected_retries}")
    if s.left_in_queue:
        problems.append(f"{s.left_in_queue} jobs still in the demo queue")
    return problems


def _stop(worker: subprocess.Popen[bytes]) -> None:
    """Make sure the worker is gone: SIGTERM (graceful), then SIGKILL after a grace period."""
    if worker.poll() is not None:
        return
    worker.terminate()
    try:
        worker.wait(timeout=STOP_GRACE)
    except subprocess.TimeoutExpired:
        worker.kill()
        worker.wait(timeout=STOP_GRACE)


def _failure(reason: str, log_path: Path) -> str:
    try:
        lines = log_path.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
    except OSError as exc:
        lines = [f"(cannot read the worker log: {exc})"]
    tail = "\n".join(f"  | {line}" for line in lines) or "  | (empty)"
    return f"{reason}.\nworker log ({log_path}), last {LOG_TAIL_LINES} lines:\n{tail}"
