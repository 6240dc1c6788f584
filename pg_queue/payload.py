"""The wire contract: what a message's ``payload`` column holds, and how values become JSON.

No pickle, ever. Arguments are coerced to JSON at the boundary (enqueue) so that a bad value is a
``ValueError`` naming the argument path in the caller's stack, not a poison message in a worker.
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

from pg_queue.exceptions import PayloadError

_SCALARS = (str, int, bool, type(None))
#: The signed 64-bit range: what every decoder (orjson, PostgreSQL's bigint) agrees on.
INT_MIN, INT_MAX = -(2**63), 2**63 - 1
#: 19 digits in a row may be an integer orjson would silently turn into a float.
_LONG_DIGITS = re.compile(r"\d{19}")
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


def coerce_json(value: Any, path: str) -> Any:
    """Return ``value`` as plain JSON data, or raise ``PayloadError`` naming ``path``.

    Dates and times become ISO 8601 strings, UUIDs and Decimals strings, enums their value,
    tuples lists. NaN, infinities, bytes, sets, non-string dict keys and arbitrary objects are
    refused: silently turning them into something else would lose data.
    """
    kind = type(value)
    if kind in _SCALARS:
        return value
    if kind is float:
        if math.isfinite(value):
            return value
        raise PayloadError(f"{path} is {value!r}: NaN and infinity are not valid JSON")
    if kind is list or kind is tuple:
        if all(type(item) in _SCALARS for item in value):  # the common flat case
            return list(value)
        return [coerce_json(item, f"{path}[{i}]") for i, item in enumerate(value)]
    if kind is dict:
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise PayloadError(
                    f"{path} has a key {key!r} of type {type(key).__name__}: JSON keys must be str"
                )
            out[key] = coerce_json(item, f"{path}[{key!r}]")
        return out
    return _coerce_other(value, path)


def _coerce_other(value: Any, path: str) -> Any:
    if isinstance(value, bool | int | str) and not isinstance(value, enum.Enum):
        return coerce_json(kind_base(value), path)
    if isinstance(value, enum.Enum):
        return coerce_json(value.value, path)
    if isinstance(value, float):
        return coerce_json(float(value), path)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, uuid.UUID | Decimal):
        if isinstance(value, Decimal) and not value.is_finite():
            raise PayloadError(f"{path} is {value!r}: NaN and infinity are not valid JSON")
        return str(value)
    if isinstance(value, Mapping):
        return coerce_json(dict(value), path)
    if isinstance(value, bytes | bytearray | memoryview):
        raise PayloadError(f"{path} is {type(value).__name__}: encode binary data (e.g. base64)")
    if isinstance(value, Sequence) and not isinstance(value, str):
        return coerce_json(list(value), path)
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


def dumps(value: Any) -> str:
    """Compact JSON text of data that ``coerce_json`` already checked (orjson: fast, and it
    never sees NaN or arbitrary objects because coercion refused them first)."""
    try:
        return orjson.dumps(value).decode()
    except orjson.JSONEncodeError:  # integers beyond 64 bits: valid JSON, slower encoder
        return json.dumps(value, separators=(",", ":"), allow_nan=False)


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

    def to_json(self) -> dict[str, Any]:
        return {
            "task_name": self.task_name,
            "queue": self.queue,
            "args": coerce_json(list(self.args), f"{self.task_name}.args"),
            "kwargs": coerce_json(dict(self.kwargs), f"{self.task_name}.kwargs"),
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
    """Decoded contents of a message's ``payload`` column."""

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
            data["on_success"] = self.on_success.to_json()
        if self.on_error is not None:
            data["on_error"] = self.on_error.to_json()
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
