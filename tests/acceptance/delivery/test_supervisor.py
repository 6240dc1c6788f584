"""``--processes``: the supervisor restarts killed children; ``--health-port`` endpoints."""

from __future__ import annotations

import json
import os
import re
import signal
import urllib.error
import urllib.request
import uuid
from typing import Any

import pytest
from prometheus_client import Counter, Histogram

from pg_queue import metrics
from pg_queue.producer import enqueue, enqueue_many
from pg_queue.worker.maintenance import QUEUE_STATS_INTERVAL
from tests.acceptance.delivery.conftest import Db
from tests.harness import descendants, free_port
from workers import tasks as example_tasks


def http_get(port: int, path: str) -> tuple[int, str]:
    """(status, body); connection errors are status 0 (not listening yet)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0, ""


def healthz(port: int) -> dict[str, Any] | None:
    """The /healthz document when it answers 200, else None."""
    status, body = http_get(port, "/healthz")
    return json.loads(body) if status == 200 else None


def live_workers(pgdb: Db) -> dict[str, int]:
    """worker_id -> pid of pg_worker rows whose process is alive."""
    rows = pgdb.rows("SELECT worker_id, pid FROM pg_worker")
    return {wid: pid for wid, pid in rows if os.path.exists(f"/proc/{pid}")}


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample in Prometheus text format, or None."""
    for line in text.splitlines():
        m = re.match(rf"^{re.escape(name)}(\{{[^}}]*\}})? (\S+)$", line)
        if not m:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(m.group(2))
    return None


