"""``Service``: one background thread of the worker that no exception can end silently.

Each worker service (finisher, heartbeat, maintenance, events, the time-limit timer) runs its
loop through ``Service``. If the loop raises anything, ``BaseException`` included, the
exception is logged with its traceback, counted in ``pg_queue_thread_errors_total{thread=...}``,
the service is marked failed (the worker's health turns red and stays red, so an operator or
the supervisor replaces the process), and the loop is started again after a short backoff, so
the process keeps doing its work meanwhile. A loop that returns has finished: it is not
restarted. ``stop()`` asks the loop to end; ``join()`` waits with a timeout.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from pg_queue import metrics

logger = logging.getLogger("pg_queue.worker")

#: Seconds before a loop that raised is started again (doubling, up to the longest).
RESTART_BACKOFF_MIN, RESTART_BACKOFF_MAX = 0.1, 5.0


class Service:
    """A named loop in its own daemon thread, restarted if it raises (see module docstring).

    Subclasses implement ``loop()``, which must return when ``self.stopping`` is set (waiting
    on it, never sleeping blind).
    """

    #: The thread's name (``pg-queue-<role>``) and the metric label.
    role = "service"

    def __init__(self) -> None:
        self.stopping = threading.Event()
        self.errors = 0  # unexpected exceptions so far; any makes the worker unhealthy
        self._thread: threading.Thread | None = None

    # --- to override --------------------------------------------------------------------------

    def loop(self) -> None:
        raise NotImplementedError

    # --- lifecycle ----------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return f"pg-queue-{self.role}"

    def start(self) -> None:
        self._thread = spawn(self._run, self.name)

    def stop(self) -> None:
        self.stopping.set()

    def join(self, timeout: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout=timeout)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        backoff = RESTART_BACKOFF_MIN
        while True:
            try:
                self.loop()
                return
            except BaseException as exc:  # nothing may end this thread silently
                self.errors += 1
                record_thread_error(self.role, exc)
            if self.stopping.wait(backoff):
                return
            backoff = min(backoff * 2, RESTART_BACKOFF_MAX)
            logger.warning("restarting worker thread %s after an unexpected error", self.name)


def record_thread_error(role: str, exc: BaseException) -> None:
    """Log ``exc`` with its traceback and count it: what every guarded thread does."""
    metrics.THREAD_ERRORS.labels(role).inc()
    logger.error(
        "unexpected error in worker thread %s: %s: %s",
        role,
        type(exc).__name__,
        exc,
        exc_info=(type(exc), exc, exc.__traceback__),
    )


def spawn(target: Callable[[], None], name: str) -> threading.Thread:
    """Start a daemon thread: a task stuck past the shutdown grace must not keep the process
    alive. Every thread is still joined, with a timeout, when the worker stops."""
    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    return thread
