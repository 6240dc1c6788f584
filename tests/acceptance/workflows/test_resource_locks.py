"""Resource locks across real worker processes: one holder per key, waiting costs no attempt,
keyless work flows past a held key, and a killed holder frees its key within its lease."""

from __future__ import annotations

import signal

import pytest

from pg_queue.producer import enqueue_many
from pg_queue.workflows import groups
from pg_queue.workflows.locks import resource_lock
from tests.acceptance.delivery.conftest import LEASE, REARM, Db
from tests.acceptance.workflows import tasks
from tests.harness import Workers

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

DRAIN_TIMEOUT = 120.0


def overlaps(db: Db) -> list[tuple[str, int, int]]:
    """Pairs of executions of the same key whose [start, end] intervals overlap."""
    return db.rows(
        """
        SELECT a.resource_key, a.id, b.id FROM wf_exec a JOIN wf_exec b
          ON a.resource_key = b.resource_key AND a.id < b.id
         AND a.started_at < COALESCE(b.ended_at, 'infinity')
         AND b.started_at < COALESCE(a.ended_at, 'infinity')
        """
    )


def ended(db: Db, key: str | None = None) -> int:
    if key is None:
        return int(db.value("SELECT count(*) FROM wf_exec WHERE ended_at IS NOT NULL"))
    return int(
        db.value(
            "SELECT count(*) FROM wf_exec WHERE ended_at IS NOT NULL AND resource_key = %s", [key]
        )
    )


def test_jobs_of_one_key_never_overlap_across_processes_and_waiting_costs_no_attempt(
    workers: Workers, wf: Db
) -> None:
    keys = [f"rag:/data/{c}" for c in "abcd"]
    workers.start("--queues", tasks.QUEUE, "--processes", "2", "--concurrency", "8")
    # Both children up before the jobs exist: the drain takes about a second, less than one
    # child's start can lag the other's on a loaded machine.
    workers.wait_for(lambda: wf.value("SELECT count(*) FROM pg_worker") == 2, 60, "two children")
    enqueue_many([tasks.keyed.job(keys[i % 4], 15) for i in range(200)])

    workers.wait_for(lambda: ended(wf) == 200, DRAIN_TIMEOUT, "200 keyed jobs to run")
    workers.wait_for(
        lambda: wf.value("SELECT count(*) FROM pg_task_result WHERE status = 'succeeded'") == 200,
        30,
        "200 succeeded outcomes",
    )

    assert overlaps(wf) == []
    assert wf.value("SELECT count(DISTINCT worker_id) FROM wf_exec") >= 2, "both processes ran"
    # 200 jobs waited for their keys again and again; each ran once, on its first attempt.
    assert wf.rows("SELECT DISTINCT attempt FROM wf_exec") == [(1,)]
    assert wf.rows("SELECT DISTINCT attempts FROM pg_task_result") == [(1,)]
    assert wf.value("SELECT count(*) FROM pg_resource_lock") == 0


def test_keyless_jobs_run_while_a_key_is_held_and_its_jobs_wait_without_losing_attempts(
    workers: Workers, wf: Db
) -> None:
    key = "rag:/data/held"
    with resource_lock(key, holder_kind="cli", ttl=30) as holder:
        # The key's jobs are queued first, ahead of the keyless ones.
        enqueue_many([tasks.keyed.job(key, 0) for _ in range(20)])
        enqueue_many([tasks.plain.job(0) for _ in range(50)])
        workers.start("--queues", tasks.QUEUE, "--concurrency", "4")

        workers.wait_for(lambda: ended(wf) == 50, DRAIN_TIMEOUT, "the 50 keyless jobs to run")
        workers.wait_for(
            lambda: wf.value("SELECT count(*) FROM pg_queue_message") == 20,
            30,
            "the keyless jobs' acks",
        )
        assert ended(wf, key) == 0
        assert wf.rows("SELECT holder_kind, holder_id FROM pg_resource_lock") == [("cli", holder)]
        assert wf.value("SELECT count(*) FROM pg_queue_message WHERE attempts > 0") == 0

    workers.wait_for(lambda: ended(wf, key) == 20, DRAIN_TIMEOUT, "the key's 20 jobs to run")
    assert overlaps(wf) == []
    assert wf.rows("SELECT DISTINCT attempt FROM wf_exec") == [(1,)]
    workers.wait_for(
        lambda: wf.value("SELECT count(*) FROM pg_resource_lock") == 0, 10, "no lock left"
    )


def test_kill_9_of_a_key_holder_frees_the_key_once_its_lease_expires(
    workers: Workers, wf: Db
) -> None:
    key = "rag:/data/killed"
    handle = groups.group(
        [tasks.keyed_once.job(key, 120_000), tasks.add.job(1, 2)],
        on_success=tasks.summarize.job("killed"),
        on_error=tasks.report.job("killed"),
    ).enqueue()
    holder = workers.start("--queues", tasks.QUEUE, "--concurrency", "4", name="holder")
    workers.wait_for(
        lambda: wf.value("SELECT count(*) FROM wf_exec WHERE resource_key = %s", [key]) == 1,
        60,
        "the slow keyed job to start",
    )
    enqueue_many([tasks.keyed.job(key, 0) for _ in range(5)])
    assert wf.value("SELECT holder_kind FROM pg_resource_lock WHERE resource_key = %s", [key]) == (
        "worker"
    )

    holder.send(signal.SIGKILL)
    holder.wait(10)
    workers.start("--queues", tasks.QUEUE, "--concurrency", "4", name="survivor")

    # The dead holder's lease expires (LEASE), a re-arm pass (REARM) dead-letters its last
    # attempt and frees the key in the same statement; then the key's five jobs run.
    workers.wait_for(lambda: ended(wf, key) == 5, LEASE + REARM + 60, "the key's jobs to run")
    outcome = handle.wait(timeout=30)
    assert outcome.status == "failed"
    assert len(outcome.errors) == 1
    assert outcome.errors[0]["task_id"] == str(handle.task_ids[0])
    assert wf.value("SELECT count(*) FROM pg_queue_dead_letter WHERE resource_key = %s", [key]) == 1
    workers.wait_for(
        lambda: wf.value("SELECT count(*) FROM wf_callback") >= 1, 30, "on_error to run"
    )
    assert wf.rows("SELECT kind, tag FROM wf_callback") == [("error", "killed")]
    assert wf.value("SELECT count(*) FROM pg_resource_lock") == 0
    # The key's jobs started only after the killed holder's lease was given up.
    assert (
        wf.value(
            """
            SELECT count(*) FROM wf_exec WHERE resource_key = %s AND worker_id <> %s
            """,
            [key, wf.value("SELECT worker_id FROM wf_exec WHERE ended_at IS NULL")],
        )
        == 5
    )
