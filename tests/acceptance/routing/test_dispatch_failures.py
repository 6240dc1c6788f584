"""``dispatch`` never raises: every way a call can fail comes back as ``ok=False`` with the
real reason, on both transports."""

from __future__ import annotations

import time
import uuid

import pytest
from django.db import connection

from pg_queue.models import DeadLetter, Job
from pg_queue.routing import DispatchHandle
from tests.acceptance.routing.conftest import flag_off, flag_on

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def test_enqueue_failure_for_a_queue_name_too_long_is_a_failed_result(dispatcher, queues):
    with flag_on():
        result = dispatcher.dispatch(
            "workers.tasks.celery_multiply", [1, 2], queue="q" * 250, timeout=5
        )
    assert (result.ok, result.transport, result.task_id) == (False, "postgres", "")
    assert result.error.startswith("enqueue failed: ")
    assert "queue" in result.error
    assert "250" in result.error
    assert not Job.objects.exists()


@pytest.mark.parametrize("routing", [flag_on, flag_off], ids=["postgres", "celery"])
def test_a_non_json_argument_is_a_failed_result_on_both_transports(
    dispatcher, queues, routing, request
):
    if routing is flag_off:
        request.getfixturevalue("celery_worker")  # skips loudly when RabbitMQ is down
    with routing():
        result = dispatcher.dispatch(
            "workers.tasks.celery_multiply", [object(), 2], queue=queues.main, timeout=5
        )
    assert result.ok is False
    assert result.error.startswith("enqueue failed: ")
    assert "object" in result.error
    assert not Job.objects.exists()


def test_task_raising_on_postgres_carries_the_real_error_text(dispatcher, queues, pg_worker):
    with flag_on():
        result = dispatcher.dispatch(
            "tests.acceptance.routing.tasks.boom",
            ["disk full on /data-7"],
            queue=queues.main,
            timeout=30,
        )
    assert (result.ok, result.transport) == (False, "postgres")
    assert result.error == "RuntimeError: disk full on /data-7"
    assert DeadLetter.objects.filter(task_id=result.task_id, reason="exhausted").exists()


def test_task_raising_on_celery_carries_the_real_error_text(dispatcher, queues, celery_worker):
    with flag_off():
        result = dispatcher.dispatch(
            "tests.acceptance.routing.tasks.boom",
            ["disk full on /data-7"],
            queue=queues.main,
            timeout=30,
        )
    assert (result.ok, result.transport) == (False, "celery")
    assert result.error == "RuntimeError: disk full on /data-7"


def test_no_worker_for_the_queue_times_out_as_a_failed_result_on_postgres(dispatcher, queues):
    with flag_on():
        result = dispatcher.dispatch(
            "workers.tasks.celery_multiply", [1, 2], queue=queues.unserved(), timeout=0.3
        )
    assert (result.ok, result.transport) == (False, "postgres")
    assert result.error.startswith("TimeoutError: ")
    assert "still queued" in result.error
    assert Job.objects.filter(task_id=result.task_id).exists()  # nothing lost


def test_no_worker_for_the_queue_times_out_as_a_failed_result_on_celery(
    dispatcher, celery_worker, unserved_celery_queue
):
    with flag_off():
        result = dispatcher.dispatch(
            "workers.tasks.celery_multiply", [1, 2], queue=unserved_celery_queue, timeout=0.5
        )
    assert (result.ok, result.transport) == (False, "celery")
    assert result.error.startswith("TimeoutError: ")


def test_unknown_task_on_postgres_fails_fast_naming_the_task(dispatcher, queues, pg_worker):
    with flag_on():
        result = dispatcher.dispatch("no.such.task", [1], queue=queues.main, timeout=30)
    assert (result.ok, result.transport) == (False, "postgres")
    assert "no task named 'no.such.task'" in result.error
    assert DeadLetter.objects.get(task_id=result.task_id).reason == "unknown_task"


def test_unknown_task_on_celery_is_a_failed_result_naming_the_task(
    dispatcher, queues, celery_worker
):
    with flag_off():
        result = dispatcher.dispatch("no.such.task", [1], queue=queues.main, timeout=30)
    assert (result.ok, result.transport) == (False, "celery")
    assert "NotRegistered" in result.error
    assert "no.such.task" in result.error


def test_malformed_stored_result_is_a_failed_result_not_an_exception():
    task_id = str(uuid.uuid4())
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO pg_task_result (task_id, status, result, error, traceback, task_name, "
            "queue_name, attempts, finished_at, expires_at) VALUES (%s, 'bogus', '{\"a\": 1}', "
            "'', '', 'x', 'q', 1, now(), now() + interval '1 hour')",
            [task_id],
        )
    result = DispatchHandle(task_id, "postgres").wait(1.0)
    assert (result.ok, result.task_id, result.transport) == (False, task_id, "postgres")
    assert "bogus" in result.error


def test_malformed_stored_result_is_reported_at_once_not_after_the_timeout():
    task_id = str(uuid.uuid4())
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO pg_task_result (task_id, status, result, error, traceback, task_name, "
            "queue_name, attempts, finished_at, expires_at) VALUES (%s, 'bogus', NULL, "
            "'', '', 'x', 'q', 1, now(), now() + interval '1 hour')",
            [task_id],
        )
    started = time.monotonic()
    result = DispatchHandle(task_id, "postgres").wait(3.0)
    assert time.monotonic() - started < 1.0
    assert result.error == "malformed result: unexpected status 'bogus'"


def test_dispatch_inside_atomic_is_refused_as_a_failed_result(dispatcher, queues):
    from django.db import transaction

    with flag_on(), transaction.atomic():
        result = dispatcher.dispatch(
            "workers.tasks.celery_multiply", [1, 2], queue=queues.main, timeout=1
        )
    assert result.ok is False
    assert "inside transaction.atomic()" in result.error
    assert not Job.objects.exists()


def test_a_stored_result_no_decoder_can_return_exactly_is_a_failed_result(dispatcher):
    """A result row written by other means (an older version, raw SQL) holding an integer past
    64 bits: the handle reports the failure instead of ok=True with a result of None."""
    task_id = uuid.uuid4()
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO pg_task_result (task_id, status, result, error, traceback, task_name, "
            "queue_name, attempts, finished_at, expires_at) VALUES (%s, 'succeeded', "
            "'123456789012345678901234567890'::jsonb, '', '', 't', 'q', 1, now(), "
            "now() + interval '1 hour')",
            [task_id],
        )
    result = DispatchHandle(str(task_id), "postgres", None, "default").wait(timeout=1)
    assert (result.ok, result.transport) == (False, "postgres")
    assert "could not be decoded" in result.error, result.error
