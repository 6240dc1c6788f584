"""Fuzz the payload contract end to end: random arguments are either refused at enqueue, or
come back from a real worker exactly as they went in.

Thousands of random argument structures (strings with NUL, surrogates, emoji and control
characters; integers around and past the 64-bit bounds; huge, tiny, subnormal, negative-zero
and non-finite floats; booleans, None; nested lists and dicts of random depth) go through
``enqueue`` and ``enqueue_many``. A test-local oracle, written independently of pg_queue's
code, says which values must be refused. Refused calls must raise ``PayloadError`` naming one
of the bad paths and write nothing; accepted jobs run through one ``run_pg_worker --burst``
whose echo task returns its arguments, and each stored result must equal the arguments type
for type (-0.0 may come back as 0.0).
"""

from __future__ import annotations

import math
from typing import Any

import pytest
from django.db import connection, transaction
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pg_queue.core.exceptions import PayloadError
from pg_queue.core.payload import loads
from pg_queue.producer import enqueue, enqueue_many, job
from tests.payload_echo import ECHO_QUEUE, echo, nested, same_json

#: Written out here rather than imported: the oracle must not share pg_queue's mistakes.
LOWEST, HIGHEST = -9_223_372_036_854_775_808, 9_223_372_036_854_775_807
DEEPEST = 200
#: Batches of 3-5 structures per example: comfortably over 5,000 structures in all.
EXAMPLES = 1_500
MIN_STRUCTURES = 5_000

special_strings = st.sampled_from(
    [
        "",
        "\x00",
        "a\x00b",
        "\ud800",
        "x\udfff",
        "\ud83d\ude00",  # a surrogate pair as two characters
        "😀",
        "\\u0000",
        "\\",
        '"',
        "\x01\x1f\x7f",
        "\u2028\u2029",
        "\ufffe\uffff",
        "1234567890123456789",
        "é",
    ]
)
strings = st.one_of(
    st.text(max_size=10),
    st.text(st.characters(categories=["Cc", "Cs", "So", "Lo"]), max_size=6),
    special_strings,
)
integers = st.one_of(
    st.integers(-1000, 1000),
    st.integers(),
    st.integers(LOWEST - 3, LOWEST + 3),
    st.integers(HIGHEST - 3, HIGHEST + 3),
    st.sampled_from([2**64 - 1, 2**64, -(2**64), 10**18, 10**19, -(10**19), 10**30, 2**53 + 1]),
)
floats = st.one_of(
    st.floats(),
    st.floats(min_value=-1e-300, max_value=1e-300),  # tiny and subnormal
    st.floats(min_value=1e15, max_value=1e20),  # around where jsonb used to print integers
    st.sampled_from([0.0, -0.0, 1e16, -1e16, 9999999999999998.0, 1.7976931348623157e308]),
    st.sampled_from([5e-324, 1e-7, math.nan, math.inf, -math.inf]),
)
scalars = st.one_of(strings, integers, floats, st.booleans(), st.none())
values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(strings, children, max_size=3)
    ),
    max_leaves=6,
)
#: Straight down to around the depth limit (the echo keeps each argument's depth).
deep = st.builds(nested, st.integers(DEEPEST - 5, DEEPEST + 5), scalars)
arguments = st.one_of(st.lists(values, max_size=3), st.lists(deep, min_size=1, max_size=1))
keyword_arguments = st.dictionaries(strings, values, max_size=2)
structure = st.tuples(arguments, keyword_arguments, st.sampled_from([None, 0.001]))


def bad_paths(value: Any, path: str, depth: int = 0) -> list[str]:
    """The oracle: every path where ``value`` holds something that cannot travel exactly."""
    if isinstance(value, str):
        surrogate = any(0xD800 <= ord(c) <= 0xDFFF for c in value)
        return [path] if "\x00" in value or surrogate else []
    if isinstance(value, bool) or value is None:
        return []
    if isinstance(value, int):
        return [] if LOWEST <= value <= HIGHEST else [path]
    if isinstance(value, float):
        return [] if math.isfinite(value) else [path]
    if depth > DEEPEST:
        return [path]
    found = []
    if isinstance(value, list):
        for i, item in enumerate(value):
            found += bad_paths(item, f"{path}[{i}]", depth + 1)
    else:
        for key, item in value.items():
            found += bad_paths(key, path)  # a key is reported at its dict
            found += bad_paths(item, f"{path}[{key!r}]", depth + 1)
    return found


def message_count() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_queue_message")
        return cursor.fetchone()[0]


def assert_refused_at_one_of(error: PayloadError, bad: list[str]) -> None:
    message = str(error)
    assert any(message.startswith(f"{path} ") for path in bad), (message, bad)


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_random_arguments_are_refused_at_enqueue_or_come_back_from_a_worker_exactly(
    run_worker,
):
    sent: dict[Any, list[Any]] = {}  # task id -> the result the echo must store
    counts = {"structures": 0, "refused": 0}

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(batch=st.lists(structure, min_size=3, max_size=5), together=st.booleans())
    def send(batch: list[tuple[list[Any], dict[str, Any], float | None]], together: bool) -> None:
        counts["structures"] += len(batch)
        bad = [bad_paths(a, "args") + bad_paths(k, "kwargs") for a, k, _ in batch]
        if together:  # one enqueue_many: one bad structure refuses the whole batch
            before = message_count()
            specs = [job(echo.name, a, k, delay=d) for a, k, d in batch]
            if any(bad):
                with pytest.raises(PayloadError) as info:
                    enqueue_many(specs)
                assert_refused_at_one_of(info.value, [p for paths in bad for p in paths])
                assert message_count() == before
                counts["refused"] += 1
                return
            for handle, (a, k, _) in zip(enqueue_many(specs), batch, strict=True):
                sent[handle.task_id] = [*a, k]
            return
        for (a, k, d), paths in zip(batch, bad, strict=True):
            if paths:
                before = message_count()
                with pytest.raises(PayloadError) as info:
                    enqueue(echo.name, a, k, delay=d)
                assert_refused_at_one_of(info.value, paths)
                assert message_count() == before
                counts["refused"] += 1
            else:
                sent[enqueue(echo.name, a, k, delay=d).task_id] = [*a, k]

    # One transaction for all of it (a commit per job would dominate the run); refusals
    # inside it must leave it usable, and it must commit for the worker to see the jobs.
    with transaction.atomic():
        send()
    assert counts["structures"] >= MIN_STRUCTURES, counts
    assert counts["refused"] > 100, counts  # the strategies do reach the refusals
    assert len(sent) > 500, counts

    code, output = run_worker("--queues", ECHO_QUEUE, "--include", "tests.payload_echo")
    assert code == 0, output[-3000:]
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT task_id, status, result::text, error FROM pg_task_result "
            "WHERE task_id = ANY(%s)",
            [list(sent)],
        )
        rows = cursor.fetchall()
    failed = [(task_id, error) for task_id, status, _, error in rows if status != "succeeded"]
    assert not failed, failed[:5]
    assert len(rows) == len(sent), output[-3000:]
    for task_id, _, result, _ in rows:
        same_json(loads(result), sent[task_id], f"result of {task_id}")
