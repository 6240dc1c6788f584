"""The wire contract without a database: JSON coercion and the errors that name the path."""

from __future__ import annotations

import datetime as dt
import enum
import math
import re
import uuid
from collections import OrderedDict
from decimal import Decimal

import pytest

from pg_queue.exceptions import PayloadError
from pg_queue.payload import ContinuationSpec, TaskPayload, coerce_json, dumps, validate_delay


class Colour(enum.Enum):
    RED = "red"


class Size(enum.IntEnum):
    BIG = 3


def test_dates_uuids_decimals_and_tuples_become_plain_json():
    when = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    ident = uuid.UUID("12345678-1234-5678-1234-567812345678")
    value = {
        "when": when,
        "day": dt.date(2026, 1, 2),
        "at": dt.time(10, 30),
        "id": ident,
        "amount": Decimal("12.50"),
        "pair": (1, "two"),
        "nested": [(dt.date(2020, 2, 29),)],
        "span": dt.timedelta(minutes=2),
        "colour": Colour.RED,
        "size": Size.BIG,
        "ordered": OrderedDict([("a", 1)]),
    }
    assert coerce_json(value, "kwargs") == {
        "when": "2026-01-02T03:04:05+00:00",
        "day": "2026-01-02",
        "at": "10:30:00",
        "id": "12345678-1234-5678-1234-567812345678",
        "amount": "12.50",
        "pair": [1, "two"],
        "nested": [["2020-02-29"]],
        "span": 120.0,
        "colour": "red",
        "size": 3,
        "ordered": {"a": 1},
    }


def test_plain_json_passes_through_unchanged():
    value = {"s": "x", "i": 1, "f": 1.5, "b": True, "n": None, "l": [1, [2]], "d": {"k": {}}}
    assert coerce_json(value, "kwargs") == value


@pytest.mark.parametrize(
    ("value", "path", "fragment"),
    [
        ({"when": object()}, "kwargs['when']", "not JSON-serialisable"),
        ([1, float("nan")], "args[1]", "NaN"),
        ([float("inf")], "args[0]", "infinity"),
        ({"a": {"b": [0, 1, b"raw"]}}, "kwargs['a']['b'][2]", "bytes"),
        ({"tags": {1, 2}}, "kwargs['tags']", "set"),
        ([Decimal("NaN")], "args[0]", "NaN"),
        ({"a": [{"deep": bytearray(b"x")}]}, "kwargs['a'][0]['deep']", "bytearray"),
    ],
)
def test_invalid_values_raise_an_error_naming_their_path(value, path, fragment):
    root = "kwargs" if isinstance(value, dict) else "args"
    with pytest.raises(PayloadError, match=re.escape(path)) as info:
        coerce_json(value, root)
    assert fragment in str(info.value)
    assert isinstance(info.value, ValueError)


def test_non_string_dict_keys_are_refused_with_the_path_and_key():
    with pytest.raises(PayloadError) as info:
        coerce_json({"a": {1: "one"}}, "kwargs")
    text = str(info.value)
    assert "kwargs['a']" in text
    assert "key 1" in text
    assert "int" in text


def test_payload_round_trips_through_json():
    payload = TaskPayload(
        args=[1, "a"],
        kwargs={"k": [1]},
        headers={"trace": "t"},
        on_success=ContinuationSpec(task_name="t.ok", queue="q", kwargs={"x": 1}),
        on_error=ContinuationSpec(task_name="t.err", queue="q"),
        reply_key="r1",
    )
    data = payload.to_json()
    assert dumps(data)  # is JSON
    assert TaskPayload.from_json(data) == payload


@pytest.mark.parametrize(
    ("stored", "fragment"),
    [
        ("garbage", "payload is str"),
        ([1, 2], "payload is list"),
        ({"args": "nope", "kwargs": {}}, "args is str"),
        ({"args": [], "kwargs": [1]}, "kwargs is list"),
        ({"args": [], "kwargs": {}, "headers": [1]}, "headers is list"),
        ({"args": [], "kwargs": {}, "on_success": "t.x"}, "continuation is str"),
    ],
)
def test_undecodable_payloads_raise_payload_error(stored, fragment):
    with pytest.raises(PayloadError, match=re.escape(fragment)):
        TaskPayload.from_json(stored)


@pytest.mark.parametrize(
    "continuation",
    [
        {"queue": "q"},  # no task name
        {"task_name": "t.x"},  # no queue
        {"task_name": "t.x", "queue": "q", "args": 5},  # args not a list
    ],
)
def test_malformed_stored_continuation_is_a_payload_error(continuation):
    """A worker dead-letters PayloadError; any other exception escapes its decode step."""
    with pytest.raises(PayloadError):
        TaskPayload.from_json({"args": [], "kwargs": {}, "on_success": continuation})


def test_continuation_without_queue_or_task_name_is_refused_at_creation():
    with pytest.raises(ValueError, match="no queue"):
        ContinuationSpec(task_name="t.x", queue="")
    with pytest.raises(ValueError, match="no task name"):
        ContinuationSpec(task_name="", queue="q")


@pytest.mark.parametrize("seconds", [0, 0.0, -0.0, 1, 2.5, Decimal("1.5"), 86_400 * 365 * 7000])
def test_validate_delay_accepts_finite_non_negative_numbers_due_before_year_10000(seconds):
    value = validate_delay(seconds, "delay")
    assert type(value) is float
    assert value == float(seconds)
    assert math.copysign(1.0, value) == 1.0  # -0.0 became 0.0


@pytest.mark.parametrize(
    ("seconds", "fragment"),
    [
        (-1, "finite number >= 0"),
        (-1e-300, "finite number >= 0"),
        (float("nan"), "finite number >= 0"),
        (float("inf"), "finite number >= 0"),
        (Decimal("NaN"), "finite number >= 0"),
        (Decimal("sNaN"), "finite number >= 0"),
        (10**400, "finite number >= 0"),
        (True, "got bool True"),
        ("5", "got str '5'"),
        (None, "got NoneType None"),
        (dt.timedelta(seconds=5), "got timedelta"),
        (86_400 * 365 * 9000, "after year 9999"),
        (1e300, "after year 9999"),
    ],
)
def test_validate_delay_refuses_what_no_due_time_can_represent(seconds, fragment):
    with pytest.raises(PayloadError, match=re.escape(fragment)) as info:
        validate_delay(seconds, "Retry(delay=...)")
    assert str(info.value).startswith("Retry(delay=...)")
