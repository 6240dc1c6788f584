"""The wire contract: what a job's ``payload`` column holds, and how values become JSON.

No pickle, ever. Arguments are coerced to JSON at the boundary (enqueue) so that a bad value is a
``ValueError`` naming the argument path in the caller's stack, not a poison job in a worker
nor a server error that aborts the caller's transaction.

What travels is exactly what comes back (``loads(dumps(x)) == x``, type for type, through
PostgreSQL's jsonb): strings without NUL or surrogate code points, signed 64-bit integers,
finite floats (-0.0 comes back as 0.0: jsonb's numeric has no negative zero), booleans, None,
and lists and dicts with str keys nested at most ``MAX_DEPTH`` levels. Everything else is
refused with ``PayloadError``. ``coerce_json`` does the type work on every value; the
per-string and per-integer checks run only when orjson refuses a value or its output holds a
``\\u0000`` escape or 19 digits in a row, so the common case costs two scans of the JSON text.
"""

from __future__ import annotations

import datetime as dt
import enum
import json
import math
import numbers
import re
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import orjson

from pg_queue.core.exceptions import PayloadError

_SCALARS = (str, int, bool, type(None))
#: The signed 64-bit range: what every decoder (orjson, PostgreSQL's bigint) agrees on.
INT_MIN, INT_MAX = -(2**63), 2**63 - 1
#: 19 digits in a row may be an integer orjson would silently turn into a float.
_LONG_DIGITS = re.compile(r"\d{19}")
_SURROGATE = re.compile("[\ud800-\udfff]")
#: Lists and dicts nested inside one top-level value (the args list, the kwargs dict, the
#: headers, a result). orjson refuses to write more than 254 levels in all, and a stored
#: payload wraps user values in up to three more (payload object, continuation object, args
#: list); Python's recursion limit (~1,000 frames) would otherwise be the error. 200 keeps a
#: margin for those wrappers and for a result handed on as a continuation's argument.
MAX_DEPTH = 200
#: Floats at least this large in magnitude are written by orjson with an exponent (``1e+16``),
#: which jsonb stores as a numeric without a fractional part and prints as an integer.
_WIDE_FLOAT = 1e16
#: Every due time must be at or before this instant (Unix seconds): PostgreSQL's timestamptz
#: reaches year 294276, but Python's datetime, and so anything reading ``available_at`` back
#: (Django, psycopg), ends with year 9999.
LATEST_DUE = dt.datetime.max.replace(tzinfo=dt.UTC).timestamp()


def validate_delay(seconds: object, label: str) -> float:
    """``seconds`` as a float delay, or ``PayloadError`` naming ``label``.

    A delay is an int, float or Decimal (not a bool), finite, >= 0, and due no later than
    year 9999 by this machine's clock (``LATEST_DUE``). -0.0 becomes 0.0. Pure: no database
    access, so the worker can check ``Retry(delay=...)`` with it as well as enqueue.
    """
    if isinstance(seconds, bool) or not isinstance(seconds, numbers.Real | Decimal):
        raise PayloadError(
            f"{label} must be a finite number >= 0 seconds, got {type(seconds).__name__} "
            f"{seconds!r}"
        )
    try:
        value = float(seconds)
    except (OverflowError, ValueError):  # an int past float's range; Decimal('sNaN')
        value = math.inf
    if not 0 <= value < math.inf:  # also refuses NaN
        raise PayloadError(f"{label} must be a finite number >= 0 seconds, got {seconds!r}")
    if value > LATEST_DUE - time.time():
        raise PayloadError(
            f"{label} of {seconds!r} seconds falls after year 9999, which a due time cannot "
            "represent"
        )
    return value + 0.0  # -0.0 -> 0.0


