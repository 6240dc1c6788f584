"""A whole drain through a real PgBouncer in transaction pooling mode.

Behind transaction pooling consecutive statements of one client may run on different server
connections, so the hot path must hold no session state between statements: no prepared
statements, no session SET, no LISTEN. The workers run with the default settings (NOTIFY and
PREPARED_STATEMENTS on): they must find the pooler by themselves and turn all three off.
"""

from __future__ import annotations

import re
import signal

import pytest
from django.db import connection

from pg_queue.producer import enqueue_many
from tests.acceptance.delivery.conftest import outcome_counts
from tests.acceptance.delivery.pgbouncer import PgBouncer
from workers import tasks as example_tasks

#: The last line a worker prints: its counters.
DONE_LINE = r"pg_queue worker done: .*\bsucceeded=(\d+).*\breconnects=(\d+)"


@pytest.fixture
def pgbouncer(transactional_db):
    """A PgBouncer (pool_mode = transaction) in front of the test database."""
    settings = connection.settings_dict
    host = str(settings.get("HOST") or "")
    if not host or host.startswith("/"):
        pytest.skip(
            "PGBOUNCER TEST SKIPPED: the test database is reached through a Unix socket "
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


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_drain_through_pgbouncer_transaction_pooling(pgbouncer, pgdb, workers):
    jobs = 3000
    env = {"DATABASE_URL": pgbouncer.url}  # NOTIFY and PREPARED_STATEMENTS at their defaults
    procs = [
        workers.start("--concurrency", "4", "--batch-size", "50", env=env, name=f"pgb-{i}")
        for i in range(2)
    ]
    workers.wait_for(
        lambda: pgdb.value("SELECT count(*) FROM pg_worker") == 2,
        timeout=60,
        what="both workers to register through PgBouncer",
    )
    handles = enqueue_many([example_tasks.echo.job(i) for i in range(jobs)])
    workers.wait_for(
        lambda: pgdb.value("SELECT count(*) FROM pg_task_result") == jobs,
        timeout=120,
        what=lambda: f"the drain: {outcome_counts(pgdb)}\n--- pgbouncer ---\n{pgbouncer.log()}",
        interval=0.1,
    )
    transactions = pgbouncer.stats()[pgbouncer.dbname]["total_xact_count"]
    for proc in procs:
        proc.send(signal.SIGTERM)
    for proc in procs:
        assert proc.wait(timeout=30) == 0, proc.log()

    counts = outcome_counts(pgdb)
    assert counts == {"succeeded": jobs, "messages": 0, "dead_letters": 0}, workers.logs()
    outcomes = dict(pgdb.rows("SELECT task_id, result FROM pg_task_result"))
    assert set(outcomes) == {h.task_id for h in handles}
    assert sorted(outcomes.values()) == list(range(jobs))
    # The traffic really went through PgBouncer, and both workers did part of the work.
    print(f"pgbouncer: {transactions} transactions pooled for {jobs} jobs")
    assert transactions > 2 * jobs / 50
    for proc in procs:
        assert "transaction pooling detected" in proc.log(tail=100_000), proc.log()
        done = re.search(
            r"pg_queue worker done: .*\bsucceeded=(\d+).*\breconnects=(\d+)", proc.log()
        )
        assert done, proc.log()
        assert int(done.group(1)) > 0, proc.log()
        assert int(done.group(2)) == 0, proc.log()
