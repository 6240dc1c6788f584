"""``manage.py run_pg_worker``: drain PostgreSQL queues with the very tasks Celery runs."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from types import FrameType
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connections

from pg_queue.core.conf import queue_settings
from pg_queue.registry import celery_app, import_task_modules, native_tasks
from pg_queue.worker import Worker, parse_queues
from pg_queue.worker.core import DEFAULT_SHUTDOWN_GRACE, EXIT_TIME_LIMIT
from pg_queue.worker.health import HealthServer
from pg_queue.worker.logconfig import LEVELS, configure_worker_logging, database_label
from pg_queue.worker.supervisor import Supervisor

logger = logging.getLogger("pg_queue.worker")


class Command(BaseCommand):
    help = "Run a pg_queue worker: claim jobs from PostgreSQL and run the registered tasks."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--queues",
            default="",
            help="comma list of queues, optional weights: 'default=3,email=1' (default: default)",
        )
        parser.add_argument("--concurrency", type=int, default=None, help="task threads")
        parser.add_argument("--batch-size", type=int, default=None, help="most rows per claim")
        parser.add_argument(
            "--burst", action="store_true", help="exit 0 once the queues are drained"
        )
        parser.add_argument("--max-tasks", type=int, default=None, help="exit after N jobs")
        parser.add_argument(
            "--include",
            action="append",
            default=[],
            metavar="MODULE",
            help="import extra task modules (repeatable)",
        )
        parser.add_argument("--worker-id", default=None, help="unique id (default: generated)")
        parser.add_argument(
            "--shutdown-grace",
            type=float,
            default=DEFAULT_SHUTDOWN_GRACE,
            help="seconds in-flight jobs get after the first SIGTERM/SIGINT",
        )
        parser.add_argument(
            "--time-limit",
            type=float,
            default=None,
            help="default per-task time limit in seconds (a task's own time_limit wins)",
        )
        parser.add_argument(
            "--processes",
            type=int,
            default=1,
            help="child worker processes under a supervisor (each with --concurrency threads)",
        )
        parser.add_argument(
            "--health-port", type=int, default=None, help="serve /healthz and /metrics on PORT"
        )
        parser.add_argument("--health-host", default="127.0.0.1", help="address for --health-port")
        parser.add_argument(
            "--no-notify",
            action="store_true",
            help="no LISTEN/NOTIFY wake-ups, poll only (e.g. behind PgBouncer)",
        )
        parser.add_argument(
            "--loglevel",
            choices=LEVELS,
            default=None,
            help="log level of pg_queue's console log (default info); a console log is set up "
            "only if the project configured no handler for the pg_queue loggers",
        )
        parser.add_argument(
            "--scheduler",
            action="store_true",
            default=None,
            help="also run the periodic-task scheduler (one leader among such workers fires; "
            "PG_QUEUE['SCHEDULER'] turns it on for every worker)",
        )
        parser.add_argument("--child-health-file", default=None, help=argparse.SUPPRESS)

    def handle(self, *args: Any, **options: Any) -> None:
        configure_worker_logging(options["loglevel"])
        queues = self._validate(options)
        if options["processes"] > 1:
            self._supervise(options)
            return
        try:
            modules = import_task_modules(options["include"])
        except ImportError as exc:
            raise CommandError(f"cannot import task module: {exc}") from None
        app = celery_app()
        celery_count = len([n for n in app.tasks if not n.startswith("celery.")]) if app else 0
        banner = (
            f"tasks={len(native_tasks())} celery_tasks={celery_count} "
            f"modules={','.join(modules) or '-'} "
            f"database={database_label(connections['default'].settings_dict)}"
        )
        worker = Worker(
            queues=queues,
            concurrency=options["concurrency"],
            batch_size=options["batch_size"],
            burst=options["burst"],
            max_tasks=options["max_tasks"],
            worker_id=options["worker_id"],
            shutdown_grace=options["shutdown_grace"],
            time_limit=options["time_limit"],
            exit_on_time_limit=options["child_health_file"] is not None,
            health_file=options["child_health_file"],
            notify=False if options["no_notify"] else None,
            banner=banner,
            scheduler=options["scheduler"],
        )
        self._install_signals(worker)
        server = self._start_health(worker, options)
        try:
            stats = worker.run()
        finally:
            if server is not None:
                server.stop()
        self.stdout.write(
            "pg_queue worker done: " + " ".join(f"{k}={v}" for k, v in stats.as_dict().items())
        )
        if worker.time_limit_exit:
            sys.exit(EXIT_TIME_LIMIT)

    @staticmethod
    def _validate(options: dict[str, Any]) -> dict[str, int]:
        """Check every flag before anything starts; errors name the flag."""
        try:
            queues = parse_queues(options["queues"], queue_settings().default_queue)
        except ValueError as exc:
            raise CommandError(f"--queues: {exc}") from None
        for flag in ("concurrency", "batch_size", "max_tasks", "processes"):
            value = options[flag]
            if value is not None and value < 1:
                raise CommandError(f"--{flag.replace('_', '-')} must be >= 1, got {value}")
        if options["shutdown_grace"] < 0:
            raise CommandError("--shutdown-grace must be >= 0")
        if options["time_limit"] is not None and options["time_limit"] < 0:
            raise CommandError("--time-limit must be >= 0 (0 = none)")
        if options["scheduler"] or queue_settings().scheduler:
            Command._validate_schedule()
        port = options["health_port"]
        if port is not None and not 0 <= port <= 65535:
            raise CommandError(f"--health-port must be 0..65535, got {port}")
        return queues

    @staticmethod
    def _validate_schedule() -> None:
        """The scheduler needs croniter and a valid ``PG_QUEUE["SCHEDULE"]``."""
        from pg_queue.scheduling.cron import require_croniter
        from pg_queue.scheduling.sync import parse_schedule

        try:
            require_croniter()
            parse_schedule(queue_settings().schedule)
        except (ImportError, ValueError) as exc:
            raise CommandError(f"--scheduler: {exc}") from None

    @staticmethod
    def _start_health(worker: Worker, options: dict[str, Any]) -> HealthServer | None:
        if options["health_port"] is None:
            return None
        from pg_queue.metrics import register_queue_depth

        try:
            server = HealthServer(
                options["health_port"], worker.health, host=options["health_host"]
            )
        except OSError as exc:
            raise CommandError(f"--health-port {options['health_port']}: {exc}") from None
        register_queue_depth()  # does nothing without prometheus-client
        return server.start()

    @staticmethod
    def _supervise(options: dict[str, Any]) -> None:
        child_args = ["--shutdown-grace", str(options["shutdown_grace"])]
        for flag in ("queues", "concurrency", "batch_size", "max_tasks", "time_limit"):
            if options[flag] not in (None, ""):
                child_args += [f"--{flag.replace('_', '-')}", str(options[flag])]
        if options["burst"]:
            child_args.append("--burst")
        if options["no_notify"]:
            child_args.append("--no-notify")
        if options["scheduler"]:
            child_args.append("--scheduler")
        if options["loglevel"]:
            child_args += ["--loglevel", options["loglevel"]]
        for module in options["include"]:
            child_args += ["--include", module]
        supervisor = Supervisor(
            child_args,
            processes=options["processes"],
            shutdown_grace=options["shutdown_grace"],
            health_port=options["health_port"],
            health_host=options["health_host"],
            unhealthy_restart_after=queue_settings().unhealthy_restart_after,
        )
        signal.signal(signal.SIGTERM, supervisor.on_signal)
        signal.signal(signal.SIGINT, supervisor.on_signal)
        code = supervisor.run()
        if code:
            raise CommandError("some child workers did not stop cleanly", returncode=code)

    @staticmethod
    def _install_signals(worker: Worker) -> None:
        received = {"count": 0}

        def on_signal(signum: int, frame: FrameType | None) -> None:
            received["count"] += 1
            if received["count"] == 1:
                logger.warning(
                    "signal %s: stopping gracefully (send again to exit at once)",
                    signal.Signals(signum).name,
                )
                worker.request_stop()
            else:
                logger.warning("second signal: exiting now; leases expire and get re-armed")
                os._exit(1)

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
