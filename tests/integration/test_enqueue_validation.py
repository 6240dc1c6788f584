"""One validation for every entry point: names, keys, delays, ETAs, max_attempts and the
shape of args/kwargs are refused with a ``ValueError`` naming the option, before any SQL runs.

Each of these used to reach the database (a server error that aborts the caller's
transaction), be stored in a form nothing could read back, or be accepted by one entry point
and refused by another.
"""

from __future__ import annotations

import datetime as dt
import re

import pytest
from django.db import connection, transaction

from pg_queue.core.exceptions import ConfigurationError
from pg_queue.core.payload import ContinuationSpec
from pg_queue.db.connection import worker_connection
from pg_queue.models import Job
from pg_queue.producer import enqueue, enqueue_many, job
from pg_queue.tasks import task
from tests import enqueue_paths
from tests.payload_echo import echo

EST = dt.timezone(dt.timedelta(hours=-5))

BAD_OPTIONS = [
    pytest.param({"queue": "a,b"}, "queue 'a,b' contains ','", id="queue-with-comma"),
    pytest.param({"queue": "a=b"}, "queue 'a=b' contains '='", id="queue-with-equals"),
    pytest.param({"queue": "q\x00"}, "queue 'q\\x00' contains NUL", id="queue-nul"),
    pytest.param({"queue": "q\ud800"}, "queue 'q\\ud800' contains a surrogate", id="q-surrogate"),
    pytest.param({"queue": 5}, "queue must be a non-empty string", id="queue-not-str"),
    pytest.param({"tenant_key": "t\x00"}, "tenant_key 't\\x00' contains NUL", id="tenant-nul"),
    pytest.param({"tenant_key": "\udfff"}, "tenant_key '\\udfff' contains a surr", id="t-surr"),
    pytest.param({"tenant_key": 7}, "tenant_key must be a string", id="tenant-not-str"),
    pytest.param({"dedup_key": "d\x00"}, "dedup_key 'd\\x00' contains NUL", id="dedup-nul"),
    pytest.param({"dedup_key": "\ud83d\ude00"}, "dedup_key '\\ud83d\\ude00' contains", id="d-pair"),
    pytest.param({"resource_key": "r\x00"}, "resource_key 'r\\x00' contains NUL", id="res-nul"),
    pytest.param({"resource_key": "\udc00"}, "resource_key '\\udc00' contains a", id="r-surr"),
    pytest.param({"delay": 1e12}, "after year 9999", id="delay-past-year-9999"),
    pytest.param({"delay": 10**400}, "delay must be a finite number", id="delay-huge-int"),
    pytest.param({"delay": "5"}, "delay must be a finite number >= 0 seconds, got str", id="s"),
    pytest.param({"delay": True}, "got bool", id="delay-bool"),
    pytest.param({"delay": -0.5}, "delay must be a finite number >= 0", id="delay-negative"),
    pytest.param({"eta": "2030-01-01"}, "eta must be a timezone-aware datetime, got str", id="e"),
    pytest.param({"eta": dt.date(2030, 1, 1)}, "aware datetime, got date", id="eta-date"),
    pytest.param({"eta": dt.datetime(2030, 1, 1)}, "timezone-aware", id="eta-naive"),
    pytest.param(
        {"eta": dt.datetime(9999, 12, 31, 23, tzinfo=EST)}, "outside years 1..9999", id="eta-10k"
    ),
    pytest.param({"max_attempts": 2**31}, "<= 2147483647", id="max-attempts-past-int"),
    pytest.param({"max_attempts": True}, "max_attempts must be an int, got bool", id="ma-bool"),
    pytest.param({"max_attempts": 2.5}, "max_attempts must be an int, got float", id="ma-float"),
    pytest.param({"max_attempts": "3"}, "max_attempts must be an int, got str", id="ma-str"),
    pytest.param({"max_attempts": 0}, "max_attempts must be >= 1", id="max-attempts-zero"),
    pytest.param({"priority": True}, "priority must be an int", id="priority-bool"),
]


