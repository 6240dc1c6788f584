"""Fixtures of the delivery tests: worker subprocesses with short leases, a direct database
handle that survives a server restart, side tables the recording tasks write to.

Worker subprocesses come from the shared harness (``tests/harness.py``).
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.conftest import reset_broken_django_connections
from tests.harness import Workers

#: Lease and re-arm interval the worker subprocesses run with (PG_QUEUE_* environment).
LEASE = 2.0
REARM = 0.5
#: The module the workers import for the recording tasks.
TASKS_MODULE = "tests.acceptance.delivery.tasks"


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
    """``workers.start(*flags, name=, burst=False, env={...})`` -> Process (the recording tasks
    imported). Depends on ``transactional_db`` so every worker is gone before the tables are
    flushed."""
    started = Workers(delivery_env, tmp_path, include=(TASKS_MODULE,))
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
