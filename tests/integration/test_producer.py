"""Enqueue against a real PostgreSQL: transactions, validation, coercion, dedup, bulk paths."""

from __future__ import annotations

import datetime as dt
import re
import uuid
from decimal import Decimal

import pytest
from django.db import connection, transaction

from pg_queue.core.exceptions import PayloadError
from pg_queue.db import connection as db_connection
from pg_queue.db import queries
from pg_queue.models import Job
from pg_queue.producer import enqueue, enqueue_many, job
from workers import tasks


def db_now() -> dt.datetime:
    with connection.cursor() as cursor:
        cursor.execute("SELECT now()")
        return cursor.fetchone()[0]


def assert_offset(row: Job, seconds: float) -> None:
    """available_at is ``seconds`` after enqueue, by the database clock.

    Within a second, not exactly: raw SQL ``now()`` is the transaction's start, while the
    ``enqueued_at`` default (Django's ``Now()``) is the statement's.
    """
    offset = (row.available_at - row.enqueued_at).total_seconds()
    assert abs(offset - seconds) < 1.0, (row.available_at, row.enqueued_at, seconds)


@pytest.mark.django_db
def test_enqueue_inserts_one_ready_row_with_task_defaults():
    handle = tasks.always_fails.enqueue("why")
    row = Job.objects.get(task_id=handle.task_id)
    assert (row.task_name, row.queue_name) == ("workers.tasks.always_fails", "default")
    assert handle.task_name == row.task_name
    assert handle.queue_name == row.queue_name
    assert row.state == "ready"
    assert row.attempts == 0
    assert row.max_attempts == 2  # the task's own default, not the global 3
    assert row.payload == {"args": ["why"], "kwargs": {}}
    assert_offset(row, 0)
    assert handle.status() == "queued"


@pytest.mark.django_db
def test_call_options_override_task_defaults():
    handle = enqueue(
        "workers.tasks.echo",
        [1],
        queue="other",
        priority=7,
        max_attempts=9,
        tenant_key="org-1",
        resource_key="printer",
    )
    row = Job.objects.get(task_id=handle.task_id)
    assert (row.queue_name, row.priority, row.max_attempts) == ("other", 7, 9)
    assert (row.tenant_key, row.resource_key, row.dedup_key) == ("org-1", "printer", None)


class Boom(Exception):
    """The business write failed after the enqueue."""


@pytest.mark.django_db
def test_enqueue_inside_rolled_back_atomic_leaves_no_row():
    handles = []

    def business_write_that_fails() -> None:
        with transaction.atomic():
            handles.append(enqueue("workers.tasks.echo", [1]))
            assert Job.objects.filter(task_id=handles[0].task_id).exists()
            raise Boom

    with pytest.raises(Boom):
        business_write_that_fails()
    assert not Job.objects.filter(task_id=handles[0].task_id).exists()
    assert Job.objects.count() == 0


@pytest.mark.django_db
def test_enqueue_many_inside_rolled_back_atomic_leaves_no_row():
    def business_write_that_fails() -> None:
        with transaction.atomic():
            enqueue_many(
                [
                    job("workers.tasks.echo", [1]),
                    job("workers.tasks.echo", [2], delay=30),
                    job("workers.tasks.echo", [3], dedup_key="k"),
                ]
            )
            assert Job.objects.count() == 3
            raise Boom

    with pytest.raises(Boom):
        business_write_that_fails()
    assert Job.objects.count() == 0


