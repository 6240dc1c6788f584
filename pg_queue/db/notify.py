"""LISTEN/NOTIFY wake-ups: an optimisation on top of polling, never a dependency.

A ``Listener`` owns one connection that LISTENs on a channel and calls back for each payload.
On start it probes itself (NOTIFY from a second connection, expect it back within
``PROBE_TIMEOUT``); behind PgBouncer in transaction mode the probe fails and the listener turns
itself off, leaving the caller to poll, which is always correct on its own.

Once started, nothing ends its thread but ``stop()``: a dropped connection is reopened, and any
other exception (from the callback, from the connect function, of whatever type) is logged with
its traceback, counted in ``unexpected_errors``, and followed by a reconnect after a backoff
bounded by ``RECONNECT_DELAY_MAX``. ``healthy`` says whether wake-ups flow right now.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable
from typing import Any

import psycopg

logger = logging.getLogger("pg_queue.db.notify")

#: Seconds the self-probe waits for its own NOTIFY.
PROBE_TIMEOUT = 1.0
#: How long one wait for notifications blocks before re-checking for stop.
LISTEN_TICK = 0.25
#: Reconnect delay after the listening connection drops; doubles while reconnecting fails.
RECONNECT_DELAY = 0.5
#: Longest reconnect delay: a database that comes back is listened to again within this long.
RECONNECT_DELAY_MAX = 30.0

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
        #: Exceptions other than a dropped connection (a callback bug, a connect function that
        #: raises...): each was logged with its traceback, and listening went on.
        self.unexpected_errors = 0
        self._listening = False  # the connection is open and LISTENing
        #: Connections that have LISTENed so far: a change means NOTIFYs may have been lost.
        self.connections = 0
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, wait: float = PROBE_TIMEOUT + 2.0) -> bool:
        """Start listening; returns whether wake-ups work (False means: poll).

        Waits up to ``wait`` seconds for the self-probe. With a shorter wait the probe goes on
        in the background: ``healthy`` turns True if it succeeds, ``alive`` False if it fails.
        """
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

    @property
    def healthy(self) -> bool:
        """Wake-ups flow now: the probe passed, the thread runs, its connection LISTENs.

        False while reconnecting; for a health check, ``alive and not healthy`` for long means
        the database has been unreachable (callers poll meanwhile, so nothing is lost).
        """
        return self.working and self._listening and self.alive

    def generation(self) -> int | None:
        """Which connection delivers NOTIFYs now (it changes on a reconnect); None while none
        does. A caller that asked producers to NOTIFY it asks again when this changes."""
        return self.connections if self.healthy else None

    def _listen(self) -> psycopg.Connection[Any]:
        conn = self.connect()
        try:
            conn.execute(f"LISTEN {self.channel}")
        except BaseException:
            conn.close()
            raise
        return conn

    def _probe(self, conn: psycopg.Connection[Any]) -> bool:
        token = f"probe:{uuid.uuid4()}"
        with self.connect() as other:
            other.execute("SELECT pg_notify(%s, %s)", (self.channel, token))
        for note in conn.notifies(timeout=PROBE_TIMEOUT):
            if note.payload == token:
                return True
            self._deliver(note.payload)
        return False

    def _deliver(self, payload: str) -> None:
        """Call back; whatever the callback raises is logged and counted, never propagated."""
        try:
            self.on_payload(payload)
        except BaseException:  # even SystemExit: it would end this thread without a word
            self.unexpected_errors += 1
            # Not the payload itself: it may carry a task's result.
            logger.exception(
                "listener callback raised channel=%s payload_chars=%d; still listening",
                self.channel,
                len(payload),
            )

    def _run(self) -> None:
        try:
            conn = self._start_listening()
        finally:
            self._ready.set()
        if conn is None:
            return
        try:
            self._serve(conn)
        except BaseException:  # a bug in the loop itself: still never silent
            self.unexpected_errors += 1
            logger.critical("listener thread ended channel=%s", self.channel, exc_info=True)
        finally:
            self._listening = False

    def _start_listening(self) -> psycopg.Connection[Any] | None:
        """LISTEN and probe; the connection if wake-ups work, else None (the thread ends)."""
        conn: psycopg.Connection[Any] | None = None
        try:
            conn = self._listen()
            if self._probe(conn):
                self.connections += 1
                self._listening = True
                self.working = True
                return conn
            logger.warning(
                "LISTEN/NOTIFY self-probe failed on channel %s (transaction pooling?); "
                "falling back to polling",
                self.channel,
            )
        except _DB_ERRORS as exc:
            logger.warning("LISTEN unavailable on channel %s: %s; polling", self.channel, exc)
        except BaseException:
            self.unexpected_errors += 1
            logger.exception("LISTEN failed to start channel=%s; polling", self.channel)
        _close(conn)
        return None

    def _serve(self, conn: psycopg.Connection[Any] | None) -> None:
        """Deliver notifications until ``stop()``, reconnecting after any failure."""
        delay = RECONNECT_DELAY
        while not self._stop.is_set():
            try:
                if conn is None:
                    conn = self._listen()
                    self.connections += 1
                    self._listening = True
                    logger.info("listener reconnected channel=%s", self.channel)
                for note in conn.notifies(timeout=LISTEN_TICK):
                    self._deliver(note.payload)
                delay = RECONNECT_DELAY  # a whole tick without failure
                continue
            except _DB_ERRORS as exc:
                logger.warning(
                    "listener lost its connection channel=%s retry_in=%.2fs error=%s",
                    self.channel,
                    delay,
                    exc,
                )
            except BaseException:
                self.unexpected_errors += 1
                logger.exception(
                    "listener failed unexpectedly channel=%s retry_in=%.2fs", self.channel, delay
                )
            self._listening = False
            _close(conn)
            conn = None
            self._stop.wait(delay)
            delay = min(delay * 2, RECONNECT_DELAY_MAX)
        self._listening = False
        _close(conn)


def _close(conn: psycopg.Connection[Any] | None) -> None:
    """Close a connection that may already be broken; closing must not raise."""
    if conn is None:
        return
    try:
        conn.close()
    except Exception as exc:
        logger.debug("closing a listener connection failed: %s", exc)
