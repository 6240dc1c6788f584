"""A task id given to enqueue names one job: re-using one that is taken is ``DuplicateTaskId``.

Before, ``enqueue(task_id=X)`` with a stored result for X queued a job whose ``wait()``
answered with the old outcome; with a live job for X it was an IntegrityError that aborted the
caller's transaction; ``enqueue_many`` with an id given twice did the same.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from pg_queue import producer
from pg_queue.core.exceptions import DuplicateTaskId
from pg_queue.models import Job, TaskResult
from pg_queue.producer import call, enqueue, enqueue_many, job
from tests.payload_echo import echo


def store_result(task_id: uuid.UUID) -> None:
    TaskResult.objects.create(
        task_id=task_id,
        status="succeeded",
        result=1,
        expires_at=dt.datetime.now(dt.UTC) + dt.timedelta(hours=1),
    )


@pytest.mark.django_db
def test_enqueue_with_the_id_of_a_live_job_is_refused_and_the_transaction_stays_usable():
    task_id = uuid.uuid4()
    with transaction.atomic():
        enqueue(echo.name, [1], task_id=task_id)
        with pytest.raises(DuplicateTaskId, match=rf"{task_id} by a live job \(ready\)"):
            enqueue(echo.name, [2], task_id=task_id)
        other = enqueue(echo.name, [3])
    assert Job.objects.get(task_id=task_id).payload["args"] == [1]
    assert Job.objects.filter(task_id=other.task_id).exists()


@pytest.mark.django_db
def test_enqueue_with_the_id_of_a_stored_result_is_refused():
    """wait() would have answered with the earlier job's outcome."""
    task_id = uuid.uuid4()
    store_result(task_id)
    with pytest.raises(DuplicateTaskId, match=rf"{task_id} by a stored result \(succeeded\)"):
        enqueue(echo.name, [1], task_id=task_id)
    assert Job.objects.count() == 0


@pytest.mark.django_db
@pytest.mark.parametrize("delay", [None, 30])
def test_enqueue_many_refuses_ids_in_use_with_one_query_and_writes_nothing(delay):
    live, finished, fresh = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    enqueue(echo.name, [0], task_id=live)
    store_result(finished)
    specs = [
        job(echo.name, [1]),  # streams into the COPY before the ids are checked
        job(echo.name, [2], task_id=fresh, delay=delay),
        job(echo.name, [3], task_id=live, delay=delay),
        job(echo.name, [4], task_id=finished),
    ]
    with transaction.atomic():
        with CaptureQueriesContext(connection) as queries, pytest.raises(DuplicateTaskId) as info:
            enqueue_many(specs)
        assert str(live) in str(info.value)
        assert str(finished) in str(info.value)
        assert str(fresh) not in str(info.value)
        assert sum("pg_task_result" in q["sql"] for q in queries) == 1
        assert Job.objects.count() == 1  # only the earlier job
    assert set(Job.objects.values_list("task_id", flat=True)) == {live}


@pytest.mark.django_db
def test_enqueue_many_refuses_an_id_given_twice_in_the_batch():
    task_id = uuid.uuid4()
    specs = [job(echo.name, [1], task_id=task_id), job(echo.name, [2], task_id=task_id, delay=5)]
    with pytest.raises(DuplicateTaskId, match=re.escape(f"{task_id} is given to two jobs")):
        enqueue_many(specs)
    assert Job.objects.count() == 0


@pytest.mark.django_db
def test_enqueue_many_with_unused_ids_keeps_them_and_their_order():
    ids = [uuid.uuid4() for _ in range(3)]
    handles = enqueue_many(
        [
            job(echo.name, [0], task_id=ids[0]),
            job(echo.name, [1]),
            job(echo.name, [2], task_id=ids[1], delay=60),
            job(echo.name, [3], task_id=ids[2], dedup_key="k"),
        ]
    )
    assert handles[0].task_id == ids[0]
    assert handles[2].task_id == ids[1]
    assert handles[3].task_id == ids[2]
    rows = {m.task_id: m for m in Job.objects.all()}
    assert len(rows) == 4
    assert rows[ids[0]].payload["args"] == [0]
    assert rows[ids[0]].available_at <= rows[ids[0]].enqueued_at + dt.timedelta(seconds=1)
    assert rows[ids[2]].dedup_key == "k"


@pytest.mark.django_db
def test_an_id_inserted_concurrently_after_the_check_is_still_duplicate_task_id(monkeypatch):
    """The check and the INSERT are two statements; another transaction can commit the id in
    between. The unique index catches it, under a savepoint: the caller's transaction lives."""
    task_id = uuid.uuid4()
    with transaction.atomic():
        enqueue(echo.name, [1], task_id=task_id)
        monkeypatch.setattr(producer, "_refuse_taken_task_ids", lambda cursor, ids: None)
        with pytest.raises(DuplicateTaskId, match=str(task_id)):
            enqueue(echo.name, [2], task_id=task_id)
        with pytest.raises(DuplicateTaskId, match=str(task_id)):
            enqueue_many([job(echo.name, [3], task_id=task_id)])
        enqueue(echo.name, [4])
    assert Job.objects.count() == 2


@pytest.mark.django_db
def test_a_fresh_id_costs_no_extra_query():
    with CaptureQueriesContext(connection) as queries:
        enqueue(echo.name, [1])
        echo.enqueue(2)
        enqueue_many([job(echo.name, [3]), job(echo.name, [4], delay=5)])
    assert not [q for q in queries if "pg_task_result" in q["sql"]]
    assert len([q for q in queries if "INSERT" in q["sql"]]) == 3


@pytest.mark.django_db(transaction=True)
def test_call_checks_nothing_for_the_id_it_generates():
    """Request-reply latency is counted per query: call() passes a fresh id, unchecked."""
    with CaptureQueriesContext(connection) as queries:
        outcome = call(echo.name, [1], timeout=0.01)
    assert outcome.status == "timeout"
    assert not [q for q in queries if "ANY(" in q["sql"] and "pg_task_result" in q["sql"]]
