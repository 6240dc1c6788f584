"""``Events``: Django signals sent from their own thread, never from a hot one.

A receiver is user code: it may be slow, block on a lock or raise. Sent from the heartbeat it
would delay lease renewal; from the finisher, every later finish. So the services only queue an
event (a bounded, non-blocking put) and this thread sends it with ``send_robust``: a raising
receiver is logged and swallowed. If receivers fall so far behind that the queue is full, new
events are dropped and counted (``pg_queue_events_dropped_total``): a signal is a notification,
and a job's outcome never waits for one.
"""

from __future__ import annotations

import logging
import queue
import time
from typing import Any

from django.db import close_old_connections, connections
from django.dispatch import Signal

from pg_queue import metrics
from pg_queue.worker.service import Service

logger = logging.getLogger("pg_queue.worker")

#: Events waiting to be sent before new ones are dropped.
EVENTS_MAX = 10_000
#: How long one wait for the next event blocks before re-checking for stop.
EVENTS_POLL = 0.5
#: At stop, how long queued events may still take to be sent.
EVENTS_DRAIN = 5.0


class Events(Service):
    """Queues ``(signal, kwargs)`` and sends them in order from one thread."""

    role = "events"

    def __init__(self) -> None:
        super().__init__()
        self._queue: queue.Queue[tuple[Signal, dict[str, Any]]] = queue.Queue(EVENTS_MAX)
        self.dropped = 0

    def emit(self, signal: Signal, **kwargs: Any) -> None:
        """Queue one signal for sending; never blocks, never raises. A signal nobody listens
        to is not queued at all (the common case costs one attribute read per job)."""
        if not signal.receivers:
            return
        try:
            self._queue.put_nowait((signal, kwargs))
        except queue.Full:
            self.dropped += 1
            metrics.EVENTS_DROPPED.inc()
            if self.dropped == 1 or self.dropped % 1000 == 0:
                logger.warning(
                    "signal receivers are falling behind: %d events dropped so far",
                    self.dropped,
                )

    @property
    def backlog(self) -> int:
        return self._queue.qsize()

    def loop(self) -> None:
        while not self.stopping.is_set():
            self._send_next(EVENTS_POLL)
        deadline = time.monotonic() + EVENTS_DRAIN
        while not self._queue.empty() and time.monotonic() < deadline:
            self._send_next(EVENTS_POLL)
        connections.close_all()  # what receivers opened in this thread

    def _send_next(self, timeout: float) -> None:
        try:
            signal, kwargs = self._queue.get(timeout=timeout)
        except queue.Empty:
            return
        self._send(signal, kwargs)

    @staticmethod
    def _send(signal: Signal, kwargs: dict[str, Any]) -> None:
        # Receivers use this thread's Django connection: refresh it first, so a database
        # restart earlier does not make every receiver fail on a dead connection.
        close_old_connections()
        for receiver, response in signal.send_robust(sender=signal, **kwargs):
            if isinstance(response, Exception):
                logger.error(
                    "signal receiver raised task_id=%s receiver=%r error=%s",
                    kwargs.get("task_id"),
                    receiver,
                    response,
                )
