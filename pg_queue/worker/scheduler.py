"""``Scheduler``: the periodic-task service of a worker started with ``--scheduler``.

Every such worker runs one; the one holding the ``scheduler`` leader lease fires due schedules
(``pg_queue.scheduling.firing``), the others try to take the lease every ``SCHEDULER_POLL``
seconds, so a leader that died (``kill -9``) is replaced within one lease. The leader renews
every third of the lease; a renewal that fails (taken over after a pause, a partition, the
row deleted) stops all firing at once, and so does a lease the leader could not renew for a
whole lease on its own clock. Independently of all that, every firing statement re-checks the
lease in the database, so a leader that lost it cannot fire even before it notices.

At start, the service syncs ``PG_QUEUE["SCHEDULE"]`` into ``pg_periodic_task``; at shutdown
the leader gives the lease up, so a follower takes over at its next try.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import psycopg

from pg_queue.core.conf import QueueSettings
from pg_queue.scheduling.firing import Decide, flag_decide, schedule_fire_due, schedule_next_wait
from pg_queue.scheduling.leader import (
    SCHEDULER_ROLE,
    leader_acquire,
    leader_release,
    leader_renew,
)
from pg_queue.scheduling.sync import parse_schedule, schedule_sync
from pg_queue.worker.service import Service

logger = logging.getLogger("pg_queue.scheduling")

#: Shortest sleep between passes while a due tick is still pending (seconds).
MIN_SLEEP = 0.01
#: Longest sleep after a database error before the next try (seconds).
ERROR_BACKOFF = 2.0


class Scheduler(Service):
    """Leader election and firing; see the module docstring."""

    role = "scheduler"

    def __init__(
        self,
        *,
        conf: QueueSettings,
        worker_id: str,
        connect: Callable[[], psycopg.Connection[Any]],
        decide: Decide = flag_decide,
    ) -> None:
        super().__init__()
        self.conf = conf
        self.worker_id = worker_id
        self.connect = connect
        self.decide = decide
        self.ttl = float(conf.scheduler_lease_seconds)
        self.poll = float(conf.scheduler_poll)
        #: Monotonic time until which the lease is surely ours (start of the last successful
        #: acquire or renew, plus the lease); 0 while following.
        self.leading_until = 0.0
        self.fired = 0
        self.synced = False
        self.last_pass = time.monotonic()
        self._conn: psycopg.Connection[Any] | None = None

    @property
    def leading(self) -> bool:
        return time.monotonic() < self.leading_until

    def loop(self) -> None:
        next_renew = 0.0
        try:
            while not self.stopping.is_set():
                sleep = self.poll
                try:
                    conn = self._connection()
                    if not self.synced:
                        schedule_sync(conn, parse_schedule(self.conf.schedule))
                        self.synced = True
                    started = time.monotonic()
                    if self.leading_until and started >= next_renew:
                        self._renew(conn, started)
                        next_renew = started + self.ttl / 3
                    if not self.leading and self._acquire(conn, started):
                        next_renew = started + self.ttl / 3
                    if self.leading:
                        sleep = self._fire(conn, next_renew)
                    self.last_pass = time.monotonic()
                except psycopg.Error as exc:
                    logger.warning(
                        "scheduler failed worker_id=%s leading=%s error=%s",
                        self.worker_id,
                        self.leading,
                        exc,
                    )
                    self._drop_connection()
                    sleep = min(self.poll, ERROR_BACKOFF)
                self.stopping.wait(sleep)
        finally:
            if self.stopping.is_set():
                self._release()
                self._drop_connection()

    # --- the lease ----------------------------------------------------------------------------

    def _acquire(self, conn: psycopg.Connection[Any], started: float) -> bool:
        expiry = leader_acquire(conn, role=SCHEDULER_ROLE, holder=self.worker_id, ttl=self.ttl)
        if expiry is None:
            return False
        self.leading_until = started + self.ttl
        logger.info(
            "scheduler leader worker_id=%s lease_seconds=%s expires_at=%s",
            self.worker_id,
            self.ttl,
            expiry.isoformat(),
        )
        return True

    def _renew(self, conn: psycopg.Connection[Any], started: float) -> None:
        expiry = leader_renew(conn, role=SCHEDULER_ROLE, holder=self.worker_id, ttl=self.ttl)
        if expiry is None:
            self.leading_until = 0.0
            logger.warning(
                "scheduler lease lost worker_id=%s: stopped firing, following", self.worker_id
            )
            return
        self.leading_until = started + self.ttl

    def _release(self) -> None:
        if not self.leading_until:
            return
        self.leading_until = 0.0
        try:
            conn = self._connection()
            if leader_release(conn, role=SCHEDULER_ROLE, holder=self.worker_id):
                logger.info("scheduler lease released worker_id=%s", self.worker_id)
        except psycopg.Error as exc:  # it expires by itself
            logger.warning(
                "scheduler lease not released worker_id=%s error=%s", self.worker_id, exc
            )

    # --- firing -------------------------------------------------------------------------------

    def _fire(self, conn: psycopg.Connection[Any], next_renew: float) -> float:
        """One pass; returns how long to sleep (next tick, next renewal, or the poll)."""
        done = schedule_fire_due(
            conn, holder=self.worker_id, role=SCHEDULER_ROLE, decide=self.decide
        )
        self.fired += len(done.fired)
        wait = schedule_next_wait(conn)
        moved = done.fired or done.passed_to_celery or done.fenced or done.baselined
        if wait is not None and wait <= 0 and not moved:
            wait = self.poll  # due rows this pass could not move (a cron croniter refuses)
        until_renew = next_renew - time.monotonic()
        sleep = min(self.poll, until_renew, self.poll if wait is None else wait)
        return max(MIN_SLEEP, sleep)

    # --- connection ---------------------------------------------------------------------------

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = self.connect()
        return self._conn

    def _drop_connection(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
