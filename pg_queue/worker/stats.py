"""``WorkerStats``: the counters of one worker's life (also its exit log line).

Each counter is written by one service only (claims by the coordinator, finishes by the
finisher, ...), so plain integers are enough; readers may see a value a moment old.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class WorkerStats:
    """Counters of one worker's life."""

    claimed: int = 0
    succeeded: int = 0
    retried: int = 0
    dead_lettered: int = 0
    unstorable: int = 0  # finishes the database refused for their content (dead-lettered)
    lease_lost: int = 0
    rearmed: int = 0
    released: int = 0
    reconnects: int = 0
    time_limited: int = 0
    cancelled: int = 0
    claim_queries: int = 0  # claim statements run (jobs/claim_queries = mean claim batch)
    mark_queries: int = 0  # wake-up mark statements run (one per idle spell at most)
    finish_batches: int = 0  # finish writes (jobs/finish_batches = mean ack batch)
    swept: int = 0  # expired results deleted by this worker's retention sweeps
    first_claim: float = 0.0  # time.monotonic() of the first non-empty claim
    first_claim_at: float = 0.0  # time.time() of it (benchmarks measure start-up with it)
    last_finish: float = 0.0  # time.monotonic() of the last finish write

    @property
    def busy_seconds(self) -> float:
        """From the first claim to the last finish: the drain time, startup excluded."""
        return max(0.0, self.last_finish - self.first_claim) if self.first_claim else 0.0

    def as_dict(self) -> dict[str, int | float]:
        out: dict[str, int | float] = {
            k: v for k, v in self.__dict__.items() if k not in ("first_claim", "last_finish")
        }
        out["busy_s"] = round(self.busy_seconds, 3)
        out["first_claim_at"] = round(self.first_claim_at, 4)
        return out
