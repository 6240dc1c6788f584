"""The one harness for tests that run real processes: ``wait_for``, ``Process`` and ``Workers``.

Every subprocess (``manage.py run_pg_worker``, a supervisor and its children, a Celery worker,
a compose service run locally) writes its output to a log file, never to a pipe a chatty
process could fill; a failing assertion shows the tail of every log. Every wait has a timeout,
and every process started here is stopped at teardown: SIGTERM, then SIGKILL to the whole
process tree (a supervisor's children run in sessions of their own).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
#: Seconds a process gets to exit after SIGTERM at teardown before its tree is killed.
STOP_GRACE = 15.0
#: Seconds a process may take to print what ``wait_for_log`` waits for.
START_TIMEOUT = 60.0


def wait_for(
    predicate: Callable[[], Any],
    timeout: float,
    what: str | Callable[[], str],
    interval: float = 0.02,
) -> Any:
    """Poll ``predicate`` until it returns something truthy, and return that.

    Fails naming ``what`` on timeout; ``what`` may be a callable, evaluated only then (e.g. to
    attach worker logs).
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            text = what() if callable(what) else what
            raise AssertionError(f"timed out after {timeout:.1f}s waiting for {text}")
        time.sleep(interval)


def free_port() -> int:
    """A TCP port on 127.0.0.1 nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid``, read from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may contain spaces and parentheses.
        fields = stat[stat.rfind(")") + 2 :].split()
        parents[int(entry.name)] = int(fields[1])
    found: list[int] = []
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        children = [p for p, pp in parents.items() if pp == parent]
        found += children
        frontier += children
    return found


class Process:
    """One subprocess writing its output to a log file."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        env: Mapping[str, str],
        log_path: Path,
        *,
        expect_exit: bool = False,
    ) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        #: False while the process must stay up (a death fails ``Workers.wait_for`` at once).
        self.expect_exit = expect_exit
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(
                argv,
                cwd=REPO_ROOT,
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def send(self, sig: int) -> None:
        """Signal the process; from now on it may exit."""
        self.expect_exit = True
        if self.alive():
            self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        """Its exit code; fails with its log if it is still running after ``timeout``."""
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"{self.name} still running after {timeout:.1f}s\n{self.log()}"
            ) from None

    def finish(self, timeout: float = 120.0) -> tuple[int, str]:
        """Wait for a process that ends by itself (a ``--burst`` worker): (exit code, output)."""
        return self.wait(timeout), self.output()

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log(self, tail: int = 3000) -> str:
        return f"--- log of {self.name} (last {tail} chars) ---\n{self.output()[-tail:]}"

    def wait_for_log(self, text: str, timeout: float = START_TIMEOUT) -> None:
        """Until ``text`` appears in the output; fails at once if the process exits first."""

        def seen() -> bool:
            if text in self.output():
                return True
            if not self.alive():
                raise AssertionError(
                    f"{self.name} exited ({self.proc.returncode}) before printing {text!r}\n"
                    f"{self.log()}"
                )
            return False

        wait_for(seen, timeout, lambda: f"{text!r} from {self.name}\n{self.log()}", 0.05)

    def kill_tree(self) -> None:
        """SIGKILL the process and every descendant (a supervisor's children too)."""
        for pid in [*descendants(self.pid), self.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)

    def stop(self, grace: float = STOP_GRACE) -> None:
        """SIGTERM, then SIGKILL of the whole tree if it does not exit in time."""
        if self.alive():
            self.send(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=grace)
        self.kill_tree()  # also reaps children a dead supervisor left behind


def worker_argv(*flags: str, burst: bool = False) -> list[str]:
    """``python manage.py run_pg_worker [--burst] *flags``."""
    return [
        sys.executable,
        "manage.py",
        "run_pg_worker",
        *(["--burst"] if burst else []),
        *flags,
    ]


class Workers:
    """Starts ``run_pg_worker`` processes for one test; every one is stopped at teardown."""

    def __init__(
        self, env: Mapping[str, str], log_dir: Path, include: tuple[str, ...] = ()
    ) -> None:
        self.env = dict(env)
        self.log_dir = log_dir
        self.include = include
        self.started: list[Process] = []

    def start(
        self,
        *flags: str,
        name: str | None = None,
        burst: bool = False,
        env: Mapping[str, str] | None = None,
    ) -> Process:
        name = name or f"worker-{len(self.started)}"
        includes = [arg for module in self.include for arg in ("--include", module)]
        proc = Process(
            name,
            worker_argv(*includes, *flags, burst=burst),
            {**self.env, **(env or {})},
            self.log_dir / f"{name}.log",
            expect_exit=burst,
        )
        self.started.append(proc)
        return proc

    def run(
        self,
        *flags: str,
        burst: bool = True,
        env: Mapping[str, str] | None = None,
        timeout: float = 120.0,
    ) -> tuple[int, str]:
        """A worker that ends by itself (``--burst``, or ``--max-tasks`` with ``burst=False``)
        run to completion: (exit code, output)."""
        proc = self.start(*flags, burst=burst, env=env)
        proc.expect_exit = True
        code = proc.wait(timeout)
        return code, proc.output()

    def check_alive(self) -> None:
        """Fail at once, with its log, if a worker that should be running has exited."""
        for proc in self.started:
            if not proc.expect_exit and not proc.alive():
                raise AssertionError(
                    f"worker {proc.name} exited unexpectedly (code {proc.proc.returncode})\n"
                    f"{proc.log()}"
                )

    def wait_for(
        self,
        predicate: Callable[[], Any],
        timeout: float,
        what: str | Callable[[], str],
        interval: float = 0.02,
    ) -> Any:
        """``wait_for`` that also fails fast when a worker dies, and attaches the logs."""

        def check() -> Any:
            self.check_alive()
            return predicate()

        def describe() -> str:
            return f"{what() if callable(what) else what}\n{self.logs()}"

        return wait_for(check, timeout, describe, interval)

    def logs(self, tail: int = 3000) -> str:
        return "\n".join(p.log(tail) for p in self.started)

    def stop_all(self) -> None:
        for proc in self.started:
            proc.stop()
