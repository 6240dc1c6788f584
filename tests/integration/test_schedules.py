"""Periodic tasks on a real PostgreSQL: the leader lease (acquire, renew, steal after expiry,
release), firing (one transaction, once per tick under concurrent firers, gated on the lease
and on the flag, once after an outage, a baseline before the first tick, the Celery hand-over
fence), cron with time zones and DST, and the sync of ``PG_QUEUE["SCHEDULE"]``."""

from __future__ import annotations

import datetime as dt
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from django.test import override_settings

from pg_queue.db import connection as db_connection
from pg_queue.db import sql_schedule
from pg_queue.models import Job, LeaderLease, PeriodicTask
from pg_queue.scheduling import cron
from pg_queue.scheduling.firing import schedule_fire_due
from pg_queue.scheduling.leader import leader_acquire, leader_release, leader_renew
from pg_queue.scheduling.sync import parse_schedule, schedule_sync

pytestmark = pytest.mark.django_db(transaction=True)

ROLE = "scheduler"
UTC = dt.UTC


@pytest.fixture
def conn() -> Iterator[psycopg.Connection[Any]]:
    with db_connection.worker_connection() as c:
        yield c


@pytest.fixture
def conn2() -> Iterator[psycopg.Connection[Any]]:
    with db_connection.worker_connection() as c:
        yield c


def always(_task: str, _queue: str) -> bool:
    return True


def never(_task: str, _queue: str) -> bool:
    return False


def make_schedule(name: str = "tick", *, cron_expr: str = "0 * * * *", due: Any = "past"):
    """A schedule row whose tick is due now (``due="past"``), or ``due`` itself."""
    from django.utils import timezone

    next_run = timezone.now() - dt.timedelta(seconds=5) if due == "past" else due
    return PeriodicTask.objects.create(
        name=name,
        task_name="workers.tasks.add",
        args=[1, 2],
        cron=cron_expr,
        next_run_at=next_run,
    )


def lead(conn: psycopg.Connection[Any], holder: str = "w1", ttl: float = 30.0) -> None:
    assert leader_acquire(conn, role=ROLE, holder=holder, ttl=ttl) is not None


def expire_lease() -> None:
    LeaderLease.objects.filter(role=ROLE).update(
        expires_at=dt.datetime.now(UTC) - dt.timedelta(seconds=1)
    )


# --- the leader lease --------------------------------------------------------------------------


def test_lease_is_acquired_by_one_holder_and_refused_to_another(conn, conn2) -> None:
    assert leader_acquire(conn, role=ROLE, holder="w1", ttl=30) is not None
    assert leader_acquire(conn2, role=ROLE, holder="w2", ttl=30) is None
    assert LeaderLease.objects.get(role=ROLE).holder == "w1"


def test_lease_renewal_extends_only_the_holders_unexpired_lease(conn, conn2) -> None:
    first = leader_acquire(conn, role=ROLE, holder="w1", ttl=30)
    renewed = leader_renew(conn, role=ROLE, holder="w1", ttl=60)
    assert first is not None
    assert renewed is not None
    assert renewed > first
    assert leader_renew(conn2, role=ROLE, holder="w2", ttl=60) is None
    expire_lease()
    assert leader_renew(conn, role=ROLE, holder="w1", ttl=60) is None  # expired: lost


def test_expired_lease_is_stolen_and_the_old_holder_cannot_renew(conn, conn2) -> None:
    lead(conn, "w1")
    expire_lease()
    assert leader_acquire(conn2, role=ROLE, holder="w2", ttl=30) is not None
    assert leader_renew(conn, role=ROLE, holder="w1", ttl=30) is None
    assert leader_acquire(conn, role=ROLE, holder="w1", ttl=30) is None
    assert LeaderLease.objects.get(role=ROLE).holder == "w2"


def test_released_lease_is_taken_at_once_by_another(conn, conn2) -> None:
    lead(conn, "w1")
    assert leader_release(conn, role=ROLE, holder="w1")
    assert not leader_release(conn, role=ROLE, holder="w1")
    assert leader_acquire(conn2, role=ROLE, holder="w2", ttl=30) is not None


