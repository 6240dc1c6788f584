"""Shared fixtures: which database, worker subprocesses pointed at the test database.

The suite comes in tiers, one folder each (and a marker of the same name, set here):
``unit`` (pure code), ``integration`` (in-process, real PostgreSQL), ``acceptance`` (real
``run_pg_worker``, Celery and service processes, through ``tests/harness.py``),
``migrations``, ``bench`` (smoke of ``pg_queue_bench``) and ``packaging`` (the wheel in fresh
virtualenvs).

Every test that touches the database uses a real PostgreSQL (see backend/database.py for how
it is chosen). Tests whose rows must be seen by another connection (a ``worker_connection()``
or a worker subprocess) use ``@pytest.mark.django_db(transaction=True)`` so the rows commit.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import pytest

from tests.harness import Process, Workers

#: Longest any worker subprocess may run before the test fails (every wait has a timeout).
WORKER_TIMEOUT = 120.0

RunWorker = Callable[..., tuple[int, str]]


def pytest_configure(config: pytest.Config) -> None:
    """Fast password hashing for the test users the admin tests log in with: Django's default
    (PBKDF2, a million rounds) costs about a third of a second per user created."""
    from django.conf import settings

    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


TIERS = ("unit", "integration", "acceptance", "migrations", "bench", "packaging")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test with its tier, from the folder it lives in."""
    for item in items:
        parts = Path(str(item.path)).relative_to(Path(__file__).parent).parts
        if parts and parts[0] in TIERS:
            item.add_marker(getattr(pytest.mark, parts[0]))


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


@pytest.fixture
def workers(worker_env: dict[str, str], tmp_path: Path) -> Iterator[Workers]:
    """``run_pg_worker`` processes for one test (``tests/harness.py``), stopped at teardown.

    The delivery tests override it with short leases and their recording tasks.
    """
    started = Workers(worker_env, tmp_path)
    try:
        yield started
    finally:
        started.stop_all()


@pytest.fixture
def run_worker(workers: Workers) -> RunWorker:
    """``run_worker(*flags, burst=True, timeout=...) -> (returncode, output)`` of a worker run
    to its end."""

    def run(*flags: str, burst: bool = True, timeout: float = WORKER_TIMEOUT) -> tuple[int, str]:
        return workers.run(*flags, burst=burst, timeout=timeout)

    return run


@pytest.fixture
def background_worker(workers: Workers) -> Callable[..., Process]:
    """``background_worker(*flags)`` starts ``run_pg_worker --burst *flags`` and returns it
    (``.finish()`` waits for its exit: ``(returncode, output)``)."""

    def start(*flags: str) -> Process:
        return workers.start(*flags, burst=True)

    return start


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
