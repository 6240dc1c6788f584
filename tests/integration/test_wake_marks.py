"""Wake-up marks (``pg_queue_waiter``): a lone enqueue NOTIFYs only a waiting worker and takes
its mark; an enqueue inside a longer transaction always NOTIFYs; a real worker sets its marks
when it runs out of work and is woken by the next enqueue. Against the real PostgreSQL."""

from __future__ import annotations

import re
import signal
import threading
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from django.db import transaction

from pg_queue.core.conf import NOTIFY_CHANNEL
from pg_queue.db import connection as db_connection
from pg_queue.db import queries, sql_worker
from pg_queue.models import QueueWaiter, TaskResult
from pg_queue.producer import enqueue, enqueue_many, job

pytestmark = pytest.mark.django_db(transaction=True)

ECHO = "workers.tasks.echo"
#: Seconds a test waits for a NOTIFY that must not come (the ones that must come arrive in ms).
QUIET = 0.3


@pytest.fixture
def conn() -> Iterator[psycopg.Connection[Any]]:
    with db_connection.worker_connection() as c:
        c.execute(f"LISTEN {NOTIFY_CHANNEL}")
        yield c


def notes(conn: psycopg.Connection[Any], timeout: float = QUIET) -> list[str]:
    return [n.payload for n in conn.notifies(timeout=timeout)]


def marks() -> dict[tuple[str, str], bool]:
    return {(w.queue_name, w.worker_id): w.waiting for w in QueueWaiter.objects.all()}


def mark(conn: psycopg.Connection[Any], worker_id: str, *queues: str, take: bool = True) -> bool:
    """Set ``worker_id``'s marks (takeable unless ``take=False``); is a job already there?"""
    marked = queries.waiter_mark(conn, worker_id=worker_id, queues=list(queues), takeable=take)
    assert marked.queues == set(queues)
    return marked.jobs_waiting


def test_a_lone_enqueue_notifies_only_when_a_worker_waits_and_takes_takeable_marks(conn) -> None:
    enqueue(ECHO, [0])
    assert notes(conn) == []  # nobody waits: no NOTIFY, no commit-time lock
    # The job above is there: marking says so (it sent no NOTIFY, so claim it now).
    assert mark(conn, "w1", "default", "other") is True
    assert mark(conn, "w2", "default") is True  # the job is still there
    assert marks() == {("default", "w1"): True, ("other", "w1"): True, ("default", "w2"): True}
    enqueue(ECHO, [1])
    assert notes(conn) == ["default"]  # one NOTIFY wakes both
    assert marks() == {("default", "w1"): False, ("other", "w1"): True, ("default", "w2"): False}
    enqueue(ECHO, [2])
    assert notes(conn) == []  # the marks are taken until the workers set them again


def test_a_standing_mark_gets_every_lone_enqueues_notify_and_stays(conn) -> None:
    mark(conn, "w1", "default", take=False)
    mark(conn, "w2", "default")
    for i in range(3):
        enqueue(ECHO, [i])
    assert notes(conn) == ["default"] * 3
    # The NOTIFY a standing mark calls for wakes w2 too: its takeable mark is left as it is.
    assert marks() == {("default", "w1"): True, ("default", "w2"): True}


def test_marking_an_idle_queue_finds_no_job_and_switches_the_kind_in_place(conn) -> None:
    assert mark(conn, "w1", "default") is False
    assert mark(conn, "w1", "default", take=False) is False
    assert [(w.waiting, w.takeable) for w in QueueWaiter.objects.all()] == [(True, False)]
    enqueue(ECHO, [0], queue="other")  # another queue's job neither wakes nor is found
    assert notes(conn) == []
    assert mark(conn, "w1", "default") is False
    assert [(w.waiting, w.takeable) for w in QueueWaiter.objects.all()] == [(True, True)]


@pytest.mark.parametrize("how", ["atomic", "batch"])
def test_an_enqueue_inside_a_transaction_always_notifies_and_leaves_the_marks(conn, how) -> None:
    """Inside a longer transaction a worker may set its mark and sleep between the INSERT and
    the commit, having missed the row: such an enqueue cannot rely on the marks."""

    def enqueue_in_a_transaction() -> None:
        if how == "atomic":
            with transaction.atomic():
                enqueue(ECHO, [0])
        else:
            enqueue_many([job(ECHO, [i]) for i in range(3)])

    enqueue_in_a_transaction()  # no worker waits: notified all the same
    assert notes(conn) == ["default"]
    mark(conn, "w1", "default")
    enqueue_in_a_transaction()
    assert notes(conn) == ["default"]
    assert marks() == {("default", "w1"): True}