def test_lease_times_come_from_the_database_clock(conn) -> None:
    expiry = leader_acquire(conn, role=ROLE, holder="w1", ttl=30)
    db_now = conn.execute("SELECT now()").fetchone()[0]
    assert expiry is not None
    assert 25 <= (expiry - db_now).total_seconds() <= 31


# --- firing ------------------------------------------------------------------------------------


def test_due_tick_fires_one_job_and_advances_past_now(conn) -> None:
    make_schedule()
    lead(conn)
    done = schedule_fire_due(conn, holder="w1", role=ROLE, decide=always)
    assert list(done.fired) == ["tick"]
    job = Job.objects.get()
    assert (job.task_name, job.payload["args"], job.queue_name) == (
        "workers.tasks.add",
        [1, 2],
        "default",
    )
    row = PeriodicTask.objects.get(name="tick")
    assert row.last_task_id == job.task_id
    assert row.last_fired_by == "postgres"
    db_now = conn.execute("SELECT now()").fetchone()[0]
    assert row.next_run_at > db_now
    assert schedule_fire_due(conn, holder="w1", role=ROLE, decide=always).fired == {}


def test_outage_fires_once_not_once_per_missed_tick(conn) -> None:
    make_schedule(due=dt.datetime.now(UTC) - dt.timedelta(hours=3))  # 10,800 missed ticks
    lead(conn)
    assert len(schedule_fire_due(conn, holder="w1", role=ROLE, decide=always).fired) == 1
    assert schedule_fire_due(conn, holder="w1", role=ROLE, decide=always).fired == {}
    assert Job.objects.count() == 1


def test_new_schedule_gets_a_baseline_and_does_not_fire_at_once(conn) -> None:
    make_schedule(cron_expr="0 9 * * *", due=None)
    lead(conn)
    done = schedule_fire_due(conn, holder="w1", role=ROLE, decide=always)
    assert done.baselined == ["tick"]
    assert done.fired == {}
    row = PeriodicTask.objects.get()
    assert row.next_run_at is not None
    assert row.next_run_at.astimezone(UTC).hour == 9
    assert Job.objects.count() == 0


def test_no_lease_no_firing(conn, conn2) -> None:
    make_schedule()
    lead(conn2, "w2")
    done = schedule_fire_due(conn, holder="w1", role=ROLE, decide=always)
    assert done.not_ours == ["tick"]
    assert Job.objects.count() == 0


def test_a_lost_lease_stops_firing_at_once(conn, conn2) -> None:
    """The firing statement re-checks the lease: a leader that lost it (expired, stolen)
    fires nothing even before its own renewal tells it."""
    make_schedule()
    lead(conn, "w1")
    expire_lease()
    assert schedule_fire_due(conn, holder="w1", role=ROLE, decide=always).fired == {}
    lead(conn2, "w2")
    assert schedule_fire_due(conn, holder="w1", role=ROLE, decide=always).fired == {}
    assert list(schedule_fire_due(conn2, holder="w2", role=ROLE, decide=always).fired) == ["tick"]
    assert Job.objects.count() == 1


