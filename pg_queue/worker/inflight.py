"""``InFlight``: the jobs this worker holds a lease on, shared by its services.

The claim loop adds what it claims; the finisher takes what it is about to write; the heartbeat
renews the rest. The lock guards memory only: no service holds it across a database round trip.
The heartbeat takes a snapshot under the lock, renews without it, then reconciles, and the
reconciliation only touches entries that are still there with the same lease token, so a job
the finisher took meanwhile is never reported as lost.
"""

from __future__ import annotations

import threading
import uuid

from pg_queue.core.outcomes import ClaimedJob


class InFlight:
    """Claimed jobs by msg_id, plus the ids found lost and the ids an operator cancelled."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[int, ClaimedJob] = {}
        # Taken from us (seen by the heartbeat): not renewed any more, their finish discarded.
        self._lost: set[int] = set()
        # Cancelled by an operator while we hold them (seen by the heartbeat).
        self.cancelled: set[int] = set()

    def __len__(self) -> int:
        return len(self._jobs)

    def __bool__(self) -> bool:
        return bool(self._jobs)

    def add(self, claimed: list[ClaimedJob]) -> None:
        with self._lock:
            for msg in claimed:
                self._jobs[msg.msg_id] = msg

    def remove(self, msg_ids: list[int] | set[int]) -> None:
        """Forget ``msg_ids`` (about to be written, released or handed back)."""
        with self._lock:
            for msg_id in msg_ids:
                self._jobs.pop(msg_id, None)
                self.cancelled.discard(msg_id)

    def leases(self) -> dict[int, uuid.UUID]:
        """Snapshot: msg_id -> lease token of everything held right now."""
        with self._lock:
            return {m.msg_id: m.lease_token for m in self._jobs.values()}

    def reconcile(
        self, asked: dict[int, uuid.UUID], lost: set[int], cancelled: set[int]
    ) -> list[ClaimedJob]:
        """Apply a renewal of ``asked``; returns the jobs newly found lost.

        Only entries still held with the token that was renewed are touched.
        """
        newly_lost: list[ClaimedJob] = []
        with self._lock:
            for msg_id in lost:
                msg = self._jobs.get(msg_id)
                if msg is not None and msg.lease_token == asked.get(msg_id):
                    del self._jobs[msg_id]
                    self._lost.add(msg_id)
                    newly_lost.append(msg)
            for msg_id in cancelled:
                if msg_id in self._jobs:
                    self.cancelled.add(msg_id)
        return newly_lost

    def take_lost(self, msg_ids: list[int]) -> set[int]:
        """Which of ``msg_ids`` were lost; forgets them (their finish is being discarded)."""
        with self._lock:
            found = self._lost.intersection(msg_ids)
            self._lost -= found
        return found

    @property
    def any_lost(self) -> bool:
        return bool(self._lost)
