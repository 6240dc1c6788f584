"""Fixtures of the routing tests: a real Postgres worker and a real Celery worker, side by side.

Both workers serve the same queue names (unique to this pytest session), so the only thing that
decides who runs a call is the flag. They are started once for the ``tests/acceptance/routing``
package and stopped when it is done, before the test database is dropped; their output goes to
log files that a failing test can show. The Celery worker is skipped (loudly) when RabbitMQ does
not answer on 127.0.0.1:5672; the Postgres worker needs nothing but the test database.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.harness import Process

BROKER = ("127.0.0.1", 5672)
#: Extra task module both workers import (Celery tasks for failures and retries).
TASKS_MODULE = "tests.acceptance.routing.tasks"
#: Re-arm interval of the Postgres worker: expired leases are noticed within this.
REARM_INTERVAL = 0.5


def broker_reachable() -> bool:
    try:
        with socket.create_connection(BROKER, timeout=1.0):
            return True
    except OSError:
        return False


@dataclass(frozen=True)
class Queues:
    """Queue names of this session; both workers serve ``main`` and ``callbacks``."""

    session: str
    main: str
    callbacks: str

    def unserved(self, what: str = "") -> str:
        """A queue no worker serves (for timeouts and jobs parked on purpose)."""
        return f"{self.main}-nobody-{what or uuid.uuid4().hex[:6]}"


@pytest.fixture(scope="session")
def queues() -> Queues:
    session = uuid.uuid4().hex[:10]
    return Queues(session=session, main=f"t-{session}", callbacks=f"t-{session}-cb")


@pytest.fixture(scope="session")
def subprocess_env(django_db_setup: None) -> dict[str, str]:
    """Environment for worker subprocesses: the test database, short re-arm, notify on."""
    from django.db import connection

    from tests.conftest import database_url

    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("PG_QUEUE_") or k == "PG_QUEUE_DATABASE_SOURCE"
    }
    env.update(
        DATABASE_URL=database_url(connection.settings_dict),
        DJANGO_SETTINGS_MODULE="backend.settings",
        PYTHONUNBUFFERED="1",
        PG_QUEUE_REARM_INTERVAL=str(REARM_INTERVAL),
        PG_QUEUE_LEASE_SECONDS="10",
        PG_QUEUE_NOTIFY="true",
        PG_QUEUE_LOG_LEVEL="INFO",
    )
    return env


def start_pg_worker(
    env: dict[str, str], log_dir: Path, name: str, queue_names: list[str], **extra_env: str
) -> Process:
    argv = [
        sys.executable,
        "manage.py",
        "run_pg_worker",
        "--queues",
        ",".join(queue_names),
        "--include",
        TASKS_MODULE,
        "--concurrency",
        "4",
        "--shutdown-grace",
        "5",
    ]
    proc = Process(name, argv, {**env, **extra_env}, log_dir / f"{name}.log")
    try:
        proc.wait_for_log("worker started")
    except BaseException:
        proc.stop()
        raise
    return proc


@pytest.fixture(scope="package")
def pg_worker(
    subprocess_env: dict[str, str], queues: Queues, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Process]:
    """``manage.py run_pg_worker`` on the session's queues, for the whole package."""
    proc = start_pg_worker(
        subprocess_env,
        tmp_path_factory.mktemp("pg-worker"),
        "pg-worker",
        [queues.main, queues.callbacks],
    )
    yield proc
    proc.stop()


@pytest.fixture
def pg_worker_factory(
    subprocess_env: dict[str, str], tmp_path: Path
) -> Iterator[Callable[..., Process]]:
    """Start extra Postgres workers for one test: ``start(name, [queues], **env)``."""
    started: list[Process] = []

    def start(name: str, queue_names: list[str], **extra_env: str) -> Process:
        proc = start_pg_worker(subprocess_env, tmp_path, name, queue_names, **extra_env)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()


def delete_broker_queues(names: list[str]) -> None:
    from backend.celery import app

    with app.connection_for_write() as conn:
        channel = conn.default_channel
        for name in names:
            with contextlib.suppress(Exception):
                channel.queue_delete(name)


