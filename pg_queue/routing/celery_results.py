"""The result of one Celery call, readable from any thread of the process, by a deadline.

Celery's ``rpc://`` result backend sends every reply to a queue named after the *sending
thread* (``app.thread_oid``: node, pid and ``threading.get_ident()``) and reads it with a
consumer that belongs to that thread's backend object. Three things follow, each seen through
the dispatcher:

- a fresh ``AsyncResult`` polls that queue with ``basic_get``, but the thread's consumer
  (started by any earlier wait in the thread) has already taken the replies: its state stays
  ``PENDING`` for ever;
- a new thread that reuses a dead thread's ident gets the same queue name, and the dead thread's
  consumer (its connection is never closed) still takes a share of the replies: blocking calls
  time out although their tasks succeeded;
- another thread cannot read the reply at all.

So the dispatcher does not use Celery's reply queue: each call it sends while the app's result
backend is ``rpc://`` gets a reply queue of its own, ``pg_queue-reply.<task_id>`` (declared
before the call is published, ``reply_to`` of the call, expiring after ``RESULT_TTL_SECONDS``
unused), and ``CeleryReply`` reads it through a connection pool of its own, under a lock, so
any thread may wait or ask the status. The final reply is cached in the ``CeleryReply`` (every
copy of the handle shares it) and the queue is deleted once it has been read.

With a result backend that stores results (redis, database, file...), any thread reads the
store: ``CeleryReply`` polls it (backing off to ``STORE_POLL_MAX``) until the deadline.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger("pg_queue.routing")

#: Name of a call's own reply queue is this prefix and the task id.
REPLY_QUEUE_PREFIX = "pg_queue-reply."
#: Connections the reply readers of one Celery app may hold at once (one per thread that is
#: reading a reply right now); apart from the app's producer pool, so waits never starve sends.
READER_POOL_LIMIT = 64
#: Longest pause between two reads of a result store (backends other than ``rpc://``).
STORE_POLL_MAX = 0.05
#: Celery's final states (``celery.states.READY_STATES``), without importing Celery here.
READY_STATES = frozenset({"SUCCESS", "FAILURE", "REVOKED"})


class ReplyTimeout(Exception):
    """No final state by the deadline."""


class ReplyUnavailable(Exception):
    """The reply can no longer be read; the message says why and what to do."""


def uses_rpc(app: Any) -> bool:
    """True when ``app``'s result backend is ``rpc://`` (replies travel to one sender)."""
    from celery.backends.rpc import RPCBackend

    return isinstance(app.backend, RPCBackend)


def reply_queue(task_id: str, ttl_seconds: float) -> Any:
    """The reply queue of one call: not exclusive (any connection of the process reads it), not
    auto-deleted (a wait that times out must not lose it), gone ``ttl_seconds`` after last use."""
    from kombu import Exchange, Queue

    name = REPLY_QUEUE_PREFIX + task_id
    return Queue(
        name,
        Exchange(""),  # the default exchange: routed by queue name
        name,
        durable=False,
        auto_delete=False,
        expires=ttl_seconds,
    )


_pools: weakref.WeakKeyDictionary[Any, tuple[int, Any]] = weakref.WeakKeyDictionary()
_pools_lock = threading.Lock()


def _reader_pool(app: Any) -> Any:
    """This process's reader connections to ``app``'s broker (a new pool after a fork)."""
    with _pools_lock:
        entry = _pools.get(app)
        if entry is None or entry[0] != os.getpid():
            entry = (os.getpid(), app.connection_for_read().Pool(limit=READER_POOL_LIMIT))
            _pools[app] = entry
        return entry[1]


@dataclass(frozen=True, slots=True)
class CeleryOutcome:
    """A final state: ``state`` is Celery's, ``result`` the value or the exception instance."""

    state: str
    result: Any


