"""Shared fixtures: which database, worker subprocesses pointed at the test database.

Every test that touches the database uses a real PostgreSQL (see backend/database.py for how
it is chosen). Tests whose rows must be seen by another connection (a ``worker_connection()``
or a worker subprocess) use ``@pytest.mark.django_db(transaction=True)`` so the rows commit.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
#: Longest any worker subprocess may run before the test fails (every wait has a timeout).
WORKER_TIMEOUT = 120.0

RunWorker = Callable[..., tuple[int, str]]


def pytest_configure(config: pytest.Config) -> None:
    """Fast password hashing for the test users the admin tests log in with: Django's default
    (PBKDF2, a million rounds) costs about a third of a second per user created."""
    from django.conf import settings

    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def pytest_report_header(config: pytest.Config) -> list[str]:
    from django.conf import settings

    settings.DATABASES  # noqa: B018  (importing settings decides the database and exports it)
    return [f"pg_queue database: {os.environ.get('PG_QUEUE_DATABASE_SOURCE', 'DATABASE_URL')}"]


@pytest.fixture(scope="session")
def django_db_modify_db_settings(django_db_modify_db_settings_parallel_suffix: None) -> None:
    """A test database name unique to this pytest process.

    Several people (and CI) may run the suite against one server at once; with the default
    ``test_<name>`` the second run would try to drop the first run's database.
    """
    from django.conf import settings

    for db_settings in settings.DATABASES.values():
        test = db_settings.setdefault("TEST", {})
        base = test.get("NAME") or f"test_{db_settings['NAME']}"
        test["NAME"] = f"{base}_{os.getpid()}"


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup: None) -> Iterator[None]:
    """pytest-django's test database, plus: close process-wide listeners before it is dropped.

    ``JobHandle.wait`` may start one LISTEN connection per process (kept for the process's
    life); left open, it would make dropping the test database fail.
    """
    yield
    from pg_queue.results import stop_result_listener

    stop_result_listener()


def database_url(settings_dict: Mapping[str, Any]) -> str:
    """A ``postgres://`` URL for a Django ``DATABASES`` entry.

    A HOST starting with '/' is a Unix socket folder; it is percent-encoded as the URL host,
    which ``backend.database.database_config`` decodes again.
    """
    user = quote(str(settings_dict.get("USER") or ""), safe="")
    password = str(settings_dict.get("PASSWORD") or "")
    host = str(settings_dict.get("HOST") or "")
    port = str(settings_dict.get("PORT") or "")
    if host.startswith("/"):
        host = quote(host, safe="")
    elif ":" in host:  # IPv6 literal
        host = f"[{host}]"
    auth = user + (f":{quote(password, safe='')}" if password else "")
    netloc = (f"{auth}@" if auth else "") + host + (f":{port}" if port else "")
    url = f"postgres://{netloc}/{quote(str(settings_dict['NAME']), safe='')}"
    options = {
        k: v
        for k, v in (settings_dict.get("OPTIONS") or {}).items()
        if isinstance(v, str | int) and not isinstance(v, bool)
    }
    return f"{url}?{urlencode(options)}" if options else url


@pytest.fixture
def worker_env(django_db_setup: None) -> dict[str, str]:
    """Environment for a subprocess that must use the test database pytest-django created."""
    from django.db import connection

    env = dict(os.environ)
    env["DATABASE_URL"] = database_url(connection.settings_dict)
    env["DJANGO_SETTINGS_MODULE"] = "backend.settings"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def worker_command(*flags: str, burst: bool = True) -> list[str]:
    return [
        sys.executable,
        "manage.py",
        "run_pg_worker",
        *(["--burst"] if burst else []),
        *flags,
    ]


def run_manage_worker(
    env: Mapping[str, str], *flags: str, burst: bool = True, timeout: float = WORKER_TIMEOUT
) -> tuple[int, str]:
    """Run ``manage.py run_pg_worker [--burst] *flags`` to completion; (returncode, output)."""
    proc = subprocess.run(
        worker_command(*flags, burst=burst),
        cwd=REPO_ROOT,
        env=dict(env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
        check=False,
    )
    return proc.returncode, proc.stdout


@pytest.fixture
def run_worker(worker_env: dict[str, str]) -> RunWorker:
    """``run_worker(*flags, burst=True, timeout=...) -> (returncode, output)``."""

    def run(*flags: str, burst: bool = True, timeout: float = WORKER_TIMEOUT) -> tuple[int, str]:
        return run_manage_worker(worker_env, *flags, burst=burst, timeout=timeout)

    return run


class BackgroundWorker:
    """A worker subprocess running while the test does something else."""

    def __init__(self, env: Mapping[str, str], flags: tuple[str, ...]) -> None:
        self.proc = subprocess.Popen(
            worker_command(*flags),
            cwd=REPO_ROOT,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def finish(self, timeout: float = WORKER_TIMEOUT) -> tuple[int, str]:
        """Wait for the (burst) worker to exit by itself; (returncode, output)."""
        output, _ = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, output

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.communicate(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.communicate(timeout=15)


@pytest.fixture
def background_worker(worker_env: dict[str, str]) -> Iterator[Callable[..., BackgroundWorker]]:
    """``background_worker(*flags)`` starts ``run_pg_worker --burst *flags``.

    Whatever is still running at teardown is stopped (SIGTERM, then SIGKILL).
    """
    started: list[BackgroundWorker] = []

    def start(*flags: str) -> BackgroundWorker:
        worker = BackgroundWorker(worker_env, flags)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()


@pytest.fixture(autouse=True)
def _usable_django_connection(django_db_blocker: Any) -> None:
    """Start every test with a usable Django connection.

    A server restart (this suite's own, or another suite's against the same server) leaves
    Django's process-wide connection broken, and nothing resets it between tests: every later
    test would fail with "the connection is closed".
    """
    with django_db_blocker.unblock():
        reset_broken_django_connections()


def reset_broken_django_connections() -> None:
    """Close Django connections the server dropped, so that the next use reconnects."""
    from django.db import connections

    for conn in connections.all(initialized_only=True):
        if conn.connection is not None and not conn.is_usable():
            conn.close()