@pytest.fixture(scope="session")
def broker_queues_to_delete(queues: Queues) -> Iterator[list[str]]:
    """Broker queues this session created; deleted at the end (stale messages never linger)."""
    names = [queues.main, queues.callbacks]
    yield names
    if broker_reachable():
        delete_broker_queues(names)


@pytest.fixture(scope="package")
def celery_worker(
    subprocess_env: dict[str, str],
    queues: Queues,
    tmp_path_factory: pytest.TempPathFactory,
    broker_queues_to_delete: list[str],
) -> Iterator[Process]:
    """A real ``celery -A backend worker`` on the session's queues (threads pool)."""
    if not broker_reachable():
        pytest.skip(
            "RabbitMQ is NOT reachable at 127.0.0.1:5672: Celery-side routing tests skipped "
            "(start RabbitMQ to run them)"
        )
    argv = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "backend",
        "worker",
        "-Q",
        f"{queues.main},{queues.callbacks}",
        "-c",
        "2",
        "--pool",
        "threads",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
        "-n",
        f"routing-{queues.session}@%h",
        "-I",
        TASKS_MODULE,
        "--loglevel",
        "INFO",
    ]
    log_dir = tmp_path_factory.mktemp("celery-worker")
    proc = Process("celery-worker", argv, subprocess_env, log_dir / "celery-worker.log")
    try:
        proc.wait_for_log(" ready.")
    except BaseException:
        proc.stop()
        raise
    yield proc
    proc.stop()


@pytest.fixture
def unserved_celery_queue(broker_queues_to_delete: list[str], queues: Queues) -> str:
    """A broker queue nobody consumes; deleted (with its messages) at the end of the session."""
    name = queues.unserved("celery")
    broker_queues_to_delete.append(name)
    return name


@pytest.fixture
def dispatcher() -> Any:
    from backend.celery import app
    from pg_queue.routing import RoutingDispatcher

    return RoutingDispatcher(app)


@contextlib.contextmanager
def pg_queue_settings(**changes: Any) -> Iterator[None]:
    """``override_settings(PG_QUEUE={...current, **changes})`` with the flag provider reset."""
    from django.conf import settings
    from django.test import override_settings

    from pg_queue.routing.flags import reset_provider

    try:
        with override_settings(PG_QUEUE={**settings.PG_QUEUE, **changes}):
            reset_provider()
            yield
    finally:
        reset_provider()


#: Routing settings with no rule in effect; ``flag_on`` / ``flag_off`` start from these.
_NEUTRAL: dict[str, Any] = {
    "TRANSPORT_ENABLED": True,
    "ROUTING_PERCENT": 100,
    "ROUTING_TENANTS": [],
    "ROUTING_EXCLUDE_TENANTS": [],
    "ROUTING_TASKS": [],
    "FLAG_PROVIDER": "",
}


def flag_on(**extra: Any) -> contextlib.AbstractContextManager[None]:
    """The default provider answers True for every call (100%, no tenant rules)."""
    return pg_queue_settings(**{**_NEUTRAL, "ROUTING_ENABLED": True, **extra})


def flag_off(**extra: Any) -> contextlib.AbstractContextManager[None]:
    """The default provider answers False for every call."""
    return pg_queue_settings(**{**_NEUTRAL, "ROUTING_ENABLED": False, **extra})


def insert_raw_message(
    task_name: str, payload_json: str, queue: str, *, attempts: int = 0, max_attempts: int = 3
) -> str:
    """A message written by hand (old code, a bad migration...), bypassing enqueue's checks."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO pg_queue_message "
            "(task_id, queue_name, task_name, payload, attempts, max_attempts) "
            "VALUES (gen_random_uuid(), %s, %s, %s::jsonb, %s, %s) RETURNING task_id",
            [queue, task_name, payload_json, attempts, max_attempts],
        )
        row = cursor.fetchone()
    assert row is not None
    return str(row[0])
