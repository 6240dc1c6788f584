"""The process-wide result wake-ups: they recover from failures, and decode like polling does.

Jobs are enqueued through Django, claimed and acked on a real ``worker_connection()`` with the
worker's own statements (``queries.job_claim`` / ``job_ack``), so the NOTIFY a waiter
receives is the one a worker sends.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from django.db import connection

from pg_queue import results
from pg_queue.core.outcomes import Success
from pg_queue.db import connection as db_connection
from pg_queue.db import queries
from pg_queue.results import JobHandle, JobOutcome
from workers import tasks

pytestmark = pytest.mark.django_db(transaction=True)

REAL_CONNECT = db_connection.worker_connection
#: Longer than any test runs: a wait that returns early was woken by its NOTIFY, not a poll.
NO_FALLBACK_POLL = 120.0
BEYOND_64_BITS = "123456789012345678901234567890"


class Database:
    """The connect function the result listener uses, with real ways to fail.

    ``unreachable``: a closed port, as when the database is briefly down. ``probe_lost``: the
    self-probe's NOTIFY goes to another database, so it never comes back (as when it times out
    under load, or a pooler routes it elsewhere).
    """

    def __init__(self) -> None:
        self.mode = "up"
        self.connects = 0
        self._probe_next = False

    def __call__(self, alias: str = "default", **kwargs: Any) -> psycopg.Connection[Any]:
        self.connects += 1
        if self.mode == "unreachable":
            return psycopg.connect(host="127.0.0.1", port=1, dbname="x", connect_timeout=2)
        if self.mode == "probe_lost":
            # A listener's start connects twice: to LISTEN, then to send its probe.
            self._probe_next = not self._probe_next
            if not self._probe_next:
                params = connection.get_connection_params()
                return psycopg.connect(
                    host=params.get("host"),
                    port=params.get("port"),
                    user=params.get("user"),
                    password=params.get("password"),
                    dbname="postgres",
                    autocommit=True,
                )
        return REAL_CONNECT(alias, **kwargs)


@pytest.fixture
def database(monkeypatch) -> Iterator[Database]:
    """A private result listener (not the process-wide one) whose connections we can break."""
    db = Database()
    monkeypatch.setattr(db_connection, "worker_connection", db)
    monkeypatch.setattr(results, "_waiters", results._ResultWaiters())
    yield db
    results._waiters.stop()


@pytest.fixture
def conn() -> Iterator[psycopg.Connection[Any]]:
    with REAL_CONNECT() as c:
        yield c


def finish(conn: psycopg.Connection[Any], queue: str, result_json: str, *, notify: bool) -> None:
    """Claim the one job of ``queue`` and ack it with ``result_json``, as a worker does."""
    [msg] = queries.job_claim(conn, queue=queue, limit=1, lease=60, worker_id="test")
    assert queries.job_ack(
        conn, [Success(msg, result_json, msg.claimed_at)], ttl=60, notify=notify
    ) == {msg.msg_id}


def new_queue() -> str:
    return f"waiters-{uuid.uuid4().hex[:8]}"


def armed_once_working(timeout: float = 15.0) -> bool:
    """Whether a wait gets a wake-up again within ``timeout`` (retries happen on waits)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with results.armed_wait(uuid.uuid4()) as armed:
            if armed.woken is not None:
                return True
        time.sleep(0.02)
    return False


# --- 1. a transient failure does not turn wake-ups off for the life of the process ----------


@pytest.mark.parametrize("failure", ["unreachable", "probe_lost"])
def test_result_wake_ups_come_back_after_a_transient_listener_failure(
    database, conn, monkeypatch, failure
):
    monkeypatch.setattr(results, "RESULT_LISTEN_RETRY_MIN", 0.05, raising=False)
    monkeypatch.setattr(results, "RESULT_LISTEN_RETRY_MAX", 0.2, raising=False)
    queue = new_queue()
    database.mode = failure

    # While wake-ups are off, a wait still gets its result: it polls.
    handle = tasks.echo.using(queue=queue).enqueue(1)
    with results.armed_wait(handle.task_id) as armed:
        assert armed.woken is None
        finish(conn, queue, "1", notify=False)
        assert armed.wait(timeout=10).result == 1

    database.mode = "up"
    assert armed_once_working(), "wake-ups stayed off after the database answered again"

    # And the wake-up really works again: the result comes with the NOTIFY, long before a poll.
    monkeypatch.setattr(results, "WAIT_POLL_LISTENING", NO_FALLBACK_POLL)
    handle = tasks.echo.using(queue=queue).enqueue(2)
    with results.armed_wait(handle.task_id) as armed:
        assert armed.woken is not None
        finish(conn, queue, "2", notify=True)
        started = time.monotonic()
        outcome = armed.wait(timeout=NO_FALLBACK_POLL)
    assert (outcome.status, outcome.result) == ("succeeded", 2)
    assert time.monotonic() - started < 10.0