@pytest.mark.django_db
def test_json_coercion_stores_dates_uuids_decimals_and_tuples_as_json():
    ident = uuid.uuid4()
    when = dt.datetime(2026, 5, 1, 12, 0, tzinfo=dt.UTC)
    handle = enqueue(
        "workers.tasks.echo",
        (dt.date(2026, 5, 1), ident),
        {"when": when, "amount": Decimal("9.99"), "pair": (1, (2, 3))},
    )
    row = Job.objects.get(task_id=handle.task_id)
    assert row.payload == {
        "args": ["2026-05-01", str(ident)],
        "kwargs": {"when": "2026-05-01T12:00:00+00:00", "amount": "9.99", "pair": [1, [2, 3]]},
    }


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("args", "kwargs", "path"),
    [
        ((), {"when": object()}, "kwargs['when']"),
        ((1, float("nan")), {}, "args[1]"),
        ((), {"a": {"b": [0, 1, b"x"]}}, "kwargs['a']['b'][2]"),
        ((), {"tags": {"x"}}, "kwargs['tags']"),
        ((), {"m": {3: "three"}}, "kwargs['m']"),
    ],
)
def test_invalid_argument_is_a_value_error_naming_the_path_and_inserts_nothing(args, kwargs, path):
    with pytest.raises(ValueError, match=re.escape(path)) as info:
        enqueue("workers.tasks.echo", args, kwargs)
    assert isinstance(info.value, PayloadError)
    assert Job.objects.count() == 0


@pytest.mark.django_db
def test_a_bad_spec_late_in_a_big_batch_leaves_the_callers_transaction_usable():
    """Rows stream into the COPY while later specs are checked; the bad one aborts the COPY,
    and only the call's own savepoint is rolled back, not the caller's earlier work."""
    specs = [job("workers.tasks.echo", [i]) for i in range(5000)]
    specs.append(job("workers.tasks.echo", [{"when": object()}]))
    with transaction.atomic():
        earlier = enqueue("workers.tasks.echo", ["kept"])
        with pytest.raises(ValueError, match=re.escape("args[0]['when']")):
            enqueue_many(specs)
        later = enqueue("workers.tasks.echo", ["also kept"])
    assert set(Job.objects.values_list("task_id", flat=True)) == {
        earlier.task_id,
        later.task_id,
    }


@pytest.mark.django_db
def test_enqueue_many_keeps_handle_order_across_mixed_delayed_dedup_and_immediate_specs():
    kinds = [{"delay": 30}, {}, {"dedup_key": "x"}, {}, {"delay": 5}, {}, {"dedup_key": "y"}]
    handles = enqueue_many(job("workers.tasks.echo", [i], **kw) for i, kw in enumerate(kinds))
    rows = {m.task_id: m for m in Job.objects.all()}
    assert len(rows) == len(kinds)
    assert [rows[h.task_id].payload["args"] for h in handles] == [[i] for i in range(len(kinds))]
    assert [rows[h.task_id].dedup_key for h in handles] == [None, None, "x", None, None, None, "y"]
    assert_offset(rows[handles[0].task_id], 30)
    assert_offset(rows[handles[1].task_id], 0)


@pytest.mark.django_db
def test_one_bad_spec_rejects_the_whole_enqueue_many_batch():
    specs = [job("workers.tasks.echo", [i]) for i in range(10)]
    specs.insert(5, job("workers.tasks.echo", [1, {"x": float("nan")}]))
    specs.append(job("workers.tasks.echo", [1], delay=5))
    specs.append(job("workers.tasks.echo", [1], dedup_key="d"))
    with pytest.raises(ValueError, match=re.escape("args[1]['x']")):
        enqueue_many(specs)
    assert Job.objects.count() == 0


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"priority": 40_000}, "smallint"),
        ({"delay": -1}, "delay must be a finite number >= 0"),
        ({"eta": dt.datetime(2030, 1, 1)}, "timezone-aware"),
        ({"eta": dt.datetime(2030, 1, 1, tzinfo=dt.UTC), "delay": 5}, "not both"),
        ({"max_attempts": -1}, "max_attempts must be >= 1"),
        ({"max_attempts": 0}, "max_attempts must be >= 1"),  # not "use the default"
        ({"delay": float("nan")}, "delay must be"),
        ({"delay": float("inf")}, "delay must be"),
    ],
)
def test_bad_enqueue_options_are_value_errors_and_insert_nothing(options, fragment):
    with pytest.raises(ValueError, match=re.escape(fragment)):
        enqueue("workers.tasks.echo", [1], **options)
    assert Job.objects.count() == 0