def test_concurrent_firers_fire_each_tick_once(conn, conn2) -> None:
    """Two connections fire the same due tick at once (both pass the lease check: same holder,
    as a leader paused past its lease and its successor would): the row lock serializes them
    and the second finds the tick moved."""
    for i in range(20):
        make_schedule(f"s{i}")
    lead(conn, "w1")
    barrier = threading.Barrier(2)
    results: list[Any] = []

    def fire(c: psycopg.Connection[Any]) -> None:
        barrier.wait()
        results.append(schedule_fire_due(c, holder="w1", role=ROLE, decide=always))

    threads = [threading.Thread(target=fire, args=(c,)) for c in (conn, conn2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    fired = [name for r in results for name in r.fired]
    assert sorted(fired) == sorted(f"s{i}" for i in range(20))
    assert Job.objects.count() == 20


def test_concurrent_firers_serialize_on_the_row_lock(conn, conn2) -> None:
    """The second firer blocks on the first's uncommitted advance, then matches nothing."""
    make_schedule()
    lead(conn, "w1")
    row = PeriodicTask.objects.get()
    params = {
        "name": "tick",
        "due": row.next_run_at,
        "next_run_at": dt.datetime.now(UTC) + dt.timedelta(seconds=1),
        "fire": True,
        "fence": 0.9,
        "task_id": uuid.uuid4(),
        "role": ROLE,
        "holder": "w1",
    }
    with conn.transaction():
        assert conn.execute(sql_schedule.SCHEDULE_ADVANCE, params).fetchone() == (True,)
        second: list[Any] = []
        waiter = threading.Thread(
            target=lambda: second.append(
                conn2.execute(
                    sql_schedule.SCHEDULE_ADVANCE, {**params, "task_id": uuid.uuid4()}
                ).fetchone()
            )
        )
        waiter.start()
        time.sleep(0.3)
        assert waiter.is_alive()  # blocked on the row lock
    waiter.join(timeout=10)
    assert second == [None]


def test_rollback_of_the_firing_transaction_leaves_the_tick_due(conn) -> None:
    """Job and advance commit together: a failure after the advance fires nothing and skips
    nothing (the tick is still due for the next pass)."""
    make_schedule()
    lead(conn)
    due = PeriodicTask.objects.get().next_run_at

    def fire_then_crash() -> None:
        with conn.transaction():
            conn.execute(
                sql_schedule.SCHEDULE_ADVANCE,
                {
                    "name": "tick",
                    "due": due,
                    "next_run_at": due + dt.timedelta(days=1),
                    "fire": True,
                    "fence": 0.9,
                    "task_id": uuid.uuid4(),
                    "role": ROLE,
                    "holder": "w1",
                },
            )
            conn.execute("INSERT INTO no_such_table VALUES (1)")  # crash before the commit

    with pytest.raises(psycopg.errors.UndefinedTable):
        fire_then_crash()
    assert PeriodicTask.objects.get().next_run_at == due
    assert len(schedule_fire_due(conn, holder="w1", role=ROLE, decide=always).fired) == 1


def test_flag_giving_the_task_to_celery_passes_the_tick_over(conn) -> None:
    make_schedule()
    lead(conn)
    done = schedule_fire_due(conn, holder="w1", role=ROLE, decide=never)
    assert done.passed_to_celery == ["tick"]
    assert done.fired == {}
    assert Job.objects.count() == 0
    assert PeriodicTask.objects.get().next_run_at > dt.datetime.now(UTC) - dt.timedelta(seconds=1)


def test_flag_is_evaluated_per_task_name(conn) -> None:
    make_schedule("a")
    PeriodicTask.objects.create(
        name="b",
        task_name="workers.tasks.echo",
        args=[1],
        cron="* * * * * *",
        next_run_at=dt.datetime.now(UTC) - dt.timedelta(seconds=5),
    )
    lead(conn)
    with override_settings(
        PG_QUEUE={"ROUTING_ENABLED": True, "ROUTING_TASKS": ["workers.tasks.echo"]}
    ):
        done = schedule_fire_due(conn, holder="w1", role=ROLE)  # the real flag
    assert list(done.fired) == ["b"]
    assert done.passed_to_celery == ["a"]


def test_tick_celery_fired_within_the_fence_is_not_fired_again(conn) -> None:
    """Hand-over fence: beat fired the schedule (claimed it for Celery) a moment ago, then
    the flag turned to Postgres: the same tick is not fired on this side too."""
    make_schedule(cron_expr="0 * * * *")  # hourly: fence 0.9 h
    lead(conn)
    assert conn.execute(
        sql_schedule.SCHEDULE_CLAIM_FOR_CELERY, {"name": "tick", "fence": 3240.0}
    ).fetchone() == ("tick",)
    done = schedule_fire_due(conn, holder="w1", role=ROLE, decide=always)
    assert done.fenced == ["tick"]
    assert Job.objects.count() == 0
    # ...and the other way round: after pg_queue fired, beat's claim is refused.
    PeriodicTask.objects.update(last_fired_by="postgres", last_run_at=dt.datetime.now(UTC))
    assert (
        conn.execute(
            sql_schedule.SCHEDULE_CLAIM_FOR_CELERY, {"name": "tick", "fence": 3240.0}
        ).fetchone()
        is None
    )


def test_disabled_schedule_does_not_fire(conn) -> None:
    make_schedule()
    PeriodicTask.objects.update(enabled=False)
    lead(conn)
    assert schedule_fire_due(conn, holder="w1", role=ROLE, decide=always).fired == {}


# --- cron, time zones, DST ---------------------------------------------------------------------


def at(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=UTC)


def test_cron_in_a_time_zone() -> None:
    # 09:00 in New York is 13:00 UTC in summer, 14:00 in winter.
    assert cron.next_after("0 9 * * *", "America/New_York", at(2026, 7, 1)) == at(2026, 7, 1, 13)
    assert cron.next_after("0 9 * * *", "America/New_York", at(2026, 12, 1)) == at(2026, 12, 1, 14)


def test_dst_spring_forward_fires_a_skipped_time_once_after_the_gap() -> None:
    # Europe/Berlin, 2026-03-29: 02:00 CET jumps to 03:00 CEST; 02:30 does not exist.
    first = cron.next_after("30 2 * * *", "Europe/Berlin", at(2026, 3, 28, 12))
    assert first == at(2026, 3, 29, 1)  # 03:00 CEST
    assert cron.next_after("30 2 * * *", "Europe/Berlin", first) == at(2026, 3, 30, 0, 30)


def test_dst_fall_back_fires_a_fixed_hour_once() -> None:
    # Europe/Berlin, 2026-10-25: 03:00 CEST goes back to 02:00 CET; 02:30 happens twice.
    first = cron.next_after("30 2 * * *", "Europe/Berlin", at(2026, 10, 24, 12))
    assert first == at(2026, 10, 25, 0, 30)  # the first 02:30 (CEST)
    assert cron.next_after("30 2 * * *", "Europe/Berlin", first) == at(2026, 10, 26, 1, 30)


def test_dst_fall_back_hourly_schedule_fires_in_both_hours() -> None:
    ticks = [at(2026, 10, 24, 22, 30)]
    for _ in range(4):
        ticks.append(cron.next_after("0 * * * *", "Europe/Berlin", ticks[-1]))
    assert ticks[1:] == [
        at(2026, 10, 24, 23),
        at(2026, 10, 25, 0),
        at(2026, 10, 25, 1),
        at(2026, 10, 25, 2),
    ]


def test_six_field_cron_has_seconds() -> None:
    assert cron.next_after("* * * * * */10", "UTC", at(2026, 1, 1, 0, 0, 3)) == at(
        2026, 1, 1, 0, 0, 10
    )
    assert cron.period("* * * * * *", "UTC", at(2026, 1, 1)) == 1.0


@pytest.mark.parametrize(
    ("expr", "zone", "message"),
    [
        ("61 * * * *", "UTC", "not a valid expression"),
        ("* * *", "UTC", "not a valid expression"),
        ("* * * * *", "Mars/Olympus", "unknown time zone"),
    ],
)
def test_bad_cron_or_zone_is_refused_with_the_reason(expr: str, zone: str, message: str) -> None:
    with pytest.raises(cron.CronError, match=message):
        cron.validate(expr, zone)


def test_next_run_is_computed_from_the_database_clock(conn) -> None:
    make_schedule(cron_expr="* * * * * */10", due=None)
    lead(conn)
    schedule_fire_due(conn, holder="w1", role=ROLE, decide=always)
    db_now = conn.execute("SELECT now()").fetchone()[0]
    assert cron.next_after("* * * * * */10", "UTC", db_now - dt.timedelta(seconds=11)) <= (
        PeriodicTask.objects.get().next_run_at
    )


# --- settings sync -----------------------------------------------------------------------------


def declared(**entries: dict[str, Any]) -> list[Any]:
    return parse_schedule(entries)


def test_sync_inserts_declared_schedules_without_a_baseline(conn) -> None:
    report = schedule_sync(
        conn,
        declared(
            nightly={
                "task": "workers.tasks.add",
                "cron": "0 3 * * *",
                "args": [1, 2],
                "timezone": "Europe/Paris",
                "queue": "email",
            },
        ),
    )
    assert report.inserted == ["nightly"]
    row = PeriodicTask.objects.get()
    assert (row.task_name, row.cron, row.timezone, row.queue_name, row.args) == (
        "workers.tasks.add",
        "0 3 * * *",
        "Europe/Paris",
        "email",
        [1, 2],
    )
    assert row.enabled
    assert row.in_settings
    assert row.next_run_at is None


def test_sync_is_idempotent(conn) -> None:
    spec = declared(a={"task": "t.a", "cron": "* * * * *"})
    schedule_sync(conn, spec)
    report = schedule_sync(conn, spec)
    assert (report.inserted, report.updated, report.retired) == ([], [], [])


def test_sync_updates_a_changed_schedule_and_keeps_the_operators_enabled(conn) -> None:
    schedule_sync(conn, declared(a={"task": "t.a", "cron": "* * * * *"}))
    PeriodicTask.objects.update(enabled=False, next_run_at=dt.datetime.now(UTC))
    report = schedule_sync(conn, declared(a={"task": "t.a", "cron": "*/5 * * * *", "args": [7]}))
    assert report.updated == ["a"]
    row = PeriodicTask.objects.get()
    assert (row.cron, row.args, row.enabled) == ("*/5 * * * *", [7], False)
    assert row.next_run_at is None  # new cron: re-baselined, not fired at once


def test_sync_keeps_the_baseline_when_the_cron_is_unchanged(conn) -> None:
    schedule_sync(conn, declared(a={"task": "t.a", "cron": "* * * * *"}))
    tick = dt.datetime.now(UTC).replace(microsecond=0)
    PeriodicTask.objects.update(next_run_at=tick)
    schedule_sync(conn, declared(a={"task": "t.a", "cron": "* * * * *", "args": [1]}))
    assert PeriodicTask.objects.get().next_run_at == tick


def test_sync_disables_schedules_removed_from_settings_and_keeps_them(conn) -> None:
    schedule_sync(
        conn,
        declared(a={"task": "t.a", "cron": "* * * * *"}, b={"task": "t.b", "cron": "* * * * *"}),
    )
    PeriodicTask.objects.create(name="admin-made", task_name="t.c", cron="* * * * *")
    report = schedule_sync(conn, declared(a={"task": "t.a", "cron": "* * * * *"}))
    assert report.retired == ["b"]
    b = PeriodicTask.objects.get(name="b")
    assert not b.enabled
    assert not b.in_settings
    assert PeriodicTask.objects.get(name="admin-made").enabled  # never touched by the sync
    # Declared again: enabled as declared.
    schedule_sync(
        conn,
        declared(a={"task": "t.a", "cron": "* * * * *"}, b={"task": "t.b", "cron": "* * * * *"}),
    )
    assert PeriodicTask.objects.get(name="b").enabled


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"cron": "* * * * *"}, "'task' is required"),
        ({"task": "t", "cron": "nope"}, "not a valid expression"),
        ({"task": "t", "cron": "* * * * *", "timezone": "Nowhere/City"}, "unknown time zone"),
        ({"task": "t", "cron": "* * * * *", "every": 5}, "unknown keys"),
        ({"task": "t", "cron": "* * * * *", "args": {"a": 1}}, "'args' must be a list"),
        ({"task": "t", "cron": "* * * * *", "kwargs": {"x": float("nan")}}, "must be JSON"),
    ],
)
def test_bad_declared_schedule_is_refused_naming_it(entry: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        parse_schedule({"report": entry})
    assert "PG_QUEUE['SCHEDULE']['report']" in str(info.value)


# --- the admin ---------------------------------------------------------------------------------

ADMIN = "/admin/pg_queue/periodictask/"


def act(client, action: str, *names: str):
    return client.post(ADMIN, {"action": action, "index": "0", "_selected_action": list(names)})


def test_admin_lists_schedules_with_their_runs(admin_client) -> None:
    make_schedule("nightly-report", cron_expr="0 3 * * *")
    page = admin_client.get(ADMIN)
    assert page.status_code == 200
    assert b"nightly-report" in page.content
    assert b"0 3 * * *" in page.content
    assert admin_client.get(f"{ADMIN}nightly-report/change/").status_code == 200


def test_admin_disable_and_enable_are_logged_and_enable_drops_the_baseline(admin_client) -> None:
    from django.contrib.admin.models import CHANGE, LogEntry

    make_schedule("a")
    act(admin_client, "disable_schedules", "a")
    assert not PeriodicTask.objects.get().enabled
    act(admin_client, "enable_schedules", "a")
    row = PeriodicTask.objects.get()
    assert row.enabled
    assert row.next_run_at is None
    entries = list(LogEntry.objects.order_by("id"))
    assert [(e.object_id, e.action_flag) for e in entries] == [("a", CHANGE), ("a", CHANGE)]
    assert entries[0].change_message.startswith("Disabled by ")
    assert entries[1].change_message.startswith("Enabled by ")


def test_admin_run_now_enqueues_one_job_records_it_and_keeps_the_ticks(admin_client) -> None:
    from django.contrib.admin.models import LogEntry

    sched = make_schedule("a", due=dt.datetime(2030, 1, 1, tzinfo=UTC))
    act(admin_client, "run_now", "a")
    job = Job.objects.get()
    assert (job.task_name, job.payload["args"]) == ("workers.tasks.add", [1, 2])
    row = PeriodicTask.objects.get()
    assert row.last_task_id == job.task_id
    assert row.next_run_at == sched.next_run_at
    assert (row.last_run_at, row.last_fired_by) == (None, "")  # the ticks' record untouched
    assert LogEntry.objects.get().change_message.startswith("Run now by ")


def test_admin_actions_need_the_change_permission(django_user_model, client) -> None:
    from django.contrib.auth.models import Permission

    user = django_user_model.objects.create_user(username="viewer", password="pw", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_periodictask"))
    client.force_login(user)
    make_schedule("a")
    act(client, "disable_schedules", "a")
    act(client, "run_now", "a")
    assert PeriodicTask.objects.get().enabled
    assert Job.objects.count() == 0


def test_admin_cannot_delete_or_edit_a_schedule(admin_client) -> None:
    make_schedule("a")
    assert admin_client.post(f"{ADMIN}a/delete/", {"post": "yes"}).status_code == 403
    admin_client.post(f"{ADMIN}a/change/", {"cron": "* * * * *"})
    assert PeriodicTask.objects.get().cron == "0 * * * *"


# --- run_pg_worker --scheduler -----------------------------------------------------------------


def test_worker_with_a_bad_schedule_refuses_to_start_naming_it() -> None:
    from django.core.management import CommandError, call_command

    bad = {"SCHEDULE": {"report": {"task": "t", "cron": "99 * * * *"}}}
    with override_settings(PG_QUEUE=bad), pytest.raises(CommandError) as info:
        call_command("run_pg_worker", "--scheduler", "--burst")
    assert "--scheduler: PG_QUEUE['SCHEDULE']['report']" in str(info.value)
    assert "not a valid expression" in str(info.value)


def test_worker_scheduler_without_croniter_names_the_extra(monkeypatch) -> None:
    from django.core.management import CommandError, call_command

    monkeypatch.setattr(cron, "croniter_installed", lambda: False)
    with override_settings(PG_QUEUE={"SCHEDULER": True}), pytest.raises(CommandError) as info:
        call_command("run_pg_worker", "--burst")
    assert "pip install 'pg-queue[schedule]'" in str(info.value)


# --- the worker's scheduler service ------------------------------------------------------------


def test_scheduler_service_leads_fires_and_stops_at_once_when_its_lease_is_taken() -> None:
    from pg_queue.core.conf import QueueSettings
    from pg_queue.worker.scheduler import Scheduler
    from tests.harness import wait_for

    conf = QueueSettings(
        scheduler_lease_seconds=1.5,
        scheduler_poll=0.1,
        schedule={"tick": {"task": "workers.tasks.add", "cron": "* * * * * *", "args": [1, 2]}},
    )
    service = Scheduler(
        conf=conf, worker_id="w1", connect=db_connection.worker_connection, decide=always
    )
    service.start()
    try:
        wait_for(lambda: service.leading, 10, "the lease")
        wait_for(lambda: Job.objects.exists(), 10, "a fire")  # after the baseline tick
        assert PeriodicTask.objects.get().in_settings
        LeaderLease.objects.update(
            holder="thief", expires_at=dt.datetime.now(UTC) + dt.timedelta(seconds=60)
        )
        taken = time.monotonic()
        wait_for(lambda: not service.leading, 2, "the service to notice the lost lease")
        assert time.monotonic() - taken <= conf.scheduler_lease_seconds / 3 + 0.3
        count = Job.objects.count()
        time.sleep(1.5)
        assert Job.objects.count() == count  # nothing fired since
    finally:
        service.stop()
        service.join(5)
    assert not service.alive
    assert service.errors == 0
    assert LeaderLease.objects.get().holder == "thief"  # a release never frees another's lease


def test_scheduler_service_releases_its_lease_when_stopped() -> None:
    from pg_queue.core.conf import QueueSettings
    from pg_queue.worker.scheduler import Scheduler
    from tests.harness import wait_for

    service = Scheduler(
        conf=QueueSettings(scheduler_lease_seconds=30, scheduler_poll=0.1),
        worker_id="w1",
        connect=db_connection.worker_connection,
    )
    service.start()
    wait_for(lambda: service.leading, 10, "the lease")
    service.stop()
    service.join(5)
    assert not LeaderLease.objects.exists()


# --- the Celery beat hand-over scheduler (in process; the real beat is in tests/acceptance) -----


@pytest.fixture
def beat(tmp_path):
    from celery.beat import ScheduleEntry

    from backend.celery import app
    from pg_queue.scheduling.beat import PgQueueBeatScheduler

    scheduler = PgQueueBeatScheduler(
        app=app, schedule_filename=str(tmp_path / "beat-schedule"), lazy=True
    )

    def fires(name: str = "tick", task: str = "workers.tasks.add") -> bool:
        return scheduler.celery_fires(ScheduleEntry(name=name, task=task, app=app))

    return fires


def flag_to_postgres(on: bool):
    return override_settings(PG_QUEUE={"ROUTING_ENABLED": on})


def test_beat_skips_a_tick_the_flag_gives_to_postgres(beat) -> None:
    make_schedule()
    with flag_to_postgres(True):
        assert not beat()


def test_beat_fires_a_tick_the_flag_gives_to_celery_and_records_it(beat) -> None:
    make_schedule()
    with flag_to_postgres(False):
        assert beat()
    row = PeriodicTask.objects.get()
    assert row.last_fired_by == "celery"
    assert row.last_run_at is not None


def test_beat_does_not_fire_a_tick_pg_queue_just_fired(beat) -> None:
    make_schedule()  # hourly: the fence is 54 minutes
    PeriodicTask.objects.update(last_fired_by="postgres", last_run_at=dt.datetime.now(UTC))
    with flag_to_postgres(False):
        assert not beat()


def test_beat_fires_entries_pg_queue_has_no_schedule_for(beat, caplog) -> None:
    with flag_to_postgres(False):
        assert beat("only-in-beat")
    with flag_to_postgres(True):
        assert beat("only-in-beat")  # nothing on the pg side would fire it
    assert "has no schedule of that name; beat keeps firing it" in caplog.text
