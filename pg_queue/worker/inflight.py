"""``InFlight``: the messages this worker holds a lease on, shared by its services.

The claim loop adds what it claims; the finisher takes what it is about to write; the heartbeat
renews the rest. The lock guards memory only: no service holds it across a database round trip.
The heartbeat takes a snapshot under the lock, renews without it, then reconciles, and the
reconciliation only touches entries that are still there with the same lease token, so a job
the finisher took meanwhile is never reported as lost.
"""

from __future__ import annotations

import threading
import uuid

from pg_queue.core.outcomes import ClaimedMessage


class InFlight:
    """Claimed messages by id, plus the ids found lost and the ids an operator cancelled."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._messages: dict[int, ClaimedMessage] = {}
        # Taken from us (seen by the heartbeat): not renewed any more, their finish discarded.
        self._lost: set[int] = set()
        # Cancelled by an operator while we hold them (seen by the heartbeat).
        self.cancelled: set[int] = set()

    def __len__(self) -> int:
        return len(self._messages)

    def __bool__(self) -> bool:
        return bool(self._messages)

    def add(self, messages: list[ClaimedMessage]) -> None:
        with self._lock:
            for msg in messages:
                self._messages[msg.msg_id] = msg

    def remove(self, msg_ids: list[int] | set[int]) -> None:
        """Forget ``msg_ids`` (about to be written, released or handed back)."""
        with self._lock:
            for msg_id in msg_ids:
                self._messages.pop(msg_id, None)
                self.cancelled.discard(msg_id)

    def leases(self) -> dict[int, uuid.UUID]:
        """Snapshot: msg_id -> lease token of everything held right now."""
        with self._lock:
            return {m.msg_id: m.lease_token for m in self._messages.values()}

    def reconcile(
        self, asked: dict[int, uuid.UUID], lost: set[int], cancelled: set[int]
    ) -> list[ClaimedMessage]:
        """Apply a renewal of ``asked``; returns the messages newly found lost.

        Only entries still held with the token that was renewed are touched.
        """
        newly_lost: list[ClaimedMessage] = []
        with self._lock:
            for msg_id in lost:
                msg = self._messages.get(msg_id)
                if msg is not None and msg.lease_token == asked.get(msg_id):
                    del self._messages[msg_id]
                    self._lost.add(msg_id)
                    newly_lost.append(msg)
            for msg_id in cancelled:
                if msg_id in self._messages:
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
