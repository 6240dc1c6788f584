"""No job's data and no user code can stop a worker thread or strand a job.

Each test gives a real ``run_pg_worker`` subprocess one poison job among normal ones, with one
task thread (``--concurrency 1``), so a thread that died would leave every later job unrun and
the burst worker would never exit. The poison job must end with a readable outcome (retried or
dead-lettered with its reason), the normal jobs must succeed, and the worker must exit 0.
"""

from __future__ import annotations

import uuid

import pytest

from pg_queue.producer import enqueue_many
from tests.acceptance.delivery import poison
from tests.acceptance.delivery.conftest import LEASE, Db, outcome_counts
from tests.harness import Workers

#: Seconds a burst worker gets for a handful of jobs (it needs about one).
BURST_TIMEOUT = 30.0
NORMAL_JOBS = 5
#: How many lease periods the long job of the heartbeat test runs.
LEASE_MULTIPLE = 3

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def run_burst(workers: Workers, *flags: str, env: dict[str, str] | None = None) -> str:
    """One burst worker with a single task thread over the poison queue; returns its log."""
    proc = workers.start(
        "--queues",
        "poison",
        "--concurrency",
        "1",
        "--include",
        "tests.acceptance.delivery.poison",
        *flags,
        burst=True,
        env=env,
    )
    code = proc.wait(timeout=BURST_TIMEOUT)
    assert code == 0, proc.log()
    return proc.log()


def enqueue_with_normals(*poison_jobs: object) -> list[uuid.UUID]:
    """The poison jobs first (so they are claimed in the same batch), then the normal ones."""
    handles = enqueue_many([*poison_jobs, *(poison.ok.job(i) for i in range(NORMAL_JOBS))])  # type: ignore[list-item]
    return [h.task_id for h in handles]


def dead_letter(pgdb: Db, task_id: uuid.UUID) -> dict[str, object]:
    row = pgdb.one(
        "SELECT reason, last_error, attempts FROM pg_queue_dead_letter WHERE task_id = %s",
        [task_id],
    )
    assert row is not None, f"no dead letter for {task_id}: {outcome_counts(pgdb)}"
    return {"reason": row[0], "last_error": row[1], "attempts": row[2]}


def normal_results(pgdb: Db) -> list[int]:
    rows = pgdb.rows(
        "SELECT result FROM pg_task_result WHERE task_name = %s AND status = 'succeeded'",
        [poison.ok.name],
    )
    return sorted(r[0] for r in rows)


def test_result_with_nul_is_dead_lettered_and_the_rest_succeed(pgdb, side_tables, workers):
    poison_id, *_ = enqueue_with_normals(poison.returns_nul.job())
    log = run_burst(workers)

    assert normal_results(pgdb) == list(range(NORMAL_JOBS)), log
    letter = dead_letter(pgdb, poison_id)
    assert letter["reason"] == "unstorable", letter
    assert str(letter["last_error"]).startswith("result not storable:"), letter
    assert "NUL" in str(letter["last_error"]), letter
    failed = pgdb.one("SELECT status, error FROM pg_task_result WHERE task_id = %s", [poison_id])
    assert failed is not None, outcome_counts(pgdb)
    assert failed[0] == "failed", failed
    assert pgdb.value("SELECT count(*) FROM pg_queue_message") == 0


def test_result_over_result_max_bytes_is_dead_lettered_once_not_retried(pgdb, side_tables, workers):
    poison_id, *_ = enqueue_with_normals(poison.returns_a_lot.job(5000))
    log = run_burst(workers, env={"PG_QUEUE_RESULT_MAX_BYTES": "4096"})

    assert normal_results(pgdb) == list(range(NORMAL_JOBS)), log
    letter = dead_letter(pgdb, poison_id)
    assert letter["reason"] == "unstorable", letter
    assert letter["attempts"] == 1, letter  # the same run would give the same result
    assert letter["last_error"] == (
        "result not storable: 5002 bytes of JSON exceed RESULT_MAX_BYTES (4096)"
    ), letter


def test_error_text_with_nul_is_written_readably_on_retry_and_dead_letter(
    pgdb, side_tables, workers
):
    poison_id, *_ = enqueue_with_normals(poison.raises_with_nul.job())
    log = run_burst(workers)

    assert normal_results(pgdb) == list(range(NORMAL_JOBS)), log
    letter = dead_letter(pgdb, poison_id)
    assert letter["reason"] == "exhausted", letter
    assert letter["attempts"] == 2, letter  # the retry was written too
    assert "bad byte" in str(letter["last_error"]), letter
    assert "\\x00" in str(letter["last_error"]), letter


@pytest.mark.parametrize("task", ["retries_forever", "retries_past_the_calendar"])
def test_retry_delay_postgres_cannot_represent_is_dead_lettered(pgdb, side_tables, workers, task):
    poison_id, *_ = enqueue_with_normals(getattr(poison, task).job())
    log = run_burst(workers)

    assert normal_results(pgdb) == list(range(NORMAL_JOBS)), log
    letter = dead_letter(pgdb, poison_id)
    assert letter["reason"] == "unstorable", letter
    assert "delay" in str(letter["last_error"]), letter


def test_retry_backoff_callable_that_raises_still_retries(pgdb, side_tables, workers):
    poison_id, *_ = enqueue_with_normals(poison.fails_with_broken_backoff.job())
    log = run_burst(workers)

    assert normal_results(pgdb) == list(range(NORMAL_JOBS)), log
    letter = dead_letter(pgdb, poison_id)
    assert letter["reason"] == "exhausted", letter
    assert letter["attempts"] == 2, letter
    assert "RuntimeError: task failed" in str(letter["last_error"]), letter
    assert "retry_backoff" in log, log
    assert "ZeroDivisionError" in log, log


