"""Health tells the truth: red when a thread failed or outcomes cannot be written, and the
supervisor replaces a child that stays red (not only one that exits)."""

from __future__ import annotations

import json
import uuid

import pytest

from pg_queue.db.connection import worker_connection
from pg_queue.producer import enqueue
from tests.acceptance.delivery.conftest import Db
from tests.acceptance.delivery.test_supervisor import http_get, live_workers, sample
from tests.harness import Workers, free_port

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

FAULT = {"PG_QUEUE_TEST_FAULT": "maintenance-once"}


def health(port: int) -> tuple[int, dict[str, object]]:
    status, body = http_get(port, "/healthz")
    return status, (json.loads(body) if body else {})


def expired_claim(pgdb: Db) -> uuid.UUID:
    """A claim of a worker that died, with attempts left: re-arm must hand it back."""
    task_id = uuid.uuid4()
    pgdb.rows(
        "INSERT INTO pg_queue_message (task_id, queue_name, task_name, payload, state, attempts,"
        " max_attempts, lease_token, worker_id, vt) VALUES (%s, 'default', 'workers.tasks.echo',"
        " '{\"args\": [7], \"kwargs\": {}}', 'claimed', 1, 3, gen_random_uuid(), 'gone',"
        " '-infinity')",
        [task_id],
    )
    return task_id


def test_a_thread_error_is_logged_counted_turns_health_red_and_the_service_goes_on(
    pgdb, workers: Workers
):
    port = free_port()
    proc = workers.start(
        "--health-port", str(port), "--include", "tests.acceptance.delivery.faults", env=FAULT
    )
    _, doc = workers.wait_for(
        lambda: (s := health(port))[0] == 503 and s,
        timeout=30,
        what="/healthz to turn red after the injected fault",
    )
    assert "unexpected errors in worker threads (see the log)" in doc["problems"], doc
    assert doc["thread_errors"]["maintenance"] == 1, doc
    _, metrics_text = http_get(port, "/metrics")
    assert sample(metrics_text, "pg_queue_thread_errors_total", thread="maintenance") == 1.0
    log = proc.log(tail=100_000)
    assert "unexpected error in worker thread maintenance: RuntimeError" in log, log
    assert "Traceback (most recent call last)" in log, log
    # The service restarted and does its work: a dead worker's claim is re-armed and run.
    task_id = expired_claim(pgdb)
    workers.wait_for(
        lambda: pgdb.value("SELECT status FROM pg_task_result WHERE task_id = %s", [task_id]),
        timeout=30,
        what="the expired claim to be re-armed and run after the restart",
    )
    assert health(port)[0] == 503  # still red: an operator should look, or replace it


def test_outcomes_that_cannot_be_written_turn_health_red_until_written(pgdb, workers: Workers):
    port = free_port()
    workers.start("--health-port", str(port), env={"PG_QUEUE_UNWRITTEN_OUTCOME_MAX_AGE": "1"})
    workers.wait_for(lambda: health(port)[0] == 200, timeout=30, what="a healthy worker")
    with worker_connection() as blocker:
        blocker.autocommit = False
        blocker.execute("LOCK TABLE pg_task_result IN ACCESS EXCLUSIVE MODE")
        handle = enqueue("workers.tasks.echo", [1])
        _, doc = workers.wait_for(
            lambda: (s := health(port))[0] == 503 and s,
            timeout=30,
            what="/healthz to turn red while the outcome cannot be written",
        )
        assert doc["problems"] == ["outcomes not written"], doc
        blocker.rollback()
    workers.wait_for(
        lambda: (
            pgdb.value("SELECT status FROM pg_task_result WHERE task_id = %s", [handle.task_id])
            == "succeeded"
        ),
        timeout=60,
        what="the outcome to be written once the lock is gone",
    )
    workers.wait_for(lambda: health(port)[0] == 200, timeout=30, what="/healthz green again")


def test_supervisor_restarts_a_child_that_stays_unhealthy(pgdb, workers: Workers):
    port = free_port()
    supervisor = workers.start(
        "--processes",
        "2",
        "--health-port",
        str(port),
        "--shutdown-grace",
        "1",
        "--include",
        "tests.acceptance.delivery.faults",
        env={**FAULT, "PG_QUEUE_UNHEALTHY_RESTART_AFTER": "2"},
    )
    first = workers.wait_for(
        lambda: len(found := live_workers(pgdb)) == 2 and found, timeout=60, what="two children"
    )
    workers.wait_for(
        lambda: (now := live_workers(pgdb)) and not set(now) & set(first),
        timeout=60,
        what="both unhealthy children to be replaced by new ones",
    )
    log = supervisor.log(tail=100_000)
    assert "child unhealthy for" in log, log
