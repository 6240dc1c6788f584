"""Value objects of a claimed job's life: the claimed job, and how its run ended.

Pure data: the claim loop builds ``ClaimedJob``; task threads turn a run into one of the
outcomes (``Success``, ``RetryLater``, ``Bury``, ``Cancelled``); the finisher writes them. Every
text an outcome carries is already safe to store (``storable_text``): PostgreSQL refuses NUL in
text, and a lone surrogate cannot even be encoded, so an error message from a PDF parser must not
be what stops a finish from being written.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from typing import Any

from pg_queue.core.payload import ContinuationSpec


@dataclass(frozen=True, slots=True)
class ClaimedJob:
    """A job this worker holds a lease on.

    ``payload_text`` is the stored JSON as text: the claim loop decodes it inside its
    per-job guard, so one undecodable payload cannot take its whole batch down.
    """

    msg_id: int
    task_id: uuid.UUID
    task_name: str
    queue_name: str
    payload_text: str
    attempts: int
    max_attempts: int
    lease_token: uuid.UUID
    enqueued_at: dt.datetime
    available_at: dt.datetime  # when it became due (enqueue time unless delayed or retried)
    claimed_at: dt.datetime  # database clock at claim
    cancel_requested: bool = False  # an operator cancelled it before this claim
    group_id: uuid.UUID | None = None  # a child of a group or a step of a chain
    group_index: int | None = None  # its place there
    resource_key: str | None = None  # the key it holds (its finish gives the key back)


@dataclass(frozen=True, slots=True)
class Success:
    msg: ClaimedJob
    result_json: str | None  # None: the task does not store results
    started_at: dt.datetime
    on_success: ContinuationSpec | None = None
    value: Any = None  # the JSON-coerced result, kept only when on_success needs it
    on_error: ContinuationSpec | None = None  # fired if the database refuses this outcome


@dataclass(frozen=True, slots=True)
class RetryLater:
    msg: ClaimedJob
    delay: float
    error: str
    # Raise the row's max_attempts to at least this (a Celery task's own self.retry(max_retries=)
    # is the bound there; Celery already refused when it was exhausted). 0 = unchanged.
    min_max_attempts: int = 0
    on_error: ContinuationSpec | None = None  # fired if the database refuses this outcome


@dataclass(frozen=True, slots=True)
class Bury:
    msg: ClaimedJob
    reason: str
    error: str
    traceback: str
    started_at: dt.datetime | None
    on_error: ContinuationSpec | None = None


@dataclass(frozen=True, slots=True)
class Cancelled:
    """An operator cancelled the job; it ends with a 'cancelled' outcome and fires on_error."""

    msg: ClaimedJob
    error: str
    on_error: ContinuationSpec | None = None


Outcome = Success | RetryLater | Bury | Cancelled


def storable_text(text: str) -> str:
    """``text`` with what PostgreSQL cannot store made visible: NUL as ``\\x00``, lone
    surrogates as ``\\udXXX``. Plain text (the common case) is returned as it is."""
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text
