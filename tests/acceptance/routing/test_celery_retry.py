"""``self.retry(countdown=..., max_retries=...)`` in a Celery task, run by the Postgres worker."""

from __future__ import annotations

import contextlib
import itertools
import uuid

import pytest
from django.db import DatabaseError, connection

from pg_queue.models import DeadLetter, Job, TaskResult
from tests.acceptance.routing import tasks as routing_tasks
from tests.acceptance.routing.conftest import flag_off, flag_on

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


@pytest.fixture
def attempts():
    """The side table the retrying tasks record each attempt in (database clock)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE TABLE IF NOT EXISTS routing_attempt "
            "(key text NOT NULL, retries int NOT NULL, at timestamptz NOT NULL)"
        )

    def read(key: str) -> list[tuple[int, float]]:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT retries, extract(epoch FROM at)::float8 FROM routing_attempt "
                "WHERE key = %s ORDER BY at",
                [key],
            )
            return [(int(r), float(t)) for r, t in cursor.fetchall()]

    yield read
    with contextlib.suppress(DatabaseError), connection.cursor() as cursor:
        cursor.execute("DROP TABLE IF EXISTS routing_attempt")


def test_retry_with_countdown_waits_that_long_then_succeeds(
    dispatcher, queues, pg_worker, attempts
):
    key, countdown = uuid.uuid4().hex, 0.6
    with flag_on():
        result = dispatcher.dispatch(
            "tests.acceptance.routing.tasks.retry_then_succeed",
            [key, 2, countdown],
            queue=queues.main,
            timeout=30,
        )
    assert (result.ok, result.transport, result.result) == (True, "postgres", {"attempts": 3})
    seen = attempts(key)
    assert [r for r, _ in seen] == [0, 1, 2]  # request.retries counts earlier attempts
    gaps = [b - a for (_, a), (_, b) in itertools.pairwise(seen)]
    assert all(countdown <= gap < countdown + 2.0 for gap in gaps), gaps
    assert TaskResult.objects.get(task_id=result.task_id).attempts == 3


def test_retry_past_max_retries_ends_failed_and_dead_lettered(
    dispatcher, queues, pg_worker, attempts
):
    key = uuid.uuid4().hex
    with flag_on():
        result = dispatcher.dispatch(
            "tests.acceptance.routing.tasks.retry_forever",
            [key, 0.2, 1],
            queue=queues.main,
            timeout=30,
        )
    assert (result.ok, result.transport) == (False, "postgres")
    assert "MaxRetriesExceededError" in result.error
    assert [r for r, _ in attempts(key)] == [0, 1]  # the first run plus max_retries=1 retry
    letter = DeadLetter.objects.get(task_id=result.task_id)
    assert (letter.reason, letter.attempts) == ("exhausted", 2)
    assert not Job.objects.filter(task_id=result.task_id).exists()


def test_retry_with_a_higher_max_retries_than_the_task_succeeds_on_celery(
    dispatcher, queues, celery_worker
):
    """The reference behaviour: Celery honours ``self.retry(max_retries=...)`` of the call."""
    with flag_off():
        result = dispatcher.dispatch(
            "tests.acceptance.routing.tasks.retry_past_task_limit",
            [2],
            queue=queues.main,
            timeout=30,
        )
    assert (result.ok, result.transport, result.result) == (True, "celery", {"attempts": 3})


def test_retry_with_a_higher_max_retries_than_the_task_succeeds_on_postgres(
    dispatcher, queues, pg_worker
):
    # This process knows the task (as a web process does through PG_QUEUE['IMPORTS']), so
    # the enqueue sets max_attempts from its max_retries=1.
    assert routing_tasks.retry_past_task_limit.max_retries == 1
    with flag_on():
        result = dispatcher.dispatch(
            "tests.acceptance.routing.tasks.retry_past_task_limit",
            [2],
            queue=queues.main,
            timeout=30,
        )
    assert (result.ok, result.transport, result.result) == (True, "postgres", {"attempts": 3})