def test_backoff_of_a_very_late_attempt_does_not_overflow(pgdb, side_tables, workers):
    poison_id, *_ = enqueue_with_normals(poison.fails_late.job())
    pgdb.rows("UPDATE pg_queue_message SET attempts = 1100 WHERE task_id = %s", [poison_id])
    log = run_burst(workers)

    assert normal_results(pgdb) == list(range(NORMAL_JOBS)), log
    row = pgdb.one(
        "SELECT state, attempts, last_error, "
        "EXTRACT(EPOCH FROM available_at - now()) FROM pg_queue_message WHERE task_id = %s",
        [poison_id],
    )
    assert row is not None, outcome_counts(pgdb)
    state, attempts, last_error, due_in = row
    assert (state, attempts) == ("ready", 1101), row
    assert last_error == "RuntimeError: failed once more", row
    # The backoff is capped (RETRY_BACKOFF_MAX, 600 s by default; equal jitter: half to all).
    assert 250 < due_in <= 600, row


@pytest.mark.parametrize(
    ("task", "error"),
    [
        ("raises_system_exit", "SystemExit: 3"),
        ("raises_keyboard_interrupt", "KeyboardInterrupt"),
        ("raises_base_exception", "CustomBaseException: not an Exception"),
    ],
)
def test_base_exceptions_from_task_code_become_failures(pgdb, side_tables, workers, task, error):
    poison_id, *_ = enqueue_with_normals(getattr(poison, task).job())
    log = run_burst(workers)

    assert normal_results(pgdb) == list(range(NORMAL_JOBS)), log
    letter = dead_letter(pgdb, poison_id)
    assert letter["reason"] == "exhausted", letter
    assert letter["last_error"] == error, letter


#: Payloads PostgreSQL stores but no decoder can return exactly: a number orjson refuses
#: ("infinity when parsed as double"), and an integer orjson would silently turn into a float.
UNDECODABLE = {
    "too_large_for_a_double": '{"args": [1e400], "kwargs": {}}',
    "beyond_64_bits": '{"args": [123456789012345678901234567890], "kwargs": {}}',
}


def insert_raw(pgdb: Db, payload: str, **columns: object) -> uuid.UUID:
    """A message written by SQL, as an older version or another tool could have written it."""
    task_id = uuid.uuid4()
    values = {
        "task_id": task_id,
        "queue_name": "poison",
        "task_name": poison.ok.name,
        "payload": payload,
        **columns,
    }
    names = ", ".join(values)
    params = ", ".join(f"%({name})s" for name in values)
    pgdb.rows(f"INSERT INTO pg_queue_message ({names}) VALUES ({params})", values)
    return task_id


def test_undecodable_payloads_are_dead_lettered_one_by_one(pgdb, side_tables, workers):
    poison_ids = {name: insert_raw(pgdb, payload) for name, payload in UNDECODABLE.items()}
    enqueue_with_normals()
    log = run_burst(workers)

    assert normal_results(pgdb) == list(range(NORMAL_JOBS)), log
    for name, task_id in poison_ids.items():
        letter = dead_letter(pgdb, task_id)
        assert letter["reason"] == "undecodable", (name, letter)
        assert letter["last_error"], (name, letter)
    assert pgdb.value("SELECT count(*) FROM pg_queue_message") == 0


def test_expired_last_attempt_with_undecodable_payload_does_not_stop_lease_renewal(
    pgdb, side_tables, workers
):
    """Re-arm dead-letters it; the heartbeat keeps renewing the worker's own long job."""
    long_job = LEASE_MULTIPLE * LEASE
    (long_id,) = [h.task_id for h in enqueue_many([poison.sleeps.job(long_job)])]
    stuck = insert_raw(
        pgdb,
        UNDECODABLE["too_large_for_a_double"],
        state="claimed",
        attempts=3,
        max_attempts=3,
        lease_token=uuid.uuid4(),
        worker_id="dead-worker",
        vt="-infinity",
    )
    worker = workers.start(
        "--queues", "poison", "--concurrency", "2", "--include", "tests.acceptance.delivery.poison"
    )
    workers.wait_for(
        lambda: (
            pgdb.value("SELECT state FROM pg_queue_message WHERE task_id = %s", [long_id])
            == "claimed"
        ),
        timeout=30,
        what="the long job to start",
    )
    workers.wait_for(
        lambda: pgdb.value("SELECT reason FROM pg_queue_dead_letter WHERE task_id = %s", [stuck]),
        timeout=30,
        what="the expired poison claim to be dead-lettered",
    )
    # Two leases later, the long job's lease is still ahead of the database clock.
    workers.wait_for(
        lambda: pgdb.value(
            "SELECT now() - enqueued_at > make_interval(secs => %s) AND vt > now() "
            "FROM pg_queue_message WHERE task_id = %s",
            [2 * LEASE, long_id],
        ),
        timeout=30,
        what="the long job's lease to be renewed past two lease periods",
    )
    workers.wait_for(
        lambda: (
            pgdb.one("SELECT status, attempts FROM pg_task_result WHERE task_id = %s", [long_id])
            == ("succeeded", 1)
        ),
        timeout=30,
        what="the long job to succeed on its first attempt",
    )
    assert "lease lost" not in worker.log(tail=100_000), worker.log()
