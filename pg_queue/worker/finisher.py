"""``Finisher``: writes finished jobs (acks, retries, dead letters, cancels) in batches.

Running beside the claim loop on its own connection, the database works on the next claim and
the last batch's finishes at the same time. Each kind in a batch is one statement (with its
continuations in the same transaction), so the common all-success batch is one round trip.

Guarantees:
- A lost connection never loses a finish: the batch is kept and retried after a reconnect with
  backoff (every write is lease-gated, so a retry after an unknown commit is harmless).
- One outcome the database refuses never blocks the others. A statement error splits the batch
  in halves until the offender is alone; the rest are written. A lone offender whose error is
  transient (a lock or statement timeout, a serialization failure, an out-of-resources error) is
  retried later with backoff, off the main batch path; one whose error is deterministic (a
  value PostgreSQL cannot store: NUL in JSON, a delay past the calendar, a result past jsonb's
  size) is dead-lettered as ``unstorable`` with the database's reason, and its ``on_error``
  fires. If even that cannot be written, the finish is given up (logged): its lease expires and
  re-arm hands the job out again, as for a crashed worker.
- ``oldest_unwritten_age`` tells health how long the oldest finished job has waited.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any

import psycopg

from pg_queue import metrics
from pg_queue.core.conf import QueueSettings
from pg_queue.core.continuations import error_spec, success_spec
from pg_queue.core.options import JobSpec
from pg_queue.core.outcomes import Bury, Cancelled, Outcome, RetryLater, Success, storable_text
from pg_queue.db import queries
from pg_queue.models import DeadLetterReason
from pg_queue.worker.continuations import enqueue_continuations
from pg_queue.worker.events import Events
from pg_queue.worker.finish_log import FinishLog
from pg_queue.worker.inflight import InFlight
from pg_queue.worker.service import Service
from pg_queue.worker.stats import WorkerStats
from pg_queue.workflows.progress import Finished, GroupEnded, PsycopgDb, record

logger = logging.getLogger("pg_queue.worker")

#: Reconnect backoff after a lost database connection: first and longest sleep.
RECONNECT_MIN, RECONNECT_MAX = 0.1, 5.0
#: How long the finisher waits for work before re-checking for stop.
FINISH_POLL = 0.5
#: Retry backoff of a lone finish that failed for a transient reason: first and longest.
DEFER_MIN, DEFER_MAX = 0.5, 30.0
#: SQLSTATEs that may succeed on a later try: serialization failure, deadlock, lock not
#: available (lock_timeout), query canceled (statement_timeout). Class 53 (insufficient
#: resources) too.
TRANSIENT_SQLSTATES = frozenset({"40001", "40P01", "55P03", "57014"})

_KINDS = (Success, RetryLater, Bury, Cancelled)


class ConnectionLost(Exception):
    """The finisher's connection broke: reconnect, then retry what is left of the batch."""


class _StatementFailed(Exception):
    """The database (or the adaptation of a value) refused one statement; the connection is
    still usable."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause

    @property
    def transient(self) -> bool:
        state = getattr(self.cause, "sqlstate", None) or ""
        return state in TRANSIENT_SQLSTATES or state.startswith("53")

    def describe(self) -> str:
        """``Type: message (detail)``, from the server's diagnostics when there are some."""
        diag = getattr(self.cause, "diag", None)
        primary = getattr(diag, "message_primary", None)
        if primary:
            detail = getattr(diag, "message_detail", None)
            text = f"{primary} ({detail})" if detail else primary
        else:
            lines = str(self.cause).strip().splitlines()
            text = lines[0] if lines else ""
        name = type(self.cause).__name__
        return storable_text(f"{name}: {text}" if text else name)