@pytest.mark.django_db
@pytest.mark.parametrize("entry", enqueue_paths.ALL)
@pytest.mark.parametrize(("options", "fragment"), BAD_OPTIONS)
def test_bad_options_are_value_errors_naming_the_option_at_every_entry_point(
    entry, options, fragment
):
    with transaction.atomic():
        kept = enqueue(echo.name, ["kept"]).task_id
        with pytest.raises(ValueError, match=re.escape(fragment)):
            entry([1], {}, **options)
        after = enqueue(echo.name, ["after"]).task_id  # the transaction is still usable
    assert set(Job.objects.values_list("task_id", flat=True)) == {kept, after}


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("t\x00", "task name 't\\x00' contains NUL"),
        ("t\ud800", "task name 't\\ud800' contains a surrogate"),
        ("", "task name"),
    ],
)
@pytest.mark.parametrize("via", ["enqueue", "enqueue_many", "enqueue_many-insert"])
def test_bad_task_names_are_refused_before_any_sql(name, fragment, via):
    def send() -> None:
        if via == "enqueue":
            enqueue(name, [1])
        else:
            enqueue_many([job(name, [1], delay=5 if via.endswith("insert") else None)])

    with transaction.atomic():
        with pytest.raises(ValueError, match=re.escape(fragment)):
            send()
        enqueue(echo.name, [1])
    assert Job.objects.count() == 1


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("continuation", "fragment"),
    [
        (ContinuationSpec(task_name="t.x", queue="a,b"), "on_success queue 'a,b' contains ','"),
        (ContinuationSpec(task_name="t\x00", queue="q"), "on_success task name 't\\x00'"),
        ("t.x", "on_success must be a ContinuationSpec"),
    ],
)
@pytest.mark.parametrize("entry", enqueue_paths.BY_NAME)
def test_continuation_names_are_checked_at_enqueue_not_when_the_worker_sends_them(
    entry, continuation, fragment
):
    with pytest.raises(ValueError, match=re.escape(fragment)):
        entry([1], {}, on_success=continuation)
    assert Job.objects.count() == 0


@pytest.mark.django_db
@pytest.mark.parametrize("args", ["abc", None, 5, {"a": 1}])
def test_job_refuses_args_that_are_not_a_list_exactly_like_enqueue(args):
    """``job(name, "abc")`` used to queue ['a', 'b', 'c']; ``job(name, None)`` a TypeError."""
    with pytest.raises(ValueError, match="must be a list or tuple"):
        enqueue(echo.name, args)
    for delay in (None, 60):
        with pytest.raises(ValueError, match="must be a list or tuple"):
            enqueue_many([job(echo.name, [1]), job(echo.name, args, delay=delay)])
    assert Job.objects.count() == 0


@pytest.mark.django_db
@pytest.mark.parametrize("kwargs", [["x"], "k=v", 3])
def test_job_refuses_kwargs_that_are_not_a_dict_exactly_like_enqueue(kwargs):
    with pytest.raises(ValueError, match="must be a dict"):
        enqueue(echo.name, [], kwargs)
    with pytest.raises(ValueError, match="must be a dict"):
        enqueue_many([job(echo.name, [], kwargs)])
    assert Job.objects.count() == 0


def test_task_decorator_and_using_refuse_a_queue_no_worker_can_serve():
    with pytest.raises(ConfigurationError, match="contains ','"):
        task(queue="mail,sms")(lambda: None)
    with pytest.raises(ConfigurationError, match="max_attempts must be >= 1 and <= 2147483647"):
        task(max_attempts=2**31)(lambda: None)
    with pytest.raises(ValueError, match="contains '='"):
        echo.using(queue="mail=3")


@pytest.mark.django_db(transaction=True)
def test_a_refusal_inside_atomic_leaves_the_callers_transaction_usable_and_committable():
    """Each of these used to be a server error: the caller's whole transaction was lost."""
    refusals = [
        (lambda: enqueue(echo.name, ["a\x00"]), "NUL"),
        (lambda: enqueue(echo.name, [2**64 - 1]), "64-bit"),
        (lambda: enqueue(echo.name, [1], queue="q\x00"), "NUL"),
        (lambda: enqueue(echo.name, [1], max_attempts=2**31), "max_attempts"),
        (lambda: enqueue(echo.name, [1], delay=1e12), "year 9999"),
        (lambda: enqueue_many([job(echo.name, [1]), job(echo.name, ["\x00"])]), "NUL"),
        (lambda: enqueue_many([job(echo.name, [1], delay=5, tenant_key="\x00")]), "NUL"),
    ]
    with transaction.atomic():
        first = enqueue(echo.name, ["first"]).task_id
        for refuse, fragment in refusals:
            with pytest.raises(ValueError, match=re.escape(fragment)):
                refuse()
            with connection.cursor() as cursor:
                cursor.execute("SELECT count(*) FROM pg_queue_message")
                assert cursor.fetchone() == (1,)
        last = enqueue(echo.name, ["last"]).task_id
    # Committed: another connection sees both rows.
    with worker_connection() as conn:
        rows = conn.execute("SELECT task_id FROM pg_queue_message").fetchall()
    assert {r[0] for r in rows} == {first, last}


@pytest.mark.django_db
def test_an_eta_at_the_end_of_year_9999_in_utc_is_accepted():
    eta = dt.datetime(9999, 12, 31, 23, 59, tzinfo=dt.UTC)
    handle = enqueue(echo.name, [1], eta=eta)
    assert Job.objects.get(task_id=handle.task_id).available_at == eta