def test_an_enqueue_that_inserts_nothing_or_is_not_due_takes_no_mark(conn) -> None:
    enqueue(ECHO, [0], dedup_key="once")
    mark(conn, "w1", "default")
    enqueue(ECHO, [1], dedup_key="once")  # the live duplicate wins: nothing new to run
    enqueue(ECHO, [2], delay=30)  # not due: nothing to wake anyone for
    assert notes(conn) == []
    assert marks() == {("default", "w1"): True}


def test_a_mark_another_transaction_holds_is_skipped_not_waited_for(conn) -> None:
    """A mark row locked by another transaction (a producer taking it: its NOTIFY is on the
    way) blocks neither an enqueue nor the worker's marking. Both run with lock_timeout set:
    a wait would fail the statement instead of passing slowly."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SET lock_timeout = '2s'")
    conn.execute("SET lock_timeout = '2s'")
    mark(conn, "w1", "default")
    with db_connection.worker_connection() as holder:
        with holder.transaction():
            holder.execute("SELECT 1 FROM pg_queue_waiter FOR UPDATE")
            enqueue(ECHO, [0])  # skips the held mark: its holder will NOTIFY
            assert notes(conn) == []
        assert marks() == {("default", "w1"): True}
        enqueue(ECHO, [1])  # released: this one takes it
        assert notes(conn) == ["default"]
        with holder.transaction():
            holder.execute("SELECT 1 FROM pg_queue_waiter FOR UPDATE")
            marked = queries.waiter_mark(conn, worker_id="w1", queues=["default"], takeable=True)
            assert marked.queues == set()  # skipped: to be set next time
            assert marked.jobs_waiting  # the two jobs are found
            assert marks() == {("default", "w1"): False}
    assert mark(conn, "w1", "default") is True
    assert marks() == {("default", "w1"): True}


def test_a_worker_marks_itself_waiting_once_and_each_lone_enqueue_wakes_it(workers) -> None:
    """The worker polls only every 120 s here: each job can only start within the test's
    timeout because its enqueue found the worker's mark and sent the NOTIFY. One job at a time
    is no flood: the mark stands, and the worker writes nothing per job."""
    slow_polls = {"PG_QUEUE_POLL_INTERVAL_MIN": "120", "PG_QUEUE_POLL_INTERVAL_MAX": "120"}
    worker = workers.start("--concurrency", "2", env=slow_polls)

    def waiting() -> dict[tuple[str, str], bool]:
        found = marks()
        return found if found and all(found.values()) else {}

    for i in range(3):
        (key,) = workers.wait_for(waiting, timeout=60, what=lambda: f"marks: {marks()}")
        assert key == ("default", key[1])
        assert enqueue(ECHO, [i]).wait(timeout=30).result == i
    assert TaskResult.objects.filter(status="succeeded").count() == 3
    worker.send(signal.SIGTERM)
    code, output = worker.finish(timeout=60)
    assert code == 0, output
    assert marks() == {}  # a clean exit removes its marks
    found = re.search(r"mark_queries=(\d+)", output)
    assert found is not None, output
    assert int(found[1]) == 1, output  # the first mark only


def test_pruning_a_dead_worker_removes_its_marks(conn) -> None:
    conn.execute(
        "INSERT INTO pg_worker (worker_id, hostname, pid, queues, concurrency, heartbeat_at, "
        "started_at, state) VALUES ('dead', 'h', 1, '[]', 1, now() - interval '1 hour', "
        "now() - interval '1 hour', 'running'), ('alive', 'h', 2, '[]', 1, now(), now(), "
        "'running')"
    )
    mark(conn, "dead", "default")
    mark(conn, "alive", "default")
    conn.execute(sql_worker.WORKER_PRUNE, {"stale": 60})
    assert marks() == {("default", "alive"): True}
    enqueue(ECHO, [0])
    assert notes(conn) == ["default"]


def test_concurrent_lone_enqueues_send_one_notify_per_mark(conn) -> None:
    """Eight threads enqueue at once against one waiting mark: exactly one of them takes it
    and NOTIFYs (the others skip the locked mark, or find it taken)."""
    mark(conn, "w1", "default")
    barrier = threading.Barrier(8)
    errors: list[BaseException] = []

    def produce(i: int) -> None:
        try:
            barrier.wait(timeout=10)
            enqueue(ECHO, [i])
        except BaseException as exc:  # reported below, never lost with the thread
            errors.append(exc)
        finally:
            from django.db import connection

            connection.close()

    threads = [threading.Thread(target=produce, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors
    assert notes(conn, timeout=1.0) == ["default"]
    assert marks() == {("default", "w1"): False}
