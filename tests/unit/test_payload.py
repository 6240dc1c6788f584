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

from pg_queue.core.exceptions import PayloadError
from pg_queue.core.payload import (
    INT_MAX,
    INT_MIN,
    MAX_DEPTH,
    ContinuationSpec,
    TaskPayload,
    check_text,
    coerce_json,
    dumps,
    loads,
    validate_delay,
)


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


def nested(levels: int) -> list:
    value: list = []
    for _ in range(levels - 1):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("value", "path", "fragment"),
    [
        ([1, INT_MAX + 1], "result[1]", "outside the signed 64-bit integer range"),
        ({"n": INT_MIN - 1}, "result['n']", "outside the signed 64-bit integer range"),
        ([2**64], "result[0]", "outside the signed 64-bit integer range"),
        ([10**400], "result[0]", "outside the signed 64-bit integer range"),
        (["ok", "a\x00b"], "result[1]", "NUL"),
        ({"k": {"\x00": 1}}, "result['k'] has a key '\\x00'", "NUL"),
        ([["\ud800"]], "result[0][0]", "surrogate"),
        (["\ud83d\ude00"], "result[0]", "surrogate"),
    ],
)
def test_dumps_refuses_what_would_not_come_back_exactly_naming_the_path(value, path, fragment):
    """No fallback to json.dumps for big integers, no NUL or surrogates for jsonb to choke on."""
    with pytest.raises(PayloadError) as info:
        dumps(value, "result")
    assert str(info.value).startswith(path)
    assert fragment in str(info.value)


def test_text_that_only_looks_like_nul_or_a_long_number_is_accepted():
    value = ["\\u0000", "12345678901234567890123", INT_MAX, INT_MIN, {"\\u0000": 10**18}]
    assert loads(dumps(value)) == value


def test_floats_from_1e16_are_written_as_exact_decimals_with_a_fraction():
    """jsonb stores ``1e+16`` as a numeric without scale and prints ``10000000000000000``."""
    text = dumps(coerce_json([1e16, -2.5e200, 1.5e16, 9999999999999998.0, 1e-7], "args"))
    assert text.startswith("[10000000000000000.0,-25000000000000000")
    assert "e" not in text.split(",")[1]
    assert text.endswith(",15000000000000000.0,9999999999999998.0,1e-7]")
    assert loads(text) == [1e16, -2.5e200, 1.5e16, 9999999999999998.0, 1e-7]
    assert all(type(v) is float for v in loads(text))


def test_nesting_is_limited_to_max_depth_levels_below_the_top_value():
    assert coerce_json([nested(MAX_DEPTH)], "args") == [nested(MAX_DEPTH)]
    assert loads(dumps(coerce_json({"a": nested(MAX_DEPTH)}, "kwargs")))
    with pytest.raises(PayloadError, match=f"nested more than {MAX_DEPTH} levels") as info:
        coerce_json([nested(MAX_DEPTH + 1)], "args")
    assert str(info.value).startswith("args" + "[0]" * (MAX_DEPTH + 1) + " ")
    with pytest.raises(PayloadError, match="nested more than"):  # not RecursionError
        coerce_json({"a": {"b": nested(5000)}}, "kwargs")


def test_str_subclass_keys_become_plain_strings():
    class Key(enum.StrEnum):
        A = "a"

    value = coerce_json({Key.A: 1}, "kwargs")
    assert type(next(iter(value))) is str
    assert dumps(value) == '{"a":1}'


def test_continuation_paths_name_the_role():
    spec = ContinuationSpec(task_name="t.x", queue="q", args=[float("nan")])
    with pytest.raises(PayloadError, match=re.escape("on_error.args[0] is nan")):
        TaskPayload(on_error=spec).to_json()


@pytest.mark.parametrize(
    ("value", "fragment"),
    [("a\x00", "NUL"), ("\udc00x", "surrogate"), (5, "must be a string, got int")],
)
def test_check_text_refuses_what_postgres_text_cannot_hold(value, fragment):
    with pytest.raises(PayloadError, match=fragment) as info:
        check_text("tenant_key", value)
    assert str(info.value).startswith("tenant_key")
    assert check_text("tenant_key", "ok é 😀") == "ok é 😀"
