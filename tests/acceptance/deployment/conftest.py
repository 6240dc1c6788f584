"""Fixtures of the deployment tests: the parsed compose file, and its stack run locally.

``local_stack`` maps the compose network onto this machine (see ``local_stack.py``): the test
database pytest-django created, a real PgBouncer in transaction mode in front of it (the
delivery tests' helper), and the local RabbitMQ on a vhost created for the test and deleted
afterwards, so the Celery worker of the stack can never take another run's messages.
"""

from __future__ import annotations

import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.acceptance.delivery.pgbouncer import PgBouncer
from tests.acceptance.deployment.compose import Compose, load_compose
from tests.acceptance.deployment.local_stack import Endpoints, LocalStack

BROKER = ("127.0.0.1", 5672)
#: Longest one rabbitmqctl call may take.
RABBITMQCTL_TIMEOUT = 30.0


@pytest.fixture(scope="session")
def compose() -> Compose:
    return load_compose()


def _rabbitmqctl(*args: str) -> tuple[bool, str]:
    try:
        done = subprocess.run(
            ["rabbitmqctl", "-q", *args],
            capture_output=True,
            text=True,
            timeout=RABBITMQCTL_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, str(exc)
    return done.returncode == 0, done.stdout + done.stderr


@pytest.fixture
def broker_url() -> Iterator[str]:
    """``amqp://`` URL of the local RabbitMQ on a vhost of this test's own.

    Falls back (loudly) to the default vhost where ``rabbitmqctl`` cannot be used (not root,
    no CLI): the stack's Celery worker then shares the default vhost's queues.
    """
    try:
        socket.create_connection(BROKER, timeout=1.0).close()
    except OSError:
        pytest.skip("RabbitMQ is NOT reachable at 127.0.0.1:5672: deployment stack test skipped")
    vhost = f"pg-queue-deploy-{uuid.uuid4().hex[:10]}"
    ok, output = _rabbitmqctl("add_vhost", vhost)
    if ok:
        ok, output = _rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        if not ok:
            _rabbitmqctl("delete_vhost", vhost)
    if not ok:
        print(f"deployment: no private vhost ({output.strip()[:300]}); using the default vhost")
        yield f"amqp://guest:guest@{BROKER[0]}:{BROKER[1]}//"
        return
    try:
        yield f"amqp://guest:guest@{BROKER[0]}:{BROKER[1]}/{quote(vhost, safe='')}"
    finally:
        _rabbitmqctl("delete_vhost", vhost)


@pytest.fixture
def pgbouncer(transactional_db: None) -> Iterator[PgBouncer]:
    """A PgBouncer in transaction pooling mode in front of the test database."""
    from django.db import connection

    settings = connection.settings_dict
    host = str(settings.get("HOST") or "")
    if not host or host.startswith("/"):
        pytest.skip(
            "DEPLOYMENT TEST SKIPPED: the test database is reached through a Unix socket "
            f"({host or 'default socket'}, e.g. the embedded pgserver); PgBouncer needs TCP"
        )
    with PgBouncer(
        dbname=settings["NAME"],
        host=host,
        port=int(settings.get("PORT") or 5432),
        user=str(settings.get("USER") or "postgres"),
        password=str(settings.get("PASSWORD") or ""),
    ) as bouncer:
        yield bouncer


@pytest.fixture
def endpoints(worker_env: dict[str, str], pgbouncer: PgBouncer, broker_url: str) -> Endpoints:
    return Endpoints(
        database_url=worker_env["DATABASE_URL"],
        pooler_url=pgbouncer.url,
        pooler_port=pgbouncer.port,
        broker_url=broker_url,
    )


@pytest.fixture
def local_stack(compose: Compose, endpoints: Endpoints, tmp_path: Path) -> Iterator[LocalStack]:
    """The compose stack as local processes (not yet up: call ``up()``); always taken down.

    Torn down before ``pgbouncer`` and ``transactional_db``: no service outlives its database.
    """
    stack = LocalStack(compose, endpoints, tmp_path)
    try:
        yield stack
    finally:
        stack.down()