@pytest.mark.django_db
def test_refused_enqueue_leaves_the_callers_transaction_usable():
    """Bad input is caught before any SQL, so it cannot abort the caller's transaction."""
    with transaction.atomic():
        for bad in ({"delay": float("nan")}, {"kwargs": {"x": object()}}):
            with pytest.raises(ValueError, match=r"delay must be|kwargs\['x'\]"):
                enqueue("workers.tasks.echo", [1], **bad)
        handle = enqueue("workers.tasks.echo", [2])
        assert Job.objects.filter(task_id=handle.task_id).exists()
    assert Job.objects.count() == 1


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("args", "kwargs", "fragment"),
    [("abc", {}, "args"), ([], ["x"], "kwargs"), ([], {}, "task name")],
)
def test_args_must_be_a_list_and_kwargs_a_dict(args, kwargs, fragment):
    name = "" if fragment == "task name" else "workers.tasks.echo"
    with pytest.raises(ValueError, match=fragment):
        enqueue(name, args, kwargs)
    assert Job.objects.count() == 0


@pytest.mark.django_db
def test_delay_sets_available_at_from_the_database_clock():
    handle = enqueue("workers.tasks.echo", [1], delay=90)
    row = Job.objects.get(task_id=handle.task_id)
    assert_offset(row, 90)


@pytest.mark.django_db
def test_eta_sets_available_at_exactly():
    eta = dt.datetime(2031, 3, 4, 5, 6, 7, 123456, tzinfo=dt.UTC)
    handle = enqueue("workers.tasks.echo", [1], eta=eta)
    assert Job.objects.get(task_id=handle.task_id).available_at == eta


@pytest.mark.django_db
def test_dedup_key_returns_the_live_duplicate_and_inserts_no_row():
    first = enqueue("workers.tasks.echo", [1], dedup_key="report:42")
    second = enqueue("workers.tasks.echo", [2], dedup_key="report:42")
    assert second.task_id == first.task_id
    assert (second.task_name, second.queue_name) == ("workers.tasks.echo", "default")
    assert Job.objects.count() == 1
    assert Job.objects.get().payload["args"] == [1]  # the first one wins
    other = enqueue("workers.tasks.echo", [3], dedup_key="report:43")
    assert other.task_id != first.task_id
    assert Job.objects.count() == 2


@pytest.mark.django_db
def test_enqueue_many_copies_immediate_jobs_in_order_with_their_handles():
    handles = enqueue_many(job("workers.tasks.echo", [i], priority=i % 3) for i in range(1000))
    assert len(handles) == 1000
    rows = {r.task_id: r for r in Job.objects.all()}
    assert len(rows) == 1000
    for i, handle in enumerate(handles):
        row = rows[handle.task_id]
        assert row.payload == {"args": [i], "kwargs": {}}
        assert (row.priority, row.state, row.attempts) == (i % 3, "ready", 0)
        assert_offset(row, 0)
        assert row.max_attempts == 3
    assert enqueue_many([]) == []


@pytest.mark.django_db
def test_enqueue_many_with_delayed_rows_sets_available_at_per_row():
    eta = dt.datetime(2032, 1, 1, tzinfo=dt.UTC)
    handles = enqueue_many(
        [
            job("workers.tasks.echo", [0]),
            job("workers.tasks.echo", [1], delay=60),
            job("workers.tasks.echo", [2], eta=eta),
            job("workers.tasks.echo", [3], delay=2.5, queue="slow", max_attempts=5),
        ]
    )
    rows = [Job.objects.get(task_id=h.task_id) for h in handles]
    assert [r.payload["args"] for r in rows] == [[0], [1], [2], [3]]
    assert_offset(rows[0], 0)
    assert_offset(rows[1], 60)
    assert rows[2].available_at == eta
    assert_offset(rows[3], 2.5)
    assert (rows[3].queue_name, rows[3].max_attempts) == ("slow", 5)


