"""``manage.py run_pg_worker``: drain PostgreSQL queues with the very tasks Celery runs."""

from __future__ import annotations

import logging
import os
import signal
from types import FrameType
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from pg_queue.conf import queue_settings
from pg_queue.registry import celery_app, import_task_modules, native_tasks
from pg_queue.worker import Worker, parse_queues
from pg_queue.worker.core import DEFAULT_SHUTDOWN_GRACE

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

    def handle(self, *args: Any, **options: Any) -> None:
        conf = queue_settings()
        try:
            queues = parse_queues(options["queues"], conf.default_queue)
        except ValueError as exc:
            raise CommandError(f"--queues: {exc}") from None
        for flag in ("concurrency", "batch_size", "max_tasks"):
            value = options[flag]
            if value is not None and value < 1:
                raise CommandError(f"--{flag.replace('_', '-')} must be >= 1, got {value}")
        if options["shutdown_grace"] < 0:
            raise CommandError("--shutdown-grace must be >= 0")
        try:
            modules = import_task_modules(options["include"])
        except ImportError as exc:
            raise CommandError(f"cannot import task module: {exc}") from None
        app = celery_app()
        celery_count = len([n for n in app.tasks if not n.startswith("celery.")]) if app else 0
        worker = Worker(
            queues=queues,
            concurrency=options["concurrency"],
            batch_size=options["batch_size"],
            burst=options["burst"],
            max_tasks=options["max_tasks"],
            worker_id=options["worker_id"],
            shutdown_grace=options["shutdown_grace"],
        )
        logger.info(
            "tasks known native=%d celery=%d modules=%s",
            len(native_tasks()),
            celery_count,
            ",".join(modules) or "-",
        )
        self._install_signals(worker)
        stats = worker.run()
        self.stdout.write(
            "pg_queue worker done: " + " ".join(f"{k}={v}" for k, v in stats.as_dict().items())
        )

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
