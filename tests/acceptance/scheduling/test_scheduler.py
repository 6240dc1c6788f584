"""The scheduler across real processes: three ``run_pg_worker --scheduler`` fire an every-second
schedule once per tick; ``kill -9`` of the leader is replaced within one lease; a real
``celery beat`` with the hand-over scheduler and the flag turned twice mid-run fires every tick
on exactly one side.

Schedules enqueue into a queue no worker serves, so every fire stays a ``pg_queue_message``
row whose ``enqueued_at`` (the firing transaction's ``now()``) says when it fired.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import signal
import socket
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.conftest import reset_broken_django_connections
from tests.harness import Process, Workers

pytestmark = pytest.mark.slow

#: The scheduler's lease in these tests (seconds); followers try to take it every POLL.
LEASE = 2.0
POLL = 0.5
EVERY_SECOND = "* * * * * *"
TASK = "tests.acceptance.scheduling.tasks.noop"
BROKER = ("127.0.0.1", 5672)


@pytest.fixture
def db(transactional_db: None) -> Iterator[psycopg.Connection[Any]]:
    from pg_queue.db.connection import worker_connection

    conn = worker_connection()
    conn.execute("CREATE TABLE IF NOT EXISTS beat_fire (name text, fired_at timestamptz)")
    conn.execute("TRUNCATE beat_fire")
    try:
        yield conn
    finally:
        with contextlib.suppress(psycopg.Error):
            conn.execute("DROP TABLE IF EXISTS beat_fire")
        conn.close()
        reset_broken_django_connections()


@pytest.fixture
def queue() -> str:
    return f"sched-{uuid.uuid4().hex[:10]}"


def scheduling_env(worker_env: dict[str, str], tmp_path: Path, **schedule: Any) -> dict[str, str]:
    env = {
        k: v
        for k, v in worker_env.items()
        if not k.startswith("PG_QUEUE_") or k == "PG_QUEUE_DATABASE_SOURCE"
    }
    flag_file = tmp_path / "flag"
    if not flag_file.exists():
        flag_file.write_text("postgres")
    env.update(
        DJANGO_SETTINGS_MODULE="tests.acceptance.scheduling.settings",
        PG_QUEUE_LOG_LEVEL="INFO",
        PGQ_TEST_SCHEDULE=json.dumps(schedule),
        PGQ_TEST_SCHEDULER_LEASE=str(LEASE),
        PGQ_TEST_SCHEDULER_POLL=str(POLL),
        PGQ_TEST_FLAG_PROVIDER="tests.acceptance.scheduling.flag.file_provider",
        PGQ_TEST_FLAG_FILE=str(flag_file),
    )
    return env


def fires(db: psycopg.Connection[Any], queue: str) -> list[float]:
    """Epoch seconds of every job the schedule enqueued, in order."""
    rows = db.execute(
        "SELECT EXTRACT(EPOCH FROM enqueued_at)::float8 FROM pg_queue_message "
        "WHERE queue_name = %s ORDER BY enqueued_at",
        [queue],
    ).fetchall()
    return [r[0] for r in rows]


def db_now(db: psycopg.Connection[Any]) -> float:
    return float(db.execute("SELECT EXTRACT(EPOCH FROM now())::float8").fetchone()[0])


def leader(db: psycopg.Connection[Any]) -> str | None:
    row = db.execute(
        "SELECT holder FROM pg_leader_lease WHERE role = 'scheduler' AND expires_at > now()"
    ).fetchone()
    return None if row is None else row[0]


def start_schedulers(workers: Workers, n: int) -> list[Process]:
    # They serve a queue of their own: the schedule's jobs stay queued, to be counted.
    return [
        workers.start(
            "--scheduler", "--queues", "idle", "--worker-id", f"sched-{i}", name=f"sched-{i}"
        )
        for i in range(n)
    ]


def per_second(times: list[float]) -> dict[int, int]:
    counts: dict[int, int] = {}
    for t in times:
        counts[int(t)] = counts.get(int(t), 0) + 1
    return counts


def test_three_schedulers_fire_an_every_second_schedule_once_per_tick(
    worker_env, tmp_path, db, queue
) -> None:
    env = scheduling_env(
        worker_env, tmp_path, tick={"task": TASK, "cron": EVERY_SECOND, "queue": queue}
    )
    workers = Workers(env, tmp_path)
    try:
        start_schedulers(workers, 3)
        workers.wait_for(lambda: fires(db, queue), 60, "the first fire")
        start = db_now(db)
        time.sleep(20)
        end = db_now(db)
        workers.check_alive()
        fired = [t for t in fires(db, queue) if start < t <= end]
        # One per tick (ticks at whole seconds in (start, end]: 20, give or take the edges).
        assert 19 <= len(fired) <= 21, (len(fired), workers.logs())
        doubled = {s: n for s, n in per_second(fired).items() if n > 1}
        assert not doubled, f"ticks fired twice: {doubled}"
        assert min(b - a for a, b in itertools.pairwise(fired)) > 0.5
        firers = [p.name for p in workers.started if "schedule fired" in p.output()]
        assert len(firers) == 1, f"only the leader fires, got {firers}"
    finally:
        workers.stop_all()


def test_leader_killed_with_sigkill_is_replaced_within_one_lease(
    worker_env, tmp_path, db, queue
) -> None:
    env = scheduling_env(
        worker_env, tmp_path, tick={"task": TASK, "cron": EVERY_SECOND, "queue": queue}
    )
    workers = Workers(env, tmp_path)
    try:
        procs = {p.name: p for p in start_schedulers(workers, 3)}
        workers.wait_for(lambda: fires(db, queue), 60, "the first fire")
        old = leader(db)
        assert old in procs
        procs[old].send(signal.SIGKILL)
        procs[old].wait(10)
        killed_at = db_now(db)
        new = workers.wait_for(
            lambda: (lead := leader(db)) and lead != old and lead,
            LEASE + POLL + 5,
            "a new leader",
        )
        taken_at = db_now(db)
        assert taken_at - killed_at <= LEASE + POLL + 1.0, taken_at - killed_at
        workers.wait_for(
            lambda: any(t > taken_at for t in fires(db, queue)), 5, "a fire by the new leader"
        )
        time.sleep(2)
        fired = fires(db, queue)
        doubled = {s: n for s, n in per_second(fired).items() if n > 1}
        assert not doubled, f"ticks fired twice across the take-over: {doubled}"
        after = [t for t in fired if t > killed_at]
        assert after[0] - killed_at <= LEASE + POLL + 1.5  # no gap beyond one lease
        assert f"scheduler leader worker_id={new}" in procs[new].output()
    finally:
        workers.stop_all()


def broker_reachable() -> bool:
    try:
        with socket.create_connection(BROKER, timeout=1.0):
            return True
    except OSError:
        return False


def test_celery_beat_hand_over_fires_each_tick_on_exactly_one_side(
    worker_env, tmp_path, db, queue
) -> None:
    """Celery, then Postgres, then Celery again: beat (the hand-over scheduler class, a real
    ``celery beat``) and two pg_queue schedulers share one schedule by name; the flag file is
    turned mid-run. Every tick fires once, on the side the flag gives it to at that moment."""
    if not broker_reachable():
        pytest.skip("RabbitMQ does not answer on 127.0.0.1:5672 (needed by celery beat)")
    (tmp_path / "flag").write_text("celery")
    env = scheduling_env(
        worker_env, tmp_path, tick={"task": TASK, "cron": EVERY_SECOND, "queue": queue}
    )
    env["PGQ_TEST_BEAT_SCHEDULE"] = json.dumps(
        {"tick": {"task": TASK, "schedule": 1.0, "options": {"queue": f"{queue}-celery"}}}
    )
    workers = Workers(env, tmp_path)
    beat = Process(
        "beat",
        [
            sys.executable, "-m", "celery", "-A", "backend.celery", "beat",
            "-S", "tests.acceptance.scheduling.beat:RecordingBeatScheduler",
            "--schedule", str(tmp_path / "beat-schedule"), "--loglevel", "INFO",
        ],
        env,
        tmp_path / "beat.log",
    )  # fmt: skip
    workers.started.append(beat)  # stopped, and its log shown, with the workers
    try:
        start_schedulers(workers, 2)
        workers.wait_for(lambda: leader(db), 60, "a pg_queue scheduler leader")
        beat_fires = lambda: [  # noqa: E731
            r[0]
            for r in db.execute(
                "SELECT EXTRACT(EPOCH FROM fired_at)::float8 FROM beat_fire ORDER BY fired_at"
            ).fetchall()
        ]
        workers.wait_for(lambda: beat_fires(), 60, "beat's first fire")
        start = db_now(db)
        time.sleep(6.3)
        (tmp_path / "flag").write_text("postgres")
        to_pg = db_now(db)
        time.sleep(6.3)
        (tmp_path / "flag").write_text("celery")
        to_celery = db_now(db)
        time.sleep(6.3)
        end = db_now(db)
        workers.check_alive()
        pg = [t for t in fires(db, queue) if start < t <= end]
        celery = [t for t in beat_fires() if start < t <= end]
        both = sorted([(t, "pg") for t in pg] + [(t, "celery") for t in celery])
        gaps = [b[0] - a[0] for a, b in itertools.pairwise(both)]
        shown = f"fires: {[(round(t - start, 2), side) for t, side in both]}\n{workers.logs()}"
        # Never both sides for one tick: fires are a period apart (the fence is 0.9 s).
        assert min(gaps) > 0.5, shown
        # One per tick: ~19 ticks, at most one passed over at each of the two turns.
        assert end - start - 3 <= len(both) <= end - start + 1, shown
        # Each side fired only while the flag gave it the schedule (a tick's grace each way).
        assert all(to_pg - 0.2 <= t <= to_celery + 1.2 for t in pg), shown
        assert all(t <= to_pg + 1.2 or t >= to_celery - 0.2 for t in celery), shown
        assert pg, shown
        assert any(t < to_pg for t in celery), shown
        assert any(t > to_celery for t in celery), shown
        assert "beat skipped name=tick" in beat.output()
    finally:
        workers.stop_all()
        with contextlib.suppress(Exception):
            from backend.celery import app

            with app.connection_for_write() as conn:
                conn.default_channel.queue_delete(f"{queue}-celery")