@pytest.mark.django_db
def test_enqueue_many_with_dedup_keys_returns_existing_task_ids():
    existing = enqueue("workers.tasks.echo", [0], dedup_key="a")
    handles = enqueue_many(
        [
            job("workers.tasks.echo", [1], dedup_key="a"),  # live duplicate in the table
            job("workers.tasks.echo", [2], dedup_key="b"),
            job("workers.tasks.echo", [3], dedup_key="b"),  # duplicate within the batch
            job("workers.tasks.echo", [4], dedup_key="c", delay=30),
            job("workers.tasks.echo", [5]),
        ]
    )
    assert handles[0].task_id == existing.task_id
    assert handles[2].task_id == handles[1].task_id
    assert len({h.task_id for h in handles}) == 4
    assert Job.objects.count() == 4  # a (the existing row), b, c, plain
    by_key = {r.dedup_key: r for r in Job.objects.exclude(dedup_key=None)}
    assert by_key["a"].payload["args"] == [0]
    assert by_key["b"].payload["args"] == [2]
    assert_offset(by_key["c"], 30)


@pytest.mark.django_db(transaction=True)
def test_dedup_key_is_free_again_after_the_first_job_finishes():
    first = enqueue("workers.tasks.echo", [1], dedup_key="sync:7")
    with db_connection.worker_connection() as conn:
        [msg] = queries.job_claim(conn, queue="default", limit=10, lease=30, worker_id="w")
        # Still live while claimed: a second enqueue joins it.
        assert enqueue("workers.tasks.echo", [2], dedup_key="sync:7").task_id == first.task_id
        assert queries.job_ack(conn, [queries.Success(msg, "1", db_now())], ttl=60) == {msg.msg_id}
    again = enqueue("workers.tasks.echo", [3], dedup_key="sync:7")
    assert again.task_id != first.task_id
    assert Job.objects.get().task_id == again.task_id


@pytest.mark.django_db(transaction=True)
def test_dedup_key_is_free_again_after_the_first_job_is_dead_lettered():
    first = enqueue("workers.tasks.echo", [1], dedup_key="sync:8", max_attempts=1)
    with db_connection.worker_connection() as conn:
        [msg] = queries.job_claim(conn, queue="default", limit=10, lease=30, worker_id="w")
        buried = queries.job_bury(conn, [queries.Bury(msg, "exhausted", "boom", "", None)], ttl=60)
        assert buried == {msg.msg_id}
    again = enqueue("workers.tasks.echo", [2], dedup_key="sync:8")
    assert again.task_id != first.task_id


@pytest.mark.django_db
def test_bulk_copy_round_trips_awkward_text_exactly():
    awkward = 'tab\there, newline\nthere, cr\r, backslash \\ and \\N, quote " and é ✓'
    handles = enqueue_many(
        [
            job("workers.tasks.echo", [awkward], kwargs={"k\tey": awkward}, tenant_key="t\t\\N")
            for _ in range(3)
        ]
        + [job("workers.tasks.echo", [1], resource_key="res\\path\nx")]
        + [job("workers.tasks.echo", [2], queue="q\\1\tx\n")]
    )
    rows = {m.task_id: m for m in Job.objects.all()}
    assert len(rows) == 5
    assert rows[handles[4].task_id].queue_name == handles[4].queue_name == "q\\1\tx\n"
    for handle in handles[:3]:
        row = rows[handle.task_id]
        assert row.payload == {"args": [awkward], "kwargs": {"k\tey": awkward}}
        assert row.tenant_key == "t\t\\N"
        assert row.resource_key is None
    assert rows[handles[3].task_id].resource_key == "res\\path\nx"


def test_task_ids_are_time_ordered_version_7_uuids():
    from pg_queue.producer import new_task_id

    ids = [new_task_id() for _ in range(1000)]
    assert {u.version for u in ids} == {7}
    assert all(uuid.UUID(str(u)) == u and hash(uuid.UUID(u.hex)) == hash(u) for u in ids)
    assert {u.variant for u in ids} == {uuid.RFC_4122}
    assert len(set(ids)) == 1000
    stamps = [u.int >> 80 for u in ids]
    assert stamps == sorted(stamps)  # milliseconds never go backwards within a process