def test_listener_retries_are_spaced_by_a_bounded_backoff(database, monkeypatch):
    """While the database stays away, retries slow down but never past RESULT_LISTEN_RETRY_MAX:
    doubling without a bound (from 0.01 s) would make at most 8 attempts in 1.5 s."""
    monkeypatch.setattr(results, "RESULT_LISTEN_RETRY_MIN", 0.01, raising=False)
    monkeypatch.setattr(results, "RESULT_LISTEN_RETRY_MAX", 0.02, raising=False)
    database.mode = "unreachable"
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        with results.armed_wait(uuid.uuid4()) as armed:
            assert armed.woken is None
        time.sleep(0.005)
    assert database.connects >= 15, database.connects


def test_a_retry_while_connecting_hangs_does_not_hold_up_waits(database, monkeypatch):
    """Only the very first start waits for the probe; a retry runs behind the waits, which poll
    meanwhile, even when connecting takes seconds."""
    monkeypatch.setattr(results, "RESULT_LISTEN_RETRY_MIN", 0.0, raising=False)
    database.mode = "unreachable"
    with results.armed_wait(uuid.uuid4()) as armed:  # the first start fails at once
        assert armed.woken is None

    def slow(alias: str = "default", **kwargs: Any) -> psycopg.Connection[Any]:
        time.sleep(3.0)  # as long as a connect to an unresponsive host can take
        return REAL_CONNECT(alias, **kwargs)

    monkeypatch.setattr(db_connection, "worker_connection", slow)
    time.sleep(0.05)
    for _ in range(3):
        started = time.monotonic()
        with results.armed_wait(uuid.uuid4()) as armed:
            assert armed.woken is None
        assert time.monotonic() - started < 0.5
    assert armed_once_working(), "the retry that was slow to connect never took over"


# --- 3. one JSON decoder: the NOTIFY path and polling agree -----------------------------------


def outcome_by_notify(conn: psycopg.Connection[Any], result_json: str, monkeypatch) -> JobOutcome:
    """The outcome a waiter gets when the NOTIFY wakes it (the result may ride along)."""
    monkeypatch.setattr(results, "WAIT_POLL_LISTENING", NO_FALLBACK_POLL)
    queue = new_queue()
    handle = tasks.echo.using(queue=queue).enqueue(0)
    with results.armed_wait(handle.task_id) as armed:
        assert armed.woken is not None, "wake-ups are off: this test needs LISTEN/NOTIFY"
        finish(conn, queue, result_json, notify=True)
        started = time.monotonic()
        outcome = armed.wait(timeout=NO_FALLBACK_POLL)
    assert time.monotonic() - started < 10.0, "woken by the fallback poll, not the NOTIFY"
    return outcome


def stored_by_sql(result_sql: str) -> uuid.UUID:
    """A succeeded result row written directly, as old code or a hand repair could have."""
    task_id = uuid.uuid4()
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO pg_task_result (task_id, status, result, error, traceback, task_name, "
            "queue_name, attempts, finished_at, expires_at) VALUES (%s, 'succeeded', "
            f"'{result_sql}'::jsonb, '', '', 'x', 'q', 1, now(), now() + interval '1 hour')",
            [task_id],
        )
    return task_id


def test_an_integer_beyond_64_bits_is_reported_the_same_by_polling_and_by_notify(conn, monkeypatch):
    polled = JobHandle(stored_by_sql(BEYOND_64_BITS)).wait(timeout=5)
    notified = outcome_by_notify(conn, BEYOND_64_BITS, monkeypatch)

    for outcome in (polled, notified):
        assert outcome.status == "succeeded"  # what the stored row says
        assert outcome.result is None
        assert not outcome.ok
        assert outcome.error.startswith("the result could not be decoded: ")
        assert "64-bit" in outcome.error
    assert (notified.status, notified.result, notified.error) == (
        polled.status,
        polled.result,
        polled.error,
    )


def test_an_undecodable_result_is_an_outcome_from_status_and_outcome_too():
    handle = JobHandle(stored_by_sql(BEYOND_64_BITS))
    assert handle.status() == "succeeded"
    outcome = handle.outcome()
    assert (outcome.status, outcome.result, outcome.ok) == ("succeeded", None, False)
    assert "could not be decoded" in outcome.error


@pytest.mark.parametrize(
    "result_json",
    [
        str(2**63 - 1),
        '{"big": -9223372036854775808, "f": 0.1, "e": 1.5e-7, "s": "12345678901234567890123"}',
        '[1.0, 2.50, -0.0, "\\u00e9\\ud83d\\ude00", {"a": {"b": [null, true]}}]',
    ],
    ids=["int64-max", "mixed-with-long-digit-string", "floats-and-unicode"],
)
def test_notify_and_polling_decode_a_stored_result_to_the_same_value(
    conn, monkeypatch, result_json
):
    notified = outcome_by_notify(conn, result_json, monkeypatch)
    polled = JobHandle(notified.task_id).outcome()
    assert notified == polled
    assert notified.ok
