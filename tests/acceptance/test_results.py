"""``JobHandle``: status and ``wait`` report outcomes as values and never raise for them."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from pg_queue import results
from pg_queue.core.exceptions import WaitInTransactionError
from pg_queue.models import Job
from pg_queue.producer import call, enqueue
from pg_queue.results import JobHandle
from workers import tasks


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
def test_wait_returns_succeeded_and_failed_outcomes_without_raising(background_worker):
    ok = tasks.add.enqueue(20, 22)
    text = tasks.echo.enqueue("hello")
    structured = tasks.echo.enqueue({"a": [1, None, True]})
    bad = tasks.always_fails.enqueue("nope")
    worker = background_worker("--concurrency", "4")

    outcome = ok.wait(timeout=60)
    assert (outcome.status, outcome.result, outcome.ok, outcome.error) == (
        "succeeded",
        42,
        True,
        "",
    )
    assert outcome.task_id == ok.task_id
    assert outcome.attempts == 1
    assert text.wait(timeout=60).result == "hello"
    assert structured.wait(timeout=60).result == {"a": [1, None, True]}

    failed = bad.wait(timeout=60)
    assert (failed.status, failed.ok, failed.result) == ("failed", False, None)
    assert failed.error == "ValueError: nope"
    assert "Traceback" in failed.traceback
    assert failed.attempts == 2

    code, output = worker.finish()
    assert code == 0, output
    assert ok.status() == "succeeded"
    assert bad.status() == "failed"


@pytest.mark.django_db(transaction=True)
def test_wait_times_out_as_a_value_for_a_job_nobody_runs():
    handle = enqueue("workers.tasks.echo", [1], queue="nobody-listens-here")
    outcome = handle.wait(timeout=0.2)
    assert (outcome.status, outcome.ok, outcome.task_id) == ("timeout", False, handle.task_id)
    assert "still queued" in outcome.error
    assert handle.status() == "queued"


@pytest.mark.django_db(transaction=True)
def test_wait_for_an_unknown_task_id_times_out_and_says_never_seen():
    handle = JobHandle(uuid.uuid4())
    outcome = handle.wait(timeout=0)
    assert outcome.status == "timeout"
    assert "never seen" in outcome.error
    assert handle.status() == "unknown"
    assert handle.outcome().status == "unknown"


@pytest.mark.django_db(transaction=True)
def test_wait_inside_atomic_raises_wait_in_transaction_error():
    with transaction.atomic():
        handle = enqueue("workers.tasks.echo", [1])
        with pytest.raises(WaitInTransactionError, match=r"inside transaction\.atomic\(\)"):
            handle.wait(timeout=5)
    # After the block commits, waiting is allowed (and here times out as a value).
    assert handle.wait(timeout=0).status == "timeout"


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(("hold", "kept"), [(30.0, True), (0.0, False)])
def test_short_waits_keep_djangos_connection_and_long_ones_hand_it_back(hold, kept, monkeypatch):
    """Handing the connection back costs a health-check round trip on the next query (or a
    reconnect with CONN_MAX_AGE=0), so only waits longer than HOLD_CONNECTION_WAIT do it."""
    monkeypatch.setattr(results, "HOLD_CONNECTION_WAIT", hold)
    handle = tasks.echo.enqueue(1)  # no worker runs it: the wait times out
    connection.ensure_connection()
    before = connection.connection
    connection.close_at = time.monotonic() - 1  # as if CONN_MAX_AGE had run out
    assert handle.wait(timeout=0.3).status == "timeout"
    assert (connection.connection is before) is kept


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
@pytest.mark.parametrize(("value", "queries"), [(7, 1), ("x" * 5000, 2)])
def test_a_small_result_comes_with_the_wake_up_and_a_big_one_is_read(
    background_worker, value, queries, monkeypatch
):
    """Request-reply: the ack's NOTIFY carries small results, so the caller's only query is the
    first check (the job is still queued: the worker starts after it); a big result is read."""
    monkeypatch.setattr(results, "WAIT_POLL_LISTENING", 60.0)  # no fallback poll meanwhile
    handle = tasks.echo.enqueue(value)
    background_worker("--concurrency", "2")
    with CaptureQueriesContext(connection) as captured:
        outcome = handle.wait(timeout=60)
    assert (outcome.status, outcome.result, outcome.attempts) == ("succeeded", value, 1)
    assert outcome.task_id == handle.task_id
    assert len(captured.captured_queries) == queries, captured.captured_queries


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
def test_call_arms_the_wake_up_first_so_its_only_query_is_the_insert(
    background_worker, monkeypatch
):
    """``pg_queue.call``: request-reply without a single status query when the small result
    comes with the wake-up (the worker starts only after the call is waiting)."""
    monkeypatch.setattr(results, "WAIT_POLL_LISTENING", 60.0)  # no fallback poll meanwhile
    starter = threading.Timer(0.3, background_worker, args=("--concurrency", "2"))
    starter.start()
    with CaptureQueriesContext(connection) as captured:
        outcome = call("workers.tasks.echo", ["ping"], timeout=60)
    starter.join(timeout=10)
    assert (outcome.status, outcome.result, outcome.attempts) == ("succeeded", "ping", 1)
    assert [q["sql"].split()[:3] for q in captured.captured_queries] == [["WITH", "ins", "AS"]]


@pytest.mark.django_db(transaction=True)
def test_call_inside_atomic_refuses_before_inserting_anything():
    with pytest.raises(WaitInTransactionError), transaction.atomic():
        call("workers.tasks.echo", [1], timeout=1)
    assert not Job.objects.exists()


@pytest.mark.django_db
def test_enqueue_with_a_task_id_uses_it_and_refuses_a_non_uuid():
    chosen = uuid.uuid4()
    assert enqueue("workers.tasks.echo", [1], task_id=chosen).task_id == chosen
    assert Job.objects.get().task_id == chosen
    with pytest.raises(ValueError, match=r"task_id must be a uuid\.UUID"):
        enqueue("workers.tasks.echo", [1], task_id=str(uuid.uuid4()))


def test_result_notifications_deliver_small_results_and_wake_everyone_when_unreadable():
    waiters = results._ResultWaiters()
    mine, other = threading.Event(), threading.Event()
    task_id = uuid.uuid4()
    waiters._events = {str(task_id): {mine}, "someone-else": {other}}
    waiters._on_payload(f'[["{task_id}", 2, {{"a": [1]}}], ["{uuid.uuid4()}", 1, null]]')
    assert mine.is_set()
    assert not other.is_set()
    delivered = waiters.delivered(str(task_id))
    assert (delivered.task_id, delivered.status, delivered.result, delivered.attempts) == (
        task_id,
        "succeeded",
        {"a": [1]},
        2,
    )
    mine.clear()
    waiters._on_payload('[["truncated')  # not understood: every waiter re-checks by query
    assert mine.is_set()
    assert other.is_set()
