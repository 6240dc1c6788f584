"""Celery-side handles behave like Postgres ones from any thread, with ``rpc://`` results.

The package's Celery worker and this process's app use the example project's default result
backend, ``rpc://``: Celery sends each reply to a queue named after the sending *thread*, and only
that thread's consumer reads it. These tests run blocking calls, handles and status reads from
threads other than the one that sent the call, from short-lived threads started one after
another (a new thread often reuses a dead one's ident, hence its reply queue), and check that a
wait returns by its deadline on both transports.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.acceptance.routing.conftest import flag_off, flag_on

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

TASK = "workers.tasks.celery_multiply"
BOOM = "tests.acceptance.routing.tasks.boom"
SLEEPY = "tests.acceptance.routing.tasks.sleep_then_return"
#: Seconds a call that a worker serves gets to finish.
WAIT = 30.0
#: How late a wait may return after its timeout (a query or a broker round trip, not a poll).
LATE = 0.3


@pytest.fixture(autouse=True)
def _rpc_backend() -> None:
    from backend.celery import app

    assert app.conf.result_backend.startswith("rpc"), app.conf.result_backend


def in_thread(fn: Callable[[], Any]) -> Any:
    """Run ``fn`` in a new thread (closing its database connection) and return its value."""
    from django.db import connection

    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # re-raised in the caller
            box["error"] = exc
        finally:
            connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(WAIT + 10)
    assert not thread.is_alive(), "the thread did not finish"
    if "error" in box:
        raise box["error"]
    return box["value"]


def poll_status(handle: Any, wanted: str, seconds: float = 10.0) -> str:
    deadline = time.monotonic() + seconds
    status = handle.status()
    while status != wanted and time.monotonic() < deadline:
        time.sleep(0.05)
        status = handle.status()
    return status


def test_status_of_finished_celery_calls_read_in_the_sending_thread_after_a_blocking_wait(
    dispatcher, queues, celery_worker
):
    def scenario() -> tuple[str, str]:
        with flag_off():
            assert dispatcher.dispatch(TASK, [6, 7], queue=queues.main, timeout=WAIT).ok
            good = dispatcher.dispatch_async(TASK, [6, 7], queue=queues.main)
            bad = dispatcher.dispatch_async(BOOM, ["status after a wait"], queue=queues.main)
        return poll_status(good, "succeeded"), poll_status(bad, "failed")

    assert in_thread(scenario) == ("succeeded", "failed")


def test_status_reads_the_same_after_the_result_was_waited_for(dispatcher, queues, celery_worker):
    with flag_off():
        handle = dispatcher.dispatch_async(TASK, [6, 7], queue=queues.main)
    assert handle.wait(WAIT).result == 42
    assert handle.status() == "succeeded"
    assert in_thread(handle.status) == "succeeded"
    assert handle.wait(1).result == 42  # a second wait reads the same result


def test_blocking_dispatch_from_short_lived_threads_one_after_another_all_succeed(
    dispatcher, queues, celery_worker
):
    def call(i: int) -> Callable[[], Any]:
        def run() -> Any:
            with flag_off():
                return dispatcher.dispatch(TASK, [i, 2], queue=queues.main, timeout=10)

        return run

    results = [in_thread(call(i)) for i in range(6)]
    assert [(r.ok, r.result, r.error) for r in results] == [(True, 2 * i, "") for i in range(6)]


def test_a_celery_handle_sent_by_one_thread_is_waited_on_by_another(
    dispatcher, queues, celery_worker
):
    def send() -> Any:
        with flag_off():
            return (
                dispatcher.dispatch_async(TASK, [6, 7], queue=queues.main),
                dispatcher.dispatch_async(BOOM, ["read elsewhere"], queue=queues.main),
            )

    good, bad = in_thread(send)
    assert good.transport == "celery"
    waited = in_thread(lambda: good.wait(WAIT))
    assert (waited.ok, waited.result, waited.error) == (True, 42, "")
    failed = in_thread(lambda: bad.wait(WAIT))
    assert (failed.ok, failed.error) == (False, "RuntimeError: read elsewhere")
    assert in_thread(lambda: poll_status(bad, "failed")) == "failed"
    assert good.status() == "succeeded"


def test_two_threads_waiting_on_one_celery_handle_both_get_the_result(
    dispatcher, queues, celery_worker
):
    with flag_off():
        handle = dispatcher.dispatch_async(TASK, [6, 7], queue=queues.main)
    box: list[Any] = []
    threads = [threading.Thread(target=lambda: box.append(handle.wait(WAIT))) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT + 5)
    assert [(r.ok, r.result) for r in box] == [(True, 42), (True, 42)]


@pytest.mark.parametrize("routing", [flag_on, flag_off], ids=["postgres", "celery"])
def test_dispatch_returns_by_its_timeout_on_both_transports(dispatcher, queues, routing, request):
    queue = queues.unserved("deadline")
    if routing is flag_off:
        request.getfixturevalue("celery_worker")  # skips loudly when RabbitMQ is down
        queue = request.getfixturevalue("unserved_celery_queue")
    with routing():
        started = time.monotonic()
        result = dispatcher.dispatch(TASK, [1, 2], queue=queue, timeout=0.5)
        elapsed = time.monotonic() - started
        handle = dispatcher.dispatch_async(TASK, [1, 2], queue=queue)
    assert (result.ok, result.error.startswith("TimeoutError: ")) == (False, True), result
    assert elapsed < 0.5 + LATE, elapsed
    started = time.monotonic()
    waited = handle.wait(0.5)
    elapsed = time.monotonic() - started
    assert (waited.ok, waited.error.startswith("TimeoutError: ")) == (False, True), waited
    assert 0.5 <= elapsed < 0.5 + LATE, elapsed


def test_a_celery_handle_rebuilt_from_the_task_id_reads_a_result_nobody_read_yet(
    dispatcher, queues, celery_worker
):
    from pg_queue.routing import DispatchHandle

    with flag_off():
        sent = dispatcher.dispatch_async(TASK, [6, 7], queue=queues.main)
    rebuilt = DispatchHandle(sent.task_id, "celery", dispatcher.celery_app)
    assert in_thread(lambda: rebuilt.wait(WAIT)).result == 42


def test_a_celery_handle_for_a_call_the_dispatcher_did_not_send_refuses_naming_the_fix(
    dispatcher, queues, celery_worker
):
    """With rpc:// Celery replies to the sending thread: no handle can read such a call."""
    from pg_queue.routing import DispatchHandle

    sent = dispatcher.celery_app.send_task(TASK, args=[6, 7], queue=queues.main)
    handle = DispatchHandle(str(sent.id), "celery", dispatcher.celery_app)
    result = handle.wait(1)
    assert (result.ok, result.transport) == (False, "celery")
    assert result.error.startswith("ReplyUnavailable: reply queue 'pg_queue-reply."), result.error
    assert "not sent by RoutingDispatcher" in result.error
    assert "use a result backend that stores them" in result.error
    assert handle.status() == "unknown"
    assert sent.get(timeout=WAIT) == 42  # the sending thread itself still reads it


@pytest.mark.parametrize("routing", [flag_on, flag_off], ids=["postgres", "celery"])
def test_a_wait_that_timed_out_loses_nothing_a_later_wait_reads_the_result(
    dispatcher, queues, pg_worker, routing, request
):
    if routing is flag_off:
        request.getfixturevalue("celery_worker")
    with routing():
        handle = dispatcher.dispatch_async(SLEEPY, [1.5, "late"], queue=queues.main)
    early = handle.wait(0.3)
    assert (early.ok, early.error.startswith("TimeoutError: ")) == (False, True), early
    assert handle.status() in ("queued", "running")
    late = in_thread(lambda: handle.wait(WAIT))
    assert (late.ok, late.result) == (True, "late"), late
    assert handle.status() == "succeeded"
