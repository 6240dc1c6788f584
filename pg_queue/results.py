"""Outcomes and handles: how a caller learns what became of a job.

A job's status (``JobStatus``) is derived: a job row means queued or running, a result row
means finished, neither means unknown (never enqueued, rolled back, result expired, or
``store_result=False``).
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from django.db import close_old_connections, connections

from pg_queue.core.conf import RESULT_CHANNEL, queue_settings
from pg_queue.core.exceptions import PayloadError, WaitInTransactionError
from pg_queue.core.payload import loads
from pg_queue.core.status import JobStatus
from pg_queue.db import sql_ops

if TYPE_CHECKING:  # the listener (and psycopg) load only when a wait needs them
    from pg_queue.db.notify import Listener

logger = logging.getLogger("pg_queue.results")

#: First and longest sleep between two polls while waiting for a result (no wake-ups).
WAIT_POLL_MIN = 0.005
WAIT_POLL_MAX = 0.25
#: With wake-ups, still poll this often: a lost NOTIFY costs at most this much latency.
WAIT_POLL_LISTENING = 1.0
#: Waits shorter than this keep Django's connection: handing it back (close_old_connections)
#: costs a health-check round trip on the next query, or a reconnect with CONN_MAX_AGE=0.
HOLD_CONNECTION_WAIT = 0.05
#: After the result listener fails to start (database unreachable, self-probe lost under load or
#: behind transaction pooling), a later wait tries again this many seconds later; the delay
#: doubles with each failure in a row, up to the maximum. Waits poll meanwhile.
RESULT_LISTEN_RETRY_MIN = 1.0
RESULT_LISTEN_RETRY_MAX = 60.0
#: How an outcome's error starts when its stored result is not JSON we can return exactly.
UNDECODABLE_RESULT = "the result could not be decoded: "


@dataclass(frozen=True, kw_only=True, slots=True)
class JobOutcome:
    """What a wait returns. Never raised: failures and timeouts are values.

    ``status`` is what happened to the job; ``ok`` also needs its result to be readable: a
    stored result that cannot be decoded exactly (see ``pg_queue.core.payload.loads``) leaves
    ``result`` None and says why in ``error``, with the stored status kept.
    """

    task_id: uuid.UUID
    status: str
    result: Any = None
    error: str = ""
    traceback: str = ""
    attempts: int = 0

    @property
    def ok(self) -> bool:
        """The job succeeded and ``result`` is its result."""
        return self.status == JobStatus.SUCCEEDED and not self.error


def _fetch(task_id: uuid.UUID, using: str) -> JobOutcome | None:
    """One round trip: the finished outcome, or a live queued/running state, or None."""
    with connections[using].cursor() as cursor:
        cursor.execute(sql_ops.JOB_STATUS, {"id": task_id})
        rows = cursor.fetchall()
    for src, status, result, error, tb, attempts in rows:
        if src == "result":  # Django hands jsonb over as text
            return _stored_outcome(task_id, status, result, error, tb, attempts)
    for _src, state, _result, error, _tb, attempts in rows:
        return JobOutcome(
            task_id=task_id,
            status=JobStatus.RUNNING if state == "claimed" else JobStatus.QUEUED,
            error=error,
            attempts=attempts,
        )
    return None


def _as_status(text: str) -> str:
    """``JobStatus`` for a status the database stored; a text no version wrote is kept as it
    is (a wait ends on any result row; routing reports it as malformed)."""
    try:
        return JobStatus(text)
    except ValueError:
        return text


def _stored_outcome(
    task_id: uuid.UUID, status: str, result_text: str | None, error: str, tb: str, attempts: int
) -> JobOutcome:
    """A result row as an outcome; never raises: an undecodable result becomes its error.

    ``pg_queue.core.payload.loads`` decodes, as for the results a NOTIFY carries, so a wait
    returns the same value whichever way it learnt of the result.
    """
    status = _as_status(status)
    result = None
    if result_text is not None:
        try:
            result = loads(result_text)
        except PayloadError as exc:
            logger.warning("undecodable result task_id=%s status=%s error=%s", task_id, status, exc)
            error = "; ".join(text for text in (error, f"{UNDECODABLE_RESULT}{exc}") if text)
    return JobOutcome(
        task_id=task_id, status=status, result=result, error=error, traceback=tb, attempts=attempts
    )


@dataclass(frozen=True, slots=True)
class JobHandle:
    """What ``enqueue`` returns: the stable task id, and ways to ask about the job."""

    task_id: uuid.UUID
    task_name: str = ""
    queue_name: str = ""
    using: str = "default"

    def status(self) -> str:
        """queued | running | succeeded | failed | cancelled | unknown (one query)."""
        found = _fetch(self.task_id, self.using)
        return JobStatus.UNKNOWN if found is None else found.status

    def outcome(self) -> JobOutcome:
        """The current state as an outcome, without waiting."""
        found = _fetch(self.task_id, self.using)
        if found is None:
            return JobOutcome(task_id=self.task_id, status=JobStatus.UNKNOWN, error=_UNKNOWN_TEXT)
        return found

    def wait(self, timeout: float) -> JobOutcome:
        """Block until the job finishes or ``timeout`` seconds pass; never raises for either.

        Polls with backoff, clamped to the deadline, and hands the Django connection back
        during waits longer than ``HOLD_CONNECTION_WAIT``. Refuses to run inside ``atomic()``:
        the job could not even be visible to a worker before the caller's transaction commits.
        """
        refuse_wait_in_atomic(self.task_id, self.using)
        key = str(self.task_id)
        woken = _waiters.register(key, self.using)
        try:
            return _wait(self, timeout, woken, check_first=True)
        finally:
            _waiters.unregister(key, woken)


def refuse_wait_in_atomic(task_id: uuid.UUID | str, using: str) -> None:
    """Raise ``WaitInTransactionError`` if a wait for ``task_id`` could only time out."""
    if connections[using].in_atomic_block:
        raise WaitInTransactionError(
            f"waiting for {task_id} inside transaction.atomic(): the job is not "
            "visible to workers until this transaction commits, so the wait could only time "
            "out. Wait after the block (e.g. transaction.on_commit) instead."
        )


@dataclass(frozen=True, slots=True)
class ArmedWait:
    """A wait whose wake-up was armed before its job was enqueued (see ``armed_wait``)."""

    handle: JobHandle
    woken: threading.Event | None

    def wait(self, timeout: float) -> JobOutcome:
        """Like ``JobHandle.wait``; with wake-ups on it starts without a status query."""
        return _wait(self.handle, timeout, self.woken, check_first=self.woken is None)


@contextmanager
def armed_wait(task_id: uuid.UUID, using: str = "default") -> Iterator[ArmedWait]:
    """Arm the result wake-up for ``task_id`` before enqueueing it with that id.

    Request-reply: a NOTIFY can then not slip by between the enqueue and the wait, so the wait
    needs no first status query (measured: 0.2-0.3 ms off a ~3 ms round trip on 2 cores).
    """
    refuse_wait_in_atomic(task_id, using)
    key = str(task_id)
    woken = _waiters.register(key, using)
    try:
        yield ArmedWait(JobHandle(task_id, using=using), woken)
    finally:
        _waiters.unregister(key, woken)


def _wait(
    handle: JobHandle, timeout: float, woken: threading.Event | None, *, check_first: bool
) -> JobOutcome:
    """The wait loop; ``woken`` is the registered wake-up (None: poll only)."""
    deadline = time.monotonic() + max(0.0, timeout)
    sleep = WAIT_POLL_MIN
    last: JobOutcome | None = None
    key = str(handle.task_id)
    check = check_first
    while True:
        if check:
            last = _fetch(handle.task_id, handle.using)
            if last is not None and last.status not in (JobStatus.QUEUED, JobStatus.RUNNING):
                return last  # any result row, even a malformed status, ends the wait
        check = True
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        if woken is not None:
            step = min(WAIT_POLL_LISTENING, remaining)
            short = min(HOLD_CONNECTION_WAIT, step)
            if not woken.wait(short) and step > short:
                close_old_connections()  # a long wait: hand the connection back
                woken.wait(step - short)
            woken.clear()
            delivered = _waiters.delivered(key)
            if delivered is not None:  # the result came with the wake-up
                return delivered
        else:
            step = min(sleep, remaining)
            if step >= HOLD_CONNECTION_WAIT:
                close_old_connections()
            time.sleep(step)
            sleep = min(sleep * 2, WAIT_POLL_MAX)
    state = "never seen" if last is None else f"still {last.status}"
    return JobOutcome(
        task_id=handle.task_id,
        status=JobStatus.TIMEOUT,
        error=f"no result within {timeout}s (task {state})",
        attempts=0 if last is None else last.attempts,
    )


def wait_until[T](key: str, check: Callable[[], T | None], timeout: float, using: str) -> T | None:
    """Call ``check`` until it returns something, woken by NOTIFYs naming ``key`` on the result
    channel (groups and chains use their id), polling at least every ``WAIT_POLL_LISTENING``;
    None once ``timeout`` passed. Refuses inside ``atomic()`` like ``JobHandle.wait``."""
    refuse_wait_in_atomic(key, using)
    woken = _waiters.register(key, using)
    deadline = time.monotonic() + max(0.0, timeout)
    sleep = WAIT_POLL_MIN
    try:
        while True:
            found = check()
            if found is not None:
                return found
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            if woken is not None:
                step = min(WAIT_POLL_LISTENING, remaining)
                if step >= HOLD_CONNECTION_WAIT:
                    close_old_connections()
                woken.wait(step)
                woken.clear()
            else:
                step = min(sleep, remaining)
                if step >= HOLD_CONNECTION_WAIT:
                    close_old_connections()
                time.sleep(step)
                sleep = min(sleep * 2, WAIT_POLL_MAX)
    finally:
        _waiters.unregister(key, woken)


_UNKNOWN_TEXT = (
    "no job and no result: never enqueued, rolled back, result expired, or the task does "
    "not store results"
)


class _ResultWaiters:
    """Process-wide: one LISTEN connection wakes every thread waiting on a result.

    Started on the first wait when ``PG_QUEUE['NOTIFY']`` is on; that first start waits for the
    self-probe, so the first wait already gets its wake-up. Waits poll while there is no
    working listener, which is always correct. A listener that cannot start (the database
    unreachable, the probe lost under load or behind transaction pooling) is retried by a later
    wait after ``RESULT_LISTEN_RETRY_MIN`` seconds, doubling per failure in a row up to
    ``RESULT_LISTEN_RETRY_MAX``; a retry runs in the background and holds no wait up. Once
    started, a listener reconnects on its own (see ``Listener``). Stopped at interpreter exit.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._start_lock = threading.Lock()
        self._events: dict[str, set[threading.Event]] = {}
        # Outcomes that arrived inside a NOTIFY, kept only while someone waits for them.
        self._delivered: dict[str, JobOutcome] = {}
        self._listener: Listener | None = None
        self._tried = False  # a start was tried: later ones do not wait for the probe
        self._retry_delay = 0.0  # the delay after the last failed start (0: none failed)
        self._retry_at = 0.0  # monotonic time before which no new listener starts

    @property
    def healthy(self) -> bool:
        """Whether waits get wake-ups right now (False: they poll)."""
        listener = self._listener
        return listener is not None and listener.healthy

    def register(self, key: str, using: str) -> threading.Event | None:
        if not queue_settings().notify or not self._ensure_listener(using):
            return None
        event = threading.Event()
        with self._lock:
            self._events.setdefault(key, set()).add(event)
        return event

    def unregister(self, key: str, event: threading.Event | None) -> None:
        if event is None:
            return
        with self._lock:
            events = self._events.get(key)
            if events is not None:
                events.discard(event)
                if not events:
                    del self._events[key]
                    self._delivered.pop(key, None)

    def delivered(self, key: str) -> JobOutcome | None:
        """The outcome a NOTIFY brought for ``key``, if any (then no query is needed)."""
        with self._lock:
            return self._delivered.get(key)

    def _ensure_listener(self, using: str) -> bool:
        listener = self._listener
        if listener is not None and listener.healthy:  # the common case, without a lock
            return True
        # A separate lock: the listener's thread takes _lock in _on_payload while starting.
        with self._start_lock:
            listener = self._listener
            if listener is not None:
                if listener.healthy:
                    return True
                if listener.alive:
                    return False  # still probing, or reconnecting: poll meanwhile
                self._listener = None
                self._retry_later(listener)
            if time.monotonic() < self._retry_at:
                return False
            from pg_queue.db.connection import worker_connection
            from pg_queue.db.notify import Listener

            listener = Listener(
                RESULT_CHANNEL,
                self._on_payload,
                lambda: worker_connection(using),
                name="pg-queue-result-listen",
            )
            self._listener = listener
            first, self._tried = not self._tried, True
            return listener.start() if first else listener.start(wait=0.0)

    def _retry_later(self, failed: Listener) -> None:
        """Space the next start after ``failed`` ended without a working connection."""
        if failed.working:  # it had worked: a new failure, retry soon
            delay = RESULT_LISTEN_RETRY_MIN
        else:
            delay = max(self._retry_delay * 2, RESULT_LISTEN_RETRY_MIN)
        self._retry_delay = min(delay, RESULT_LISTEN_RETRY_MAX)
        self._retry_at = time.monotonic() + self._retry_delay
        logger.info(
            "result wake-ups off, waits poll channel=%s retry_in=%.2fs",
            RESULT_CHANNEL,
            self._retry_delay,
        )

    def _on_payload(self, payload: str) -> None:
        if payload.startswith("["):
            self._on_results(payload)
            return
        with self._lock:
            if payload == "*":  # too many ids for one NOTIFY: everyone re-checks
                for events in self._events.values():
                    for event in events:
                        event.set()
                return
            for key in payload.split(","):
                for event in self._events.get(key, ()):
                    event.set()

    def _on_results(self, payload: str) -> None:
        """A small batch's successes, ``[[task_id, attempts, result], ...]``: hand them over.

        Decoded like a polled result (``pg_queue.core.payload.loads``); anything not understood,
        such as a result that cannot be decoded exactly, wakes every waiter to read its own
        result by query, where an undecodable one becomes an outcome that says so.
        """
        try:
            items = loads(payload)
            with self._lock:
                for task_id, attempts, result in items:
                    events = self._events.get(task_id)
                    if not events:
                        continue
                    self._delivered[task_id] = JobOutcome(
                        task_id=uuid.UUID(task_id),
                        status=JobStatus.SUCCEEDED,
                        result=result,
                        attempts=attempts,
                    )
                    for event in events:
                        event.set()
        except Exception as exc:  # not understood: every waiter re-checks
            logger.warning("unreadable result notification, waking every waiter: %s", exc)
            self._on_payload("*")

    def stop(self) -> None:
        with self._start_lock:
            listener, self._listener = self._listener, None
            self._tried, self._retry_delay, self._retry_at = False, 0.0, 0.0
        if listener is not None:
            listener.stop()


_waiters = _ResultWaiters()


def stop_result_listener() -> None:
    """Close this process's result LISTEN connection (atexit does it too; tests call it)."""
    _waiters.stop()


atexit.register(stop_result_listener)