class Finisher(Service):
    """Batches finished outcomes and writes them; see the module docstring."""

    role = "finish"

    def __init__(
        self,
        *,
        conf: QueueSettings,
        connect: Callable[[], psycopg.Connection[Any]],
        inflight: InFlight,
        stats: WorkerStats,
        events: Events,
        on_written: Callable[[], None],
    ) -> None:
        super().__init__()
        self.conf = conf
        self.connect = connect
        self.inflight = inflight
        self.stats = stats
        self.events = events
        self.on_written = on_written
        self.log = FinishLog(stats, events)
        self.notify_results = conf.notify
        self.halting = threading.Event()  # give up on unwritten finishes (hard stop)
        self._inbox: deque[tuple[float, Outcome]] = deque()
        self._wake = threading.Event()
        self._batch: list[tuple[float, Outcome]] = []  # taken from the inbox, not yet written
        self._deferred: list[tuple[float, Outcome]] = []  # transient failures, retried later
        self._deferred_due = 0.0
        self._defer_backoff = DEFER_MIN
        self._conn: psycopg.Connection[Any] | None = None

    # --- producers' side ----------------------------------------------------------------------

    def submit(self, outcome: Outcome) -> None:
        """Queue a finished job for writing (task threads, the timer, the claim loop)."""
        self._inbox.append((time.monotonic(), outcome))
        self._wake.set()

    @property
    def busy(self) -> bool:
        """Holds finishes not written yet (the claim loop waits for them before exiting)."""
        return bool(self._inbox or self._batch or self._deferred)

    def oldest_unwritten_age(self) -> float:
        """Seconds the oldest finished-but-unwritten job has waited (0 when none)."""
        times = [t for t, _ in self._batch[:1]] + [t for t, _ in self._deferred]
        with contextlib.suppress(IndexError):
            times.append(self._inbox[0][0])
        return time.monotonic() - min(times) if times else 0.0

    def stop(self) -> None:
        """Write what is left, then stop."""
        super().stop()
        self._wake.set()

    def halt(self) -> None:
        """Stop retrying unwritten finishes (their leases expire; re-arm hands them out)."""
        self.halting.set()
        self.stop()

    # --- the loop -----------------------------------------------------------------------------

    def loop(self) -> None:
        backoff = RECONNECT_MIN
        try:
            while True:
                self._wake.clear()
                while self._inbox:
                    self._batch.append(self._inbox.popleft())
                stopping = self.stopping.is_set()
                if self._deferred and (stopping or time.monotonic() >= self._deferred_due):
                    self._batch += self._deferred
                    self._deferred = []
                if self._batch:
                    try:
                        self._write_batch()
                        backoff = RECONNECT_MIN
                        self.on_written()
                        if stopping and self._deferred:  # tried once more at stop: give up
                            self.halting.set()
                            self._batch, self._deferred = self._deferred, []
                            break
                    except ConnectionLost as exc:
                        self._lost_connection(exc)
                        if self.halting.wait(backoff):
                            break
                        backoff = min(backoff * 2, RECONNECT_MAX)
                    continue
                if stopping and not self._deferred:
                    break
                if stopping and self.halting.is_set():
                    break
                wait = FINISH_POLL
                if self._deferred:
                    wait = min(wait, max(0.0, self._deferred_due - time.monotonic()))
                self._wake.wait(wait)
        finally:
            if self.busy and self.halting.is_set():
                logger.error(
                    "finishes not written at exit jobs=%d; their leases expire and any worker "
                    "re-arms them",
                    len(self._batch) + len(self._deferred) + len(self._inbox),
                )
            if self._conn is not None and (self.stopping.is_set() or self.halting.is_set()):
                self._conn.close()
                self._conn = None

    def _lost_connection(self, exc: BaseException) -> None:
        self.stats.reconnects += 1
        metrics.RECONNECTS.inc()
        logger.warning(
            "finish failed, will retry jobs=%d error=%s", len(self._batch), exc.__cause__ or exc
        )
        if self._conn is not None:
            self._conn.close()
        self._conn = None

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            try:
                self._conn = self.connect()
            except psycopg.Error as exc:
                raise ConnectionLost(str(exc)) from exc
        return self._conn

    # --- one batch ----------------------------------------------------------------------------

    def _write_batch(self) -> None:
        """Write ``self._batch``; what is written leaves it, even if a later kind fails."""
        outcomes = [o for _, o in self._batch]
        if self.inflight.any_lost:
            lost = self.inflight.take_lost([o.msg.msg_id for o in outcomes])
            for o in outcomes:
                if o.msg.msg_id in lost:
                    self.log.discarded(o)
            if lost:
                outcomes = [o for o in outcomes if o.msg.msg_id not in lost]
                self._batch = [(t, o) for t, o in self._batch if o.msg.msg_id not in lost]
        if not outcomes:
            return
        self.stats.finish_batches += 1
        self.stats.last_finish = time.monotonic()
        # Out of the in-flight set before the write: the heartbeat must not renew (and then
        # report as lost) a row this very write is deleting. If the write fails, these are
        # retried from the batch; their leases are simply no longer renewed meanwhile.
        self.inflight.remove([o.msg.msg_id for o in outcomes])
        conn = self._connection()
        for kind in _KINDS:
            items = [o for o in outcomes if type(o) is kind]
            if not items:
                continue
            self._write_kind(conn, items)
            done = {id(o) for o in items}
            self._batch = [(t, o) for t, o in self._batch if id(o) not in done]

    def _write_kind(self, conn: psycopg.Connection[Any], items: list[Any]) -> None:
        """Write items of one kind; split around whatever the database refuses."""
        try:
            self._statement(conn, items)
        except _StatementFailed as failure:
            if len(items) > 1:
                middle = len(items) // 2
                self._write_kind(conn, items[:middle])
                self._write_kind(conn, items[middle:])
            elif failure.transient:
                self._defer(items[0], failure)
            else:
                self._bury_unstorable(conn, items[0], failure)

    def _statement(self, conn: psycopg.Connection[Any], items: list[Any]) -> None:
        """One statement (and its continuations) for ``items``, all of one kind."""
        ended: list[GroupEnded] = []
        try:
            if _fires_continuations(items) or any(i.msg.group_id for i in items):
                with conn.transaction():
                    written = self._execute(conn, items)
                    enqueue_continuations(conn, self._continuations(items, written))
                    ended = self._groups(conn, items, written)
            else:
                written = self._execute(conn, items)
        except psycopg.Error as exc:
            if conn.closed or conn.broken:
                raise ConnectionLost(str(exc)) from exc
            raise _StatementFailed(exc) from exc
        except (UnicodeError, ValueError, TypeError, OverflowError) as exc:
            raise _StatementFailed(exc) from exc  # a value psycopg could not even send
        self.log.written(items, written)
        self.log.groups_ended(ended)
        if written and not self._deferred:
            self._defer_backoff = DEFER_MIN

    def _groups(
        self, conn: psycopg.Connection[Any], items: list[Any], written: set[int]
    ) -> list[GroupEnded]:
        """Count the written jobs of groups and chains into them, in the finish's transaction."""
        if isinstance(items[0], RetryLater):
            return []
        finished = [
            Finished(
                item.msg.task_id,
                item.msg.group_id,
                item.msg.group_index,
                ok=isinstance(item, Success),
                value=item.value if isinstance(item, Success) else None,
                error="" if isinstance(item, Success) else item.error,
            )
            for item in items
            if item.msg.group_id is not None and item.msg.msg_id in written
        ]
        return record(
            PsycopgDb(conn),
            finished,
            ttl=float(self.conf.result_ttl_seconds),
            notify=self.notify_results,
        )

    def _execute(self, conn: psycopg.Connection[Any], items: list[Any]) -> set[int]:
        ttl = float(self.conf.result_ttl_seconds)
        notify = self.notify_results
        kind = type(items[0])
        if kind is Success:
            return queries.job_ack(conn, items, ttl=ttl, notify=notify)
        if kind is RetryLater:
            return queries.job_retry(conn, items)
        if kind is Bury:
            return queries.job_bury(conn, items, ttl=ttl, notify=notify)
        return queries.job_cancel(conn, items, ttl=ttl, notify=notify)

    @staticmethod
    def _continuations(items: list[Any], written: set[int]) -> list[tuple[uuid.UUID, JobSpec]]:
        out: list[tuple[uuid.UUID, JobSpec]] = []
        for item in items:
            if item.msg.msg_id not in written:
                continue
            if isinstance(item, Success):
                if item.on_success is not None:
                    out.append((item.msg.task_id, success_spec(item.on_success, item.value)))
            elif item.on_error is not None:
                out.append(
                    (item.msg.task_id, error_spec(item.on_error, item.msg.task_id, item.error))
                )
        return out

    # --- what the database refused ------------------------------------------------------------

    def _defer(self, outcome: Outcome, failure: _StatementFailed) -> None:
        self._deferred.append((time.monotonic(), outcome))
        self._deferred_due = time.monotonic() + self._defer_backoff
        self.log.deferred(outcome, self._defer_backoff, failure.describe())
        self._defer_backoff = min(self._defer_backoff * 2, DEFER_MAX)

    def _bury_unstorable(
        self, conn: psycopg.Connection[Any], outcome: Outcome, failure: _StatementFailed
    ) -> None:
        """Dead-letter the lone offender with the database's reason; give up if even that
        is refused."""
        what = {Success: "result", RetryLater: "retry", Bury: "dead letter"}.get(
            type(outcome), "outcome"
        )
        problem = failure.describe()
        if isinstance(outcome, Bury) and outcome.reason == DeadLetterReason.UNSTORABLE:
            self.log.given_up(outcome, problem)
            return
        msg = outcome.msg
        replacement = Bury(
            msg,
            DeadLetterReason.UNSTORABLE,
            storable_text(f"{what} not storable: {problem}"),
            "",
            getattr(outcome, "started_at", None),
            getattr(outcome, "on_error", None),
        )
        self.log.unstorable(outcome)
        self._write_kind(conn, [replacement])


def _fires_continuations(items: list[Any]) -> bool:
    if isinstance(items[0], Success):
        return any(s.on_success is not None for s in items)
    if isinstance(items[0], RetryLater):
        return False
    return any(i.on_error is not None for i in items)
