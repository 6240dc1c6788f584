"""``/metrics`` queue depth: a snapshot one worker recounts, so a scrape never reads the queue
table (it still answers while the queue table is locked)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from pg_queue.db import connection as db_connection
from pg_queue.metrics import QueueDepthCollector
from pg_queue.models import QueueStats
from pg_queue.producer import enqueue, enqueue_many, job
from pg_queue.worker.maintenance import QUEUE_STATS_ROLE, Maintenance
from pg_queue.worker.stats import WorkerStats

pytestmark = pytest.mark.django_db(transaction=True)

pytest.importorskip("prometheus_client")


@pytest.fixture
def conn() -> Iterator[psycopg.Connection[Any]]:
    with db_connection.worker_connection() as c:
        yield c


def maintenance(worker_id: str) -> Maintenance:
    from pg_queue.core.conf import queue_settings
    from pg_queue.worker.events import Events

    return Maintenance(
        conf=queue_settings(),
        worker_id=worker_id,
        connect=db_connection.worker_connection,
        stats=WorkerStats(),
        events=Events(),
        notify_results=lambda: False,
    )


def scrape() -> dict[tuple[str, tuple[str, ...]], float]:
    return {
        (sample.name, tuple(sample.labels.values())): sample.value
        for family in QueueDepthCollector().collect()
        for sample in family.samples
    }


def test_one_worker_recounts_the_snapshot_and_the_others_leave_it(conn) -> None:
    enqueue_many([job("workers.tasks.echo", [i]) for i in range(3)])
    enqueue("workers.tasks.echo", [9], queue="other", delay=600)
    leader, other = maintenance("w-leader"), maintenance("w-other")
    try:
        leader._stats_pass()
        counts = {s.queue_name: (s.ready, s.delayed, s.running) for s in QueueStats.objects.all()}
        assert counts == {"default": (3, 0, 0), "other": (0, 1, 0)}
        enqueue("workers.tasks.echo", [4])
        other._stats_pass()  # not the leader: the snapshot stays as it was
        assert QueueStats.objects.get(queue_name="default").ready == 3
        leader._stats_pass()
        assert QueueStats.objects.get(queue_name="default").ready == 4
    finally:
        for m in (leader, other):
            if m._conn is not None:
                m._conn.close()
    assert conn.execute(
        "SELECT holder FROM pg_leader_lease WHERE role = %s", [QUEUE_STATS_ROLE]
    ).fetchone() == ("w-leader",)


def test_a_scrape_reads_the_snapshot_and_never_the_queue_table(conn) -> None:
    enqueue_many([job("workers.tasks.echo", [i]) for i in range(2)])
    leader = maintenance("w-leader")
    try:
        leader._stats_pass()
    finally:
        assert leader._conn is not None
        leader._conn.close()
    with db_connection.worker_connection() as locker, locker.transaction():
        # Any read of pg_queue_message would now wait for this lock, and time out.
        locker.execute("LOCK TABLE pg_queue_message IN ACCESS EXCLUSIVE MODE")
        values = scrape()
    assert values[("pg_queue_depth", ("default", "ready"))] == 2
    assert 0 <= values[("pg_queue_depth_snapshot_age_seconds", ("default",))] < 60
