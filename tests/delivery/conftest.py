"""Fixtures of the delivery tests: worker subprocesses with short leases, a direct database
handle that survives a server restart, side tables the recording tasks write to.

Worker output goes to files, not pipes: a chatty worker can never block on a full pipe, and a
failing assertion can show the tail of every worker's log.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.conftest import reset_broken_django_connections

REPO_ROOT = Path(__file__).resolve().parents[2]
#: Lease and re-arm interval the worker subprocesses run with (PG_QUEUE_* environment).
LEASE = 2.0
REARM = 0.5
#: Seconds a subprocess gets to exit after SIGTERM at teardown before it is killed.
TEARDOWN_GRACE = 10.0
#: The module the workers import for the recording tasks.
TASKS_MODULE = "tests.delivery.tasks"


def wait_for(
    predicate: Callable[[], Any],
    timeout: float,
    what: str | Callable[[], str],
    interval: float = 0.02,
) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail naming ``what`` on timeout.

    ``what`` may be a callable, evaluated only on timeout (e.g. to attach worker logs).
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


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (from /proc; supervisor children run in own sessions)."""
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


class WorkerProcess:
    """One ``manage.py run_pg_worker`` subprocess writing its output to a log file."""

    def __init__(
        self,
        name: str,
        args: list[str],
        env: dict[str, str],
        log_path: Path,
        *,
        expect_exit: bool = False,
    ) -> None:
        self.name = name
        self.args = args
        self.log_path = log_path
        #: False while the process must stay up (a death fails ``Workers.wait_for`` at once).
        self.expect_exit = expect_exit
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "manage.py", "run_pg_worker", *args],
                cwd=REPO_ROOT,
                env=env,
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
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"worker {self.name} still running after {timeout:.1f}s\n{self.log()}"
            ) from None

    def log(self, tail: int = 3000) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return f"--- log of {self.name} (last {tail} chars) ---\n{text[-tail:]}"

    def kill_tree(self) -> None:
        """SIGKILL the process and every descendant (a supervisor's children too)."""
        for pid in [*descendants(self.pid), self.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL of the whole tree if it does not exit in time."""
        if self.alive():
            self.send(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=TEARDOWN_GRACE)
        self.kill_tree()  # also reaps children a dead supervisor left behind


class Workers:
    """Starts worker subprocesses for one test; every one is stopped at teardown."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env = env
        self.log_dir = log_dir
        self.started: list[WorkerProcess] = []

    def start(
        self,
        *flags: str,
        name: str | None = None,
        burst: bool = False,
        env: dict[str, str] | None = None,
    ) -> WorkerProcess:
        name = name or f"worker-{len(self.started)}"
        args = [*(["--burst"] if burst else []), "--include", TASKS_MODULE, *flags]
        full_env = {**self.env, **(env or {})}
        proc = WorkerProcess(name, args, full_env, self.log_dir / f"{name}.log", expect_exit=burst)
        self.started.append(proc)
        return proc

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


@pytest.fixture
def delivery_env(worker_env: dict[str, str]) -> dict[str, str]:
    """``worker_env`` (the test database) plus short leases; other PG_QUEUE_* settings unset."""
    env = dict(worker_env)
    for key in list(env):
        if key.startswith("PG_QUEUE_") and key != "PG_QUEUE_DATABASE_SOURCE":
            del env[key]
    env.update(
        PG_QUEUE_LEASE_SECONDS=str(LEASE),
        PG_QUEUE_REARM_INTERVAL=str(REARM),
        PG_QUEUE_NOTIFY="true",
        PG_QUEUE_PREPARED_STATEMENTS="true",
        PG_QUEUE_LOG_LEVEL="INFO",
    )
    return env


@pytest.fixture
def workers(
    delivery_env: dict[str, str], tmp_path: Path, transactional_db: None
) -> Iterator[Workers]:
    """``workers.start(*flags, name=, burst=False, env={...})`` -> WorkerProcess.

    Depends on ``transactional_db`` so every worker is gone before the tables are flushed.
    """
    started = Workers(delivery_env, tmp_path)
    try:
        yield started
    finally:
        started.stop_all()


class Db:
    """An autocommit psycopg connection to the test database that reconnects when dropped.

    Used instead of Django's connection where the server is restarted or backends terminated.
    """

    def __init__(self) -> None:
        self._conn: psycopg.Connection[Any] | None = None

    def _connection(self) -> psycopg.Connection[Any]:
        from pg_queue.db.connection import worker_connection

        if self._conn is None or self._conn.closed:
            self._conn = worker_connection()
        return self._conn

    def rows(self, query: str, params: Any = None, *, retry_for: float = 0.0) -> list[Any]:
        """All rows of ``query``; reconnects (for up to ``retry_for`` seconds) if dropped."""
        deadline = time.monotonic() + retry_for
        while True:
            try:
                cur = self._connection().execute(query, params)
                return cur.fetchall() if cur.description else []
            except psycopg.OperationalError:
                self.close()
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.1)

    def one(self, query: str, params: Any = None, *, retry_for: float = 0.0) -> Any:
        rows = self.rows(query, params, retry_for=retry_for)
        return rows[0] if rows else None

    def value(self, query: str, params: Any = None, *, retry_for: float = 0.0) -> Any:
        row = self.one(query, params, retry_for=retry_for)
        return row[0] if row else None

    @property
    def pid(self) -> int:
        return int(self.value("SELECT pg_backend_pid()"))

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
        self._conn = None


@pytest.fixture
def pgdb(transactional_db: None) -> Iterator[Db]:
    """A direct, reconnecting handle on the test database (see ``Db``)."""
    handle = Db()
    try:
        yield handle
    finally:
        handle.close()
        # Before pytest-django flushes the tables through Django's connection.
        reset_broken_django_connections()


@pytest.fixture
def side_tables(pgdb: Db) -> Iterator[Db]:
    """``delivery_exec`` (one row per execution) and ``delivery_flag``, dropped afterwards."""
    pgdb.rows(
        """
        CREATE TABLE IF NOT EXISTS delivery_exec (
            id bigserial PRIMARY KEY,
            task_id uuid NOT NULL,
            attempt int NOT NULL,
            worker_id text NOT NULL,
            started_at timestamptz NOT NULL,
            ended_at timestamptz
        )
        """
    )
    pgdb.rows("CREATE TABLE IF NOT EXISTS delivery_flag (flag text PRIMARY KEY)")
    pgdb.rows("TRUNCATE delivery_exec, delivery_flag")
    try:
        yield pgdb
    finally:
        with contextlib.suppress(psycopg.Error):
            pgdb.rows("DROP TABLE IF EXISTS delivery_exec, delivery_flag")


@pytest.fixture
def queue_name() -> str:
    """A queue no other test uses."""
    return f"delivery-{uuid.uuid4().hex[:10]}"


def outcome_counts(pgdb: Db) -> dict[str, int]:
    """Rows per status in pg_task_result, plus live messages and dead letters."""
    counts = {
        status: n
        for status, n in pgdb.rows("SELECT status, count(*) FROM pg_task_result GROUP BY status")
    }
    counts["messages"] = pgdb.value("SELECT count(*) FROM pg_queue_message")
    counts["dead_letters"] = pgdb.value("SELECT count(*) FROM pg_queue_dead_letter")
    return counts
