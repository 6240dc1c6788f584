"""Fixtures of the workflow tests (resource locks, groups, chains): the delivery tests' short
leases and reconnecting database handle, worker subprocesses that import the workflow tasks,
and the side tables those tasks write to."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.acceptance.delivery import tasks as delivery_tasks
from tests.acceptance.delivery.conftest import Db, delivery_env, pgdb  # noqa: F401  (fixtures)
from tests.harness import Workers

TASKS_MODULE = "tests.acceptance.workflows.tasks"


@pytest.fixture
def workers(
    delivery_env: dict[str, str],  # noqa: F811
    tmp_path: Path,
    transactional_db: None,
) -> Iterator[Workers]:
    """Worker subprocesses with short leases that import the workflow tasks."""
    started = Workers(delivery_env, tmp_path, include=(TASKS_MODULE,))
    try:
        yield started
    finally:
        started.stop_all()


@pytest.fixture
def wf(pgdb: Db) -> Iterator[Db]:  # noqa: F811
    """``wf_exec`` (one row per execution: key, start, end), ``wf_callback`` (one row per
    callback run), ``wf_signal`` (one row per group/chain signal) and ``wf_flag``; dropped
    afterwards."""
    pgdb.rows(
        """
        CREATE TABLE IF NOT EXISTS wf_exec (
            id bigserial PRIMARY KEY,
            task_id uuid NOT NULL,
            attempt int NOT NULL,
            worker_id text NOT NULL,
            resource_key text,
            started_at timestamptz NOT NULL,
            ended_at timestamptz
        )
        """
    )
    pgdb.rows(
        """
        CREATE TABLE IF NOT EXISTS wf_callback (
            id bigserial PRIMARY KEY, kind text NOT NULL, tag text NOT NULL, payload jsonb
        )
        """
    )
    pgdb.rows(
        """
        CREATE TABLE IF NOT EXISTS wf_signal (
            id bigserial PRIMARY KEY, signal text NOT NULL, ref uuid NOT NULL,
            status text NOT NULL
        )
        """
    )
    pgdb.rows("CREATE TABLE IF NOT EXISTS wf_flag (flag text PRIMARY KEY)")
    pgdb.rows("TRUNCATE wf_exec, wf_callback, wf_signal, wf_flag")
    try:
        yield pgdb
    finally:
        # An operator's cancel or purge in this process sends the group signals here, and the
        # recording receiver opened the tasks' per-thread connection: close it before the drop.
        conn = getattr(delivery_tasks._local, "conn", None)
        if conn is not None:
            conn.close()
            delivery_tasks._local.conn = None
        with contextlib.suppress(psycopg.Error):
            pgdb.rows("DROP TABLE IF EXISTS wf_exec, wf_callback, wf_signal, wf_flag")
