"""LISTEN/NOTIFY wake-ups: an optimisation on top of polling, never a dependency.

A ``Listener`` owns one connection that LISTENs on a channel and calls back for each payload.
On start it probes itself (NOTIFY from a second connection, expect it back within
``PROBE_TIMEOUT``); behind PgBouncer in transaction mode the probe fails and the listener turns
itself off, leaving the caller to poll, which is always correct on its own.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable
from typing import Any

import psycopg

logger = logging.getLogger("pg_queue.notify")

#: Seconds the self-probe waits for its own NOTIFY.
PROBE_TIMEOUT = 1.0
#: How long one wait for notifications blocks before re-checking for stop.
LISTEN_TICK = 0.25
#: Reconnect delay after the listening connection drops.
RECONNECT_DELAY = 0.5

_DB_ERRORS = (psycopg.OperationalError, psycopg.InterfaceError)


class Listener:
    """One LISTEN connection in one thread; ``stop()`` ends and joins the thread."""

    def __init__(
        self,
        channel: str,
        on_payload: Callable[[str], None],
        connect: Callable[[], psycopg.Connection[Any]],
        *,
        name: str = "pg-queue-listen",
    ) -> None:
        self.channel = channel
        self.on_payload = on_payload
        self.connect = connect
        self.name = name
        self.working = False  # True once the self-probe came back
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, wait: float = PROBE_TIMEOUT + 2.0) -> bool:
        """Start listening; returns whether wake-ups work (False means: poll)."""
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()
        self._ready.wait(wait)
        return self.working

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=LISTEN_TICK * 4 + 2.0)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _listen(self) -> psycopg.Connection[Any]:
        conn = self.connect()
        conn.execute(f"LISTEN {self.channel}")
        return conn

    def _probe(self, conn: psycopg.Connection[Any]) -> bool:
        token = f"probe:{uuid.uuid4()}"
        with self.connect() as other:
            other.execute("SELECT pg_notify(%s, %s)", (self.channel, token))
        for note in conn.notifies(timeout=PROBE_TIMEOUT):
            if note.payload == token:
                return True
            self.on_payload(note.payload)
        return False

    def _run(self) -> None:
        conn: psycopg.Connection[Any] | None = None
        try:
            conn = self._listen()
            self.working = self._probe(conn)
            if not self.working:
                logger.warning(
                    "LISTEN/NOTIFY self-probe failed on channel %s (transaction pooling?); "
                    "falling back to polling",
                    self.channel,
                )
        except _DB_ERRORS as exc:
            logger.warning("LISTEN unavailable on channel %s: %s; polling", self.channel, exc)
            self.working = False
        finally:
            self._ready.set()
        if not self.working:
            if conn is not None:
                conn.close()
            return
        while not self._stop.is_set():
            try:
                if conn is None or conn.closed:
                    conn = self._listen()
                for note in conn.notifies(timeout=LISTEN_TICK):
                    self.on_payload(note.payload)
            except _DB_ERRORS as exc:
                logger.info("listener on %s reconnecting: %s", self.channel, exc)
                if conn is not None:
                    conn.close()
                conn = None
                self._stop.wait(RECONNECT_DELAY)
        if conn is not None:
            conn.close()