class CeleryReply:
    """The result of one Celery call, shared by every copy of its handle; thread-safe.

    ``status()`` never blocks on the broker for longer than a read; ``wait(timeout)`` returns
    by ``timeout`` (plus one broker round trip) with the final outcome or raises
    ``ReplyTimeout`` / ``ReplyUnavailable``.
    """

    def __init__(self, app: Any, task_id: str, *, rpc: bool | None = None) -> None:
        self.app = app
        self.task_id = task_id
        self.rpc = uses_rpc(app) if rpc is None else rpc
        self._lock = threading.Lock()  # one reader of the reply queue at a time
        self._state = "PENDING"
        self._final: CeleryOutcome | None = None
        self._gone = False

    @property
    def queue_name(self) -> str:
        return REPLY_QUEUE_PREFIX + self.task_id

    # --- reading ------------------------------------------------------------------------------

    def state(self) -> str:
        """Celery's state name as last seen; ``""`` when the reply can no longer be read."""
        if self._final is not None:
            return self._final.state
        if not self.rpc:
            return str(self.app.backend.get_task_meta(self.task_id)["status"])
        if not self._lock.acquire(blocking=False):
            return self._state  # a waiter is reading the queue and updates it
        try:
            if self._final is None and not self._gone:
                self._drain_rpc(deadline=None)
        except ReplyUnavailable:
            pass
        finally:
            self._lock.release()
        if self._final is not None:
            return self._final.state
        return "" if self._gone else self._state

    def wait(self, timeout: float) -> CeleryOutcome:
        deadline = time.monotonic() + timeout
        if self._final is not None:
            return self._final
        if not self.rpc:
            return self._wait_store(deadline)
        if not self._lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
            if self._final is not None:  # the other waiter read it just now
                return self._final
            raise ReplyTimeout
        try:
            if self._final is None:
                self._drain_rpc(deadline)
        finally:
            self._lock.release()
        if self._final is None:
            raise ReplyTimeout
        return self._final

    # --- result stores ------------------------------------------------------------------------

    def _wait_store(self, deadline: float) -> CeleryOutcome:
        pause = 0.005
        while True:
            # The current thread's backend: Celery's backend objects are per thread.
            meta = self.app.backend.get_task_meta(self.task_id)
            if meta["status"] in READY_STATES:
                self._final = CeleryOutcome(str(meta["status"]), meta.get("result"))
                return self._final
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ReplyTimeout
            time.sleep(min(pause, remaining))
            pause = min(pause * 2, STORE_POLL_MAX)

    # --- rpc:// -------------------------------------------------------------------------------

    def _on_message(self, payload: dict[str, Any], message: Any) -> None:
        status = str(payload.get("status", ""))
        if status in READY_STATES:
            meta = self.app.backend.meta_from_decoded(dict(payload))
            self._final = CeleryOutcome(status, meta.get("result"))
        elif status:
            self._state = status
        message.ack()

    def _unavailable(self) -> ReplyUnavailable:
        self._gone = True
        return ReplyUnavailable(
            f"reply queue {self.queue_name!r} does not exist: the call was not sent by "
            "RoutingDispatcher, its result was already read through another handle, or the queue "
            "expired (RESULT_TTL_SECONDS unused); with CELERY_RESULT_BACKEND=rpc:// a result "
            "is read once, through a handle of a call the dispatcher sent (the handle "
            "dispatch_async returned keeps it, for any thread of its process); to read results "
            "anywhere, any number of times, use a result backend that stores them "
            "(redis://, db+postgresql://...)"
        )

    def _drain_rpc(self, deadline: float | None) -> None:
        """Read the reply queue until a final state, or ``deadline`` (None: what is there now).

        Holds ``self._lock``. Messages are acked as they are read; one delivered after the last
        read of a wait that timed out is requeued (``basic_recover``), never lost.
        """
        from kombu import Consumer

        pool = _reader_pool(self.app)
        wait = 1.0 if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            conn = pool.acquire(block=True, timeout=wait)
        except pool.LimitExceeded as exc:
            raise ReplyTimeout from exc
        errors = conn.connection_errors + conn.channel_errors
        try:
            channel = conn.default_channel  # kept open with the pooled connection
            queue = reply_queue(self.task_id, 1)(channel)
            if deadline is None:
                while self._final is None and (
                    message := queue.get(no_ack=False, accept=self.app.backend.accept)
                ):
                    self._on_message(message.payload, message)
            else:
                consumer = Consumer(
                    channel,
                    [queue],
                    callbacks=[self._on_message],
                    accept=self.app.backend.accept,
                    auto_declare=False,
                )
                consumer.consume()
                while self._final is None:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    try:
                        conn.drain_events(timeout=remaining)
                    except TimeoutError:  # socket.timeout
                        break
                consumer.cancel()
                if self._final is None:  # a reply delivered since the last drain goes back
                    channel.basic_recover(requeue=True)
            if self._final is not None:
                queue.delete(nowait=True)  # read: nobody needs it any more
        except errors as exc:
            conn.collect()  # a closed channel or a broken connection: start afresh next time
            if getattr(exc, "code", None) == 404:
                raise self._unavailable() from exc
            raise
        finally:
            conn.release()