def metric_names() -> dict[str, str]:
    """Every metric pg_queue.metrics defines: name -> Prometheus type."""
    names = {m._name: m._type for m in vars(metrics).values() if isinstance(m, Counter | Histogram)}
    names.update(
        {
            "pg_queue_depth": "gauge",
            "pg_queue_oldest_ready_age_seconds": "gauge",
            "pg_queue_depth_snapshot_age_seconds": "gauge",
        }
    )
    return names


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_supervisor_restarts_a_killed_child_and_serves_health(pgdb, workers):
    port = free_port()
    jobs = 50
    handles = enqueue_many([example_tasks.echo.job(i) for i in range(jobs)])
    enqueue("workers.tasks.echo", [0], delay=600)  # something for pg_queue_depth to show
    supervisor = workers.start(
        "--processes", "2", "--concurrency", "2", "--health-port", str(port), name="supervisor"
    )
    workers.wait_for(
        lambda: len(live_workers(pgdb)) == 2 and healthz(port),
        timeout=60,
        what="two healthy children",
        interval=0.1,
    )
    workers.wait_for(
        lambda: pgdb.value("SELECT count(*) FROM pg_task_result") == jobs,
        timeout=60,
        what="the jobs to finish",
    )
    assert {r[0] for r in pgdb.rows("SELECT task_id FROM pg_task_result")} == {
        h.task_id for h in handles
    }

    status, text = http_get(port, "/metrics")
    assert status == 200
    assert (sample(text, "pg_queue_claimed_total", queue="default") or 0) >= jobs, text
    assert (sample(text, "pg_queue_succeeded_total", queue="default") or 0) >= jobs, text

    def depth_recounted() -> bool:  # the snapshot is recounted every QUEUE_STATS_INTERVAL
        text = http_get(port, "/metrics")[1]
        return (
            sample(text, "pg_queue_depth", queue="default", state="delayed") == 1
            and sample(text, "pg_queue_depth", queue="default", state="ready") == 0
        )

    workers.wait_for(
        depth_recounted, timeout=3 * QUEUE_STATS_INTERVAL, what="the depth snapshot", interval=0.5
    )

    before = live_workers(pgdb)
    victim_id, victim_pid = sorted(before.items())[0]
    assert victim_pid in descendants(supervisor.pid)
    os.kill(victim_pid, signal.SIGKILL)

    def replaced() -> bool:
        now = live_workers(pgdb)
        return len(now) == 2 and victim_id not in now

    workers.wait_for(replaced, timeout=30, what="the supervisor to restart the child")
    after = live_workers(pgdb)
    assert len(set(after) - set(before)) == 1
    assert set(after.values()) <= set(descendants(supervisor.pid))

    def restarted_and_healthy() -> dict[str, Any] | None:
        doc = healthz(port)
        if doc and sorted(c["restarts"] for c in doc["children"]) == [0, 1]:
            return doc
        return None

    doc = workers.wait_for(restarted_and_healthy, timeout=30, what="/healthz after the restart")
    assert doc["healthy"] is True
    assert all(c["alive"] and c["healthy"] and not c["crash_loop"] for c in doc["children"])

    # The restarted child works: it takes new jobs.
    more = enqueue_many([example_tasks.echo.job(i) for i in range(10)])
    workers.wait_for(
        lambda: (
            pgdb.value(
                "SELECT count(*) FROM pg_task_result WHERE task_id = ANY(%s)",
                [[h.task_id for h in more]],
            )
            == 10
        ),
        timeout=30,
        what="jobs after the restart",
    )

    supervisor.send(signal.SIGTERM)
    assert supervisor.wait(timeout=30) == 0, supervisor.log()
    assert descendants(supervisor.pid) == []
    remaining = {r[0] for r in pgdb.rows("SELECT worker_id FROM pg_worker")}
    assert not remaining & set(after), "a gracefully stopped child left its pg_worker row"


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_single_process_health_and_metrics(pgdb, workers):
    port = free_port()
    worker_id = f"health-{uuid.uuid4().hex[:8]}"
    jobs = 20
    enqueue_many([example_tasks.echo.job(i) for i in range(jobs)])
    enqueue("workers.tasks.echo", [0], delay=600)
    proc = workers.start(
        "--health-port", str(port), "--worker-id", worker_id, "--concurrency", "2", name="single"
    )
    workers.wait_for(
        lambda: pgdb.value("SELECT count(*) FROM pg_task_result") == jobs,
        timeout=60,
        what="the jobs to finish",
    )
    doc = workers.wait_for(lambda: healthz(port), timeout=30, what="/healthz 200")
    assert doc["healthy"] is True
    assert doc["worker_id"] == worker_id
    assert doc["stopping"] is False
    assert doc["in_flight"] == 0

    status, text = http_get(port, "/metrics")
    assert status == 200
    for name, kind in metric_names().items():
        # Counters are exposed as NAME_total in OpenMetrics-style client versions.
        declared = re.search(rf"^# TYPE {name}(_total)? {kind}$", text, re.MULTILINE)
        assert declared, f"{name} ({kind}) missing from /metrics:\n{text}"
    assert sample(text, "pg_queue_claimed_total", queue="default") == jobs
    assert sample(text, "pg_queue_succeeded_total", queue="default") == jobs
    assert sample(text, "pg_queue_depth", queue="default", state="delayed") == 1
    assert (sample(text, "pg_queue_task_duration_seconds_count", queue="default") or 0) == jobs
    assert http_get(port, "/nope")[0] == 404

    proc.send(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0, proc.log()


def changed_children(pgdb: Db, before: dict[str, int]) -> dict[str, int] | None:
    """The live workers once one of ``before`` has been replaced by a new one."""
    now = live_workers(pgdb)
    return now if len(now) == len(before) and len(set(now) - set(before)) == 1 else None


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_supervisor_restarts_a_child_that_stopped_for_a_time_limit(pgdb, workers):
    """In process mode a child ends a stuck task by exiting (75) after writing the timeout."""
    supervisor = workers.start("--processes", "2", "--concurrency", "1", name="supervisor")
    workers.wait_for(lambda: len(live_workers(pgdb)) == 2, timeout=60, what="two children")
    before = live_workers(pgdb)
    stuck = example_tasks.overrun.enqueue(30.0)
    after = workers.wait_for(
        lambda: changed_children(pgdb, before), timeout=30, what="the stuck child to be replaced"
    )
    row = pgdb.one("SELECT status, error FROM pg_task_result WHERE task_id = %s", [stuck.task_id])
    assert row == ("failed", "TimeoutError: task exceeded its time limit of 0.5s")
    assert pgdb.value("SELECT reason FROM pg_queue_dead_letter") == "exhausted"
    assert set(after.values()) <= set(descendants(supervisor.pid))
    assert "child ended a task stuck past its time limit" in supervisor.log(tail=10**6)
    # The stopped child unregistered itself; only live children have rows.
    assert {r[0] for r in pgdb.rows("SELECT worker_id FROM pg_worker")} == set(after)

    more = enqueue_many([example_tasks.echo.job(i) for i in range(10)])
    workers.wait_for(
        lambda: (
            pgdb.value(
                "SELECT count(*) FROM pg_task_result "
                "WHERE task_id = ANY(%s) AND status = 'succeeded'",
                [[h.task_id for h in more]],
            )
            == 10
        ),
        timeout=30,
        what="jobs after the restart",
    )


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_supervisor_restarts_a_child_stopped_by_sigterm(pgdb, workers):
    workers.start("--processes", "2", "--concurrency", "1", name="supervisor")
    workers.wait_for(lambda: len(live_workers(pgdb)) == 2, timeout=60, what="two children")
    before = live_workers(pgdb)
    victim_pid = sorted(before.values())[0]
    os.kill(victim_pid, signal.SIGTERM)
    workers.wait_for(
        lambda: changed_children(pgdb, before), timeout=8, what="the stopped child to be replaced"
    )