def coerce_json(value: Any, path: str, depth: int = 0) -> Any:
    """Return ``value`` as plain JSON data, or raise ``PayloadError`` naming ``path``.

    Dates and times become ISO 8601 strings, UUIDs and Decimals strings, enums their value,
    tuples lists. NaN, infinities, bytes, sets, non-string dict keys, arbitrary objects and
    lists or dicts nested more than ``MAX_DEPTH`` levels below ``value`` are refused: silently
    turning them into something else would lose data. ``depth`` is how many lists and dicts
    enclose ``value``. Strings and integers are checked by ``dumps``, not here.
    """
    kind = type(value)
    if kind in _SCALARS:
        return value
    if kind is float:
        if -_WIDE_FLOAT < value < _WIDE_FLOAT:
            return value
        if math.isfinite(value):
            return _WideFloat(value)
        raise PayloadError(f"{path} is {value!r}: NaN and infinity are not valid JSON")
    if kind is list or kind is tuple:
        if depth > MAX_DEPTH:
            raise _too_deep(path)
        for item in value:  # the common flat case; a loop, not all(): no generator to build
            if type(item) not in _SCALARS:
                return [coerce_json(x, f"{path}[{i}]", depth + 1) for i, x in enumerate(value)]
        return list(value)
    if kind is dict:
        if depth > MAX_DEPTH:
            raise _too_deep(path)
        out: dict[str, Any] = {}
        for key, item in value.items():
            if type(key) is not str:
                if not isinstance(key, str):
                    raise PayloadError(
                        f"{path} has a key {key!r} of type {type(key).__name__}: "
                        "JSON keys must be str"
                    )
                key = str.__str__(key)  # a str subclass (StrEnum...): its plain text
            out[key] = coerce_json(item, f"{path}[{key!r}]", depth + 1)
        return out
    return _coerce_other(value, path, depth)


def _too_deep(path: str) -> PayloadError:
    return PayloadError(f"{path} is nested more than {MAX_DEPTH} levels deep")


class _WideFloat(float):
    """A float of magnitude >= 1e16, which ``dumps`` writes as ``<integer>.0``.

    orjson does not know the subclass, so it hands it to ``dumps``'s ``default``: that is how
    the common float keeps orjson's fast path while this one gets the exact decimal text.
    """

    __slots__ = ()


def _coerce_other(value: Any, path: str, depth: int) -> Any:
    if isinstance(value, bool | int | str) and not isinstance(value, enum.Enum):
        return coerce_json(kind_base(value), path, depth)
    if isinstance(value, enum.Enum):
        return coerce_json(value.value, path, depth)
    if isinstance(value, float):
        return coerce_json(float(value), path, depth)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return coerce_json(value.total_seconds(), path, depth)
    if isinstance(value, uuid.UUID | Decimal):
        if isinstance(value, Decimal) and not value.is_finite():
            raise PayloadError(f"{path} is {value!r}: NaN and infinity are not valid JSON")
        return str(value)
    if isinstance(value, Mapping):
        return coerce_json(dict(value), path, depth)
    if isinstance(value, bytes | bytearray | memoryview):
        raise PayloadError(f"{path} is {type(value).__name__}: encode binary data (e.g. base64)")
    if isinstance(value, Sequence) and not isinstance(value, str):
        return coerce_json(list(value), path, depth)
    raise PayloadError(
        f"{path} is a {type(value).__module__}.{type(value).__qualname__}, which is not "
        "JSON-serialisable (pass plain data: str, int, float, bool, None, list, dict, "
        "date/datetime, UUID, Decimal)"
    )


def kind_base(value: bool | int | str) -> bool | int | str:
    """The plain built-in value of a subclass of bool, int or str."""
    for base in (bool, int, str):
        if isinstance(value, base):
            return base(value)
    raise AssertionError("unreachable")  # pragma: no cover


def text_problem(text: str) -> str | None:
    """Why PostgreSQL cannot store ``text`` (NUL, a surrogate code point), or None."""
    if "\x00" in text:
        return "contains NUL (\\x00), which PostgreSQL text and jsonb cannot store"
    if not text.isascii() and _SURROGATE.search(text) is not None:
        return (
            "contains a surrogate code point (U+D800..U+DFFF), which is not valid UTF-8 "
            "(a pair written as two characters too: JSON would merge it into one)"
        )
    return None


def check_text(label: str, value: object) -> str:
    """``value`` if it is a string PostgreSQL can store, else ``PayloadError`` naming ``label``."""
    if not isinstance(value, str):
        raise PayloadError(f"{label} must be a string, got {type(value).__name__} {value!r}")
    problem = text_problem(value)
    if problem is not None:
        raise PayloadError(f"{label} {value!r} {problem}")
    return value


