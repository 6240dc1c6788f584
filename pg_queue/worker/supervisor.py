"""``run_pg_worker --processes P``: P child worker processes, restarted when they die.

Children are fresh interpreters (``python -m django run_pg_worker --child ...``), not forks, so no
thread or connection state leaks across processes. A child that dies is restarted after an
exponential backoff; a slot whose child died ``CRASH_LOOP_COUNT`` times within
``CRASH_LOOP_WINDOW`` seconds is reported as a crash loop (logged at ERROR, /healthz 503) and
keeps being retried at the longest backoff. A child that is alive but unhealthy (its health
file says so, or has not been rewritten) for ``UNHEALTHY_RESTART_AFTER`` seconds is stopped
(SIGTERM, then SIGKILL after its grace) and restarted like a dead one: a wedged process is as
useless as a dead one. The first SIGTERM/SIGINT is forwarded to every child (each stops
gracefully); a second one kills them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pg_queue.worker.core import EXIT_TIME_LIMIT

logger = logging.getLogger("pg_queue.supervisor")

RESTART_BACKOFF_MIN = 0.5
RESTART_BACKOFF_MAX = 30.0
CRASH_LOOP_COUNT = 5
CRASH_LOOP_WINDOW = 60.0
#: Seconds a child's health file may be old before the child counts as unhealthy.
HEALTH_FILE_STALE = 30.0
#: Supervisor loop tick.
TICK = 0.2
#: Seconds beyond its shutdown grace an unhealthy child gets to stop before it is killed.
KILL_MARGIN = 10.0
#: Exit code recorded for a child the supervisor stopped for being unhealthy (for the log).
EXIT_UNHEALTHY = -1


@dataclass
class _Slot:
    index: int
    health_file: str
    proc: subprocess.Popen[bytes] | None = None
    restart_at: float = 0.0
    deaths: deque[float] = field(default_factory=deque)
    crash_loop: bool = False
    restarts: int = 0
    finished: bool = False  # exited 0 by itself (--burst / --max-tasks): not restarted
    started_at: float = 0.0  # time.monotonic() of the current child's start
    unhealthy_since: float | None = None  # time.monotonic() since the child looks unhealthy
    terminated_at: float | None = None  # when the supervisor sent it SIGTERM for that


class Supervisor:
    """Starts, watches and restarts child workers; returns the exit code for the command."""

    def __init__(
        self,
        child_args: list[str],
        *,
        processes: int,
        shutdown_grace: float,
        health_port: int | None = None,
        health_host: str = "127.0.0.1",
        unhealthy_restart_after: float = 60.0,
    ) -> None:
        if processes < 1:
            raise ValueError("processes must be >= 1")
        self.child_args = child_args
        # Children that end by themselves (--burst, --max-tasks) are done when they exit 0.
        self.finite = "--burst" in child_args or "--max-tasks" in child_args
        self.shutdown_grace = shutdown_grace
        self.health_port = health_port
        self.health_host = health_host
        self.unhealthy_restart_after = unhealthy_restart_after
        self._dir = tempfile.mkdtemp(prefix="pg-queue-supervisor-")
        self._metrics_dir = os.path.join(self._dir, "metrics")
        os.makedirs(self._metrics_dir)
        self.slots = [
            _Slot(i, os.path.join(self._dir, f"child-{i}.json")) for i in range(processes)
        ]
        self._stop = threading.Event()
        self._signals = 0

    # --- signals ------------------------------------------------------------------------------

    def on_signal(self, signum: int, frame: Any = None) -> None:
        self._signals += 1
        if self._signals == 1:
            logger.warning("supervisor: stopping children gracefully (signal %d)", signum)
            self._stop.set()
            self._forward(signal.SIGTERM)
        else:
            logger.warning("supervisor: second signal, killing children")
            self._forward(signal.SIGKILL)

    def _forward(self, sig: int) -> None:
        for slot in self.slots:
            if slot.proc is not None and slot.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    slot.proc.send_signal(sig)

    # --- run ----------------------------------------------------------------------------------

    def run(self) -> int:
        server = self._start_health()
        try:
            for slot in self.slots:
                self._start(slot)
            while not self._stop.is_set():
                self._watch()
                if all(slot.finished for slot in self.slots):
                    logger.info("supervisor: every child finished its work")
                    return 0
                self._stop.wait(TICK)
            return self._drain()
        finally:
            if server is not None:
                server.stop()

    def _start(self, slot: _Slot) -> None:
        env = dict(os.environ)
        env["PROMETHEUS_MULTIPROC_DIR"] = self._metrics_dir
        cmd = [
            sys.executable,
            "-m",
            "django",
            "run_pg_worker",
            *self.child_args,
            "--child-health-file",
            slot.health_file,
        ]
        # Own session: a terminal's Ctrl-C reaches only the supervisor, which forwards one
        # SIGTERM, instead of every child receiving it twice (which means "exit at once").
        with contextlib.suppress(OSError):
            os.unlink(slot.health_file)  # the previous child's verdict is not this one's
        slot.proc = subprocess.Popen(cmd, env=env, start_new_session=True)
        slot.started_at = time.monotonic()
        slot.unhealthy_since = slot.terminated_at = None
        logger.info("child started slot=%d pid=%d", slot.index, slot.proc.pid)

    def _watch(self) -> None:
        now = time.monotonic()
        for slot in self.slots:
            proc = slot.proc
            if slot.finished:
                continue
            if proc is None:
                if now >= slot.restart_at:
                    slot.restarts += 1
                    self._start(slot)
                continue
            code = proc.poll()
            if code is None:
                self._check_alive_child(slot, now)
                continue
            slot.proc = None
            if slot.terminated_at is not None:
                code = code or EXIT_UNHEALTHY  # stopped for being unhealthy: count it as a death
            if code == 0 and self.finite:
                logger.info("child finished slot=%d", slot.index)
                slot.finished = True
                continue
            if code == 0:  # stopped by someone else's SIGTERM: replace it, not a crash
                logger.warning("child exited 0 unexpectedly slot=%d; restarting", slot.index)
                slot.restart_at = now
                continue
            if code == EXIT_TIME_LIMIT:
                logger.warning("child ended a task stuck past its time limit slot=%d", slot.index)
                slot.restart_at = now
                continue
            slot.deaths.append(now)
            while slot.deaths and now - slot.deaths[0] > CRASH_LOOP_WINDOW:
                slot.deaths.popleft()
            slot.crash_loop = len(slot.deaths) >= CRASH_LOOP_COUNT
            backoff = min(RESTART_BACKOFF_MAX, RESTART_BACKOFF_MIN * 2 ** (len(slot.deaths) - 1))
            slot.restart_at = now + backoff
            log = logger.error if slot.crash_loop else logger.warning
            log(
                "child died slot=%d exit=%s deaths_in_window=%d crash_loop=%s restart_in=%.1fs",
                slot.index,
                code,
                len(slot.deaths),
                slot.crash_loop,
                backoff,
            )

    def _check_alive_child(self, slot: _Slot, now: float) -> None:
        """Stop a child that stays unhealthy; kill it if it does not stop in its grace."""
        assert slot.proc is not None
        if slot.terminated_at is not None:
            if now - slot.terminated_at > self.shutdown_grace + KILL_MARGIN:
                logger.error("unhealthy child did not stop, killing slot=%d", slot.index)
                with contextlib.suppress(ProcessLookupError):
                    slot.proc.kill()
            return
        if self._child_healthy(slot, now):
            slot.unhealthy_since = None
            return
        if slot.unhealthy_since is None:
            slot.unhealthy_since = now
        elif now - slot.unhealthy_since >= self.unhealthy_restart_after:
            logger.error(
                "child unhealthy for %.0fs, restarting it slot=%d pid=%d",
                now - slot.unhealthy_since,
                slot.index,
                slot.proc.pid,
            )
            slot.terminated_at = now
            with contextlib.suppress(ProcessLookupError):
                slot.proc.send_signal(signal.SIGTERM)

    @staticmethod
    def _child_healthy(slot: _Slot, now: float) -> bool:
        """What the child's health file says; a child still starting up counts as healthy."""
        try:
            data = json.loads(Path(slot.health_file).read_text())
        except (OSError, ValueError):
            return now - slot.started_at <= HEALTH_FILE_STALE
        fresh = time.time() - float(data.get("written_at", 0)) <= HEALTH_FILE_STALE
        return bool(data.get("healthy")) and fresh

    def _drain(self) -> int:
        """Wait for children to stop (grace + margin); kill the ones that do not."""
        deadline = time.monotonic() + self.shutdown_grace + 10.0
        for slot in self.slots:
            if slot.proc is None:
                continue
            try:
                slot.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                logger.error("child did not stop in time, killing slot=%d", slot.index)
                slot.proc.kill()
                slot.proc.wait(timeout=5)
        codes = [s.proc.returncode for s in self.slots if s.proc is not None]
        return 0 if all(c == 0 for c in codes) else 1

    # --- health -------------------------------------------------------------------------------

    def health(self) -> tuple[bool, dict[str, Any]]:
        children = []
        healthy = True
        for slot in self.slots:
            info: dict[str, Any] = {
                "slot": slot.index,
                "alive": slot.proc is not None and slot.proc.poll() is None,
                "restarts": slot.restarts,
                "crash_loop": slot.crash_loop,
            }
            try:
                data = json.loads(Path(slot.health_file).read_text())
                fresh = time.time() - float(data.get("written_at", 0)) <= HEALTH_FILE_STALE
                info["healthy"] = bool(data.get("healthy")) and fresh
                info["problems"] = data.get("problems", [])
            except (OSError, ValueError):
                info["healthy"] = False
            healthy = healthy and info["alive"] and info["healthy"] and not slot.crash_loop
            children.append(info)
        return healthy, {"children": children}

    def _start_health(self) -> Any:
        if self.health_port is None:
            return None
        from pg_queue import metrics
        from pg_queue.worker.health import HealthServer

        registry = None  # without prometheus-client /metrics says which extra to install
        if metrics.prometheus is not None:
            from prometheus_client.multiprocess import MultiProcessCollector

            registry = metrics.prometheus.CollectorRegistry()
            MultiProcessCollector(registry, path=self._metrics_dir)
            registry.register(metrics.QueueDepthCollector())
        return HealthServer(
            self.health_port, self.health, host=self.health_host, registry=registry
        ).start()
