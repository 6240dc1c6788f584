"""The payload contract against a real PostgreSQL, through every way of enqueueing a job.

A value is either refused at enqueue with a ``PayloadError`` naming its path (nothing written,
the caller's transaction still usable), or it comes back from the payload column exactly as it
went in, type for type: jsonb stores numbers as numeric and strings as text, which is where
NUL, surrogates, big integers and big floats used to go wrong.
"""

from __future__ import annotations

import math
import sys

import pytest
from django.db import connection, transaction

from pg_queue.core.exceptions import PayloadError
from pg_queue.core.payload import INT_MAX, INT_MIN, MAX_DEPTH, coerce_json, dumps, loads
from pg_queue.models import Job
from pg_queue.producer import enqueue
from tests import enqueue_paths
from tests.payload_echo import echo, nested, same_json, stored_payloads

BAD_VALUES = [
    pytest.param(["a\x00b"], {}, "args[0]", "NUL", id="nul-in-a-string"),
    pytest.param([], {"k\x00": 1}, "kwargs", "NUL", id="nul-in-a-kwarg-name"),
    pytest.param([], {"a": [{"k\x00": 1}]}, "kwargs['a'][0]", "NUL", id="nul-in-a-nested-key"),
    pytest.param([["ok", "\ud800"]], {}, "args[0][1]", "surrogate", id="lone-surrogate"),
    pytest.param(
        [], {"e": "\ud83d\ude00"}, "kwargs['e']", "surrogate", id="surrogate-pair-as-two-chars"
    ),
    pytest.param([], {"\udc00": 1}, "kwargs", "surrogate", id="surrogate-in-a-key"),
    pytest.param([INT_MAX + 1], {}, "args[0]", "64-bit", id="int-max-plus-one"),
    pytest.param([INT_MIN - 1], {}, "args[0]", "64-bit", id="int-min-minus-one"),
    pytest.param([], {"a": [0, 1, 2**64]}, "kwargs['a'][2]", "64-bit", id="past-64-bits"),
    pytest.param([{"n": -(10**40)}], {}, "args[0]['n']", "64-bit", id="huge-negative-int"),
    pytest.param(
        [nested(MAX_DEPTH + 1)],
        {},
        "args" + "[0]" * (MAX_DEPTH + 1),
        f"nested more than {MAX_DEPTH} levels",
        id="one-level-too-deep",
    ),
    pytest.param(
        [],
        {"deep": nested(1000)},
        "kwargs['deep']" + "[0]" * MAX_DEPTH,
        "nested more than",
        id="1000-levels",
    ),
]


@pytest.mark.django_db
@pytest.mark.parametrize("entry", enqueue_paths.ALL)
@pytest.mark.parametrize(("args", "kwargs", "path", "fragment"), BAD_VALUES)
def test_a_value_postgres_would_refuse_or_change_is_refused_at_enqueue_naming_its_path(
    entry, args, kwargs, path, fragment
):
    with transaction.atomic():
        kept = enqueue(echo.name, ["kept"]).task_id
        with pytest.raises(PayloadError) as info:
            entry(args, kwargs)
        message = str(info.value)
        assert message.startswith(f"{path} "), message
        assert fragment in message
        after = enqueue(echo.name, ["after"]).task_id  # the transaction is still usable
    assert set(Job.objects.values_list("task_id", flat=True)) == {kept, after}


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("options", "path"),
    [
        ({"headers": {"trace": "t\x00"}}, "headers['trace']"),
        ({"headers": {"trace": ["\udfff"]}}, "headers['trace'][0]"),
        ({"reply_key": "r\x00"}, "reply_key"),
    ],
)
@pytest.mark.parametrize("entry", enqueue_paths.BY_NAME)
def test_headers_and_reply_key_are_refused_like_arguments(entry, options, path):
    with pytest.raises(PayloadError, match=r"NUL|surrogate") as info:
        entry([1], {}, **options)
    assert str(info.value).startswith(path)
    assert Job.objects.count() == 0


@pytest.mark.django_db
@pytest.mark.parametrize("entry", enqueue_paths.BY_NAME)
def test_continuation_arguments_are_refused_at_enqueue_naming_the_continuation(entry):
    from pg_queue.core.payload import ContinuationSpec

    bad = ContinuationSpec(task_name=echo.name, queue="q", args=[1, {"x": "\x00"}])
    with pytest.raises(PayloadError) as info:
        entry([1], {}, on_success=bad)
    assert str(info.value).startswith("on_success.args[1]['x'] contains NUL")
    with pytest.raises(PayloadError) as info:
        entry(
            [1], {}, on_error=ContinuationSpec(task_name=echo.name, queue="q", kwargs={"n": 2**70})
        )
    assert str(info.value).startswith("on_error.kwargs['n'] is 1180591620717411303424")
    assert Job.objects.count() == 0


#: Values that must come back exactly; each paired with what comes back if it differs.
AWKWARD_FLOATS = [
    1e16,
    -1e16,
    1.5e16,
    9999999999999998.0,  # the last float orjson writes without an exponent
    1e22,
    123456789012345680.0,
    -2.5e200,
    sys.float_info.max,
    -sys.float_info.max,
    1e-7,
    0.1,
    5e-324,  # the smallest subnormal
    sys.float_info.min,
    2.0**-1074 * 3,
    math.pi * 1e300,
]
GOOD_ARGS = [
    INT_MAX,
    INT_MIN,
    2**53 + 1,
    10**18,
    -(10**18),
    1234567890123456789,
    "\\u0000 is six harmless characters",
    "1234567890123456789012345 as text",
    "emoji 😀, control \x01\x1f\x7f, non-characters \ufffe\uffff, é",
    True,
    False,
    None,
    *AWKWARD_FLOATS,
    nested(MAX_DEPTH, "at the limit"),
    {"": "empty key", "\\u0000": 1, "big": [1e300, {"x": -1e17}]},
]
GOOD_KWARGS = {"floats": AWKWARD_FLOATS, "deep": nested(MAX_DEPTH), "zero": 0.0, "int": 0}


@pytest.mark.django_db
@pytest.mark.parametrize("entry", enqueue_paths.ALL)
def test_accepted_values_come_back_from_jsonb_exactly_type_for_type(entry):
    [task_id] = entry(GOOD_ARGS, GOOD_KWARGS)
    stored = stored_payloads([task_id])[task_id]
    same_json(stored["args"], GOOD_ARGS, "args")
    same_json(stored["kwargs"], GOOD_KWARGS, "kwargs")


@pytest.mark.django_db
def test_negative_zero_comes_back_as_zero():
    """Documented: jsonb's numeric has no negative zero; -0.0 == 0.0 in Python too."""
    task_id = enqueue(echo.name, [-0.0, [-0.0]]).task_id
    stored = stored_payloads([task_id])[task_id]["args"]
    assert stored == [0.0, [0.0]]
    assert math.copysign(1.0, stored[0]) == 1.0


@pytest.mark.django_db
@pytest.mark.parametrize("value", AWKWARD_FLOATS)
def test_encoded_floats_survive_jsonb_as_floats(value):
    """``dumps`` writes floats from 1e16 without an exponent: jsonb would print them as ints."""
    text = dumps(coerce_json([value, -value], "value"))
    with connection.cursor() as cursor:
        cursor.execute("SELECT %s::jsonb::text", [text])
        [printed] = cursor.fetchone()
    same_json(loads(printed), [value, -value])