def dumps(value: Any, path: str = "value") -> str:
    """Compact JSON text of data that ``coerce_json`` already checked; exact, or refused.

    ``PayloadError`` names the path below ``path`` of a string with NUL or a surrogate, or an
    integer outside the signed 64-bit range. Floats of 1e16 and more are written without an
    exponent (``10000000000000000.0``) so that jsonb keeps them floats.

    orjson refuses surrogates and integers past 64 bits unsigned by itself (and nesting past
    254 levels); NUL and integers between 2**63 and 2**64 come out as ``\\u0000`` and runs of
    19+ digits. Either sends us to the slow exact walk, which raises with the path or finds the
    hit harmless (a string may well hold a backslash-u-0000 or a long number).
    """
    try:
        text = orjson.dumps(value, default=_wide_float).decode()
    except orjson.JSONEncodeError as exc:
        _check_value(value, path)
        raise PayloadError(f"{path} cannot be encoded as JSON: {exc}") from None
    if "\\u0000" in text or _LONG_DIGITS.search(text) is not None:
        _check_value(value, path)
    return text


def dumps_payload(data: Mapping[str, Any]) -> str:
    """``dumps`` for a payload object (``TaskPayload.to_json()`` or the producer's fast dict).

    Errors name the path as the caller wrote it: ``args[0]``, ``kwargs['when']``,
    ``headers['trace']``, ``on_success.args[1]``, ``reply_key``. On the bulk enqueue path: kept
    to one orjson call and two scans of its output (``str`` scans: ``bytes.__contains__``
    costs ten times more).
    """
    try:
        text = orjson.dumps(data, default=_wide_float).decode()
    except orjson.JSONEncodeError as exc:
        _check_payload(data)
        raise PayloadError(f"payload cannot be encoded as JSON: {exc}") from None
    if "\\u0000" in text or _LONG_DIGITS.search(text) is not None:
        _check_payload(data)
    return text


def _wide_float(value: Any) -> orjson.Fragment:
    if type(value) is _WideFloat:
        return orjson.Fragment(f"{int(value)}.0")  # an integral float: its exact value
    raise TypeError  # orjson reports the type


def _check_payload(data: Mapping[str, Any]) -> None:
    for key, item in data.items():
        if key in ("on_success", "on_error") and type(item) is dict:
            for part, inner in item.items():
                _check_value(inner, f"{key}.{part}")
        else:
            _check_value(item, key)


def _check_value(value: Any, path: str, depth: int = 0) -> None:
    """The slow exact walk: raise ``PayloadError`` at the first value PostgreSQL or our
    decoders would not give back unchanged."""
    kind = type(value)
    if kind is str:
        problem = text_problem(value)
        if problem is not None:
            raise PayloadError(f"{path} {problem}")
    elif kind is int:
        if not INT_MIN <= value <= INT_MAX:
            raise PayloadError(
                f"{path} is {value}, outside the signed 64-bit integer range "
                f"({INT_MIN}..{INT_MAX}); pass larger numbers as strings"
            )
    elif kind is list or kind is dict:
        if depth > MAX_DEPTH:
            raise _too_deep(path)
        if kind is list:
            for i, item in enumerate(value):
                _check_value(item, f"{path}[{i}]", depth + 1)
            return
        for key, item in value.items():
            problem = text_problem(key) if type(key) is str else None
            if problem is not None:
                raise PayloadError(f"{path} has a key {key!r} that {problem}")
            _check_value(item, f"{path}[{key!r}]", depth + 1)


def _exact_int(text: str) -> int:
    value = int(text)
    if not INT_MIN <= value <= INT_MAX:
        raise PayloadError(f"integer {text} is outside the signed 64-bit range")
    return value


def _no_constant(name: str) -> Any:
    raise PayloadError(f"{name} is not valid JSON")


def loads(text: str | bytes) -> Any:
    """Decode stored JSON (a payload, a result, a NOTIFY); the one decoder every path uses.

    Raises ``PayloadError`` for anything that would not come back exactly: malformed text,
    integers outside the signed 64-bit range (orjson would hand them over as floats), NaN,
    nesting past the decoder's limit. orjson does the common case; text with a long run of
    digits is decoded by the standard library, which keeps integers exact, so we can refuse
    them instead of guessing.
    """
    try:
        if _LONG_DIGITS.search(text if isinstance(text, str) else text.decode()) is None:
            return orjson.loads(text)
        return json.loads(text, parse_int=_exact_int, parse_constant=_no_constant)
    except PayloadError:
        raise
    except (ValueError, RecursionError, UnicodeDecodeError) as exc:
        raise PayloadError(f"undecodable JSON: {exc}") from None


@dataclass(frozen=True, kw_only=True, slots=True)
class ContinuationSpec:
    """A task to enqueue after another finishes (``on_success`` / ``on_error``)."""

    task_name: str
    queue: str
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.task_name:
            raise ValueError("continuation has no task name")
        if not self.queue:
            raise ValueError(f"continuation {self.task_name!r} has no queue")

    def to_json(self, role: str = "continuation") -> dict[str, Any]:
        """The JSON object stored under ``role`` (``on_success``/``on_error``), which errors
        name: ``on_success.args[0]``."""
        return {
            "task_name": self.task_name,
            "queue": self.queue,
            "args": coerce_json(list(self.args), f"{role}.args"),
            "kwargs": coerce_json(dict(self.kwargs), f"{role}.kwargs"),
        }

    @classmethod
    def from_json(cls, data: Any) -> ContinuationSpec:
        if not isinstance(data, dict):
            raise PayloadError(f"continuation is {type(data).__name__}, expected an object")
        try:  # a worker dead-letters PayloadError; any other error would escape its decode
            return cls(
                task_name=str(data.get("task_name") or ""),
                queue=str(data.get("queue") or ""),
                args=list(data.get("args") or []),
                kwargs=dict(data.get("kwargs") or {}),
            )
        except (TypeError, ValueError) as exc:
            raise PayloadError(f"continuation is malformed: {exc}") from None


@dataclass(frozen=True, kw_only=True, slots=True)
class TaskPayload:
    """Decoded contents of a job's ``payload`` column."""

    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, Any] = field(default_factory=dict)
    on_success: ContinuationSpec | None = None
    on_error: ContinuationSpec | None = None
    reply_key: str = ""

    def to_json(self) -> dict[str, Any]:
        """The JSON object stored in the column; optional keys are omitted when empty."""
        data: dict[str, Any] = {
            "args": coerce_json(list(self.args), "args"),
            "kwargs": coerce_json(dict(self.kwargs), "kwargs"),
        }
        if self.headers:
            data["headers"] = coerce_json(dict(self.headers), "headers")
        if self.on_success is not None:
            data["on_success"] = self.on_success.to_json("on_success")
        if self.on_error is not None:
            data["on_error"] = self.on_error.to_json("on_error")
        if self.reply_key:
            data["reply_key"] = self.reply_key
        return data

    @classmethod
    def from_json(cls, data: Any) -> TaskPayload:
        """Decode a stored payload; ``PayloadError`` says what is wrong with it."""
        if not isinstance(data, dict):
            raise PayloadError(f"payload is {type(data).__name__}, expected a JSON object")
        args = data.get("args", [])
        kwargs = data.get("kwargs", {})
        if not isinstance(args, list):
            raise PayloadError(f"payload args is {type(args).__name__}, expected a list")
        if not isinstance(kwargs, dict):
            raise PayloadError(f"payload kwargs is {type(kwargs).__name__}, expected an object")
        headers = data.get("headers") or {}
        if not isinstance(headers, dict):
            raise PayloadError(f"payload headers is {type(headers).__name__}, expected an object")
        on_success = data.get("on_success")
        on_error = data.get("on_error")
        return cls(
            args=args,
            kwargs=kwargs,
            headers=headers,
            on_success=ContinuationSpec.from_json(on_success) if on_success else None,
            on_error=ContinuationSpec.from_json(on_error) if on_error else None,
            reply_key=str(data.get("reply_key") or ""),
        )
