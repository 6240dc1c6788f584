"""Which wake-up marks a worker sets (pg_queue/worker/coordinator.py, "wake-up marks"):
standing while NOTIFYs come about once per claim, takeable while they flood in, standing
again when claims bring single jobs. The SQL of both kinds is tested against PostgreSQL in
tests/integration/test_wake_marks.py."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from pg_queue.core.conf import QueueSettings
from pg_queue.worker import coordinator as coord
from pg_queue.worker.inflight import InFlight
from pg_queue.worker.stats import WorkerStats


@pytest.fixture
def loop() -> coord.Coordinator:
    unused: Any = None  # the choice reads only the loop's own counters
    return coord.Coordinator(
        conf=QueueSettings(),
        worker_id="w",
        queues={"default": 1},
        concurrency=8,
        batch_size=100,
        burst=False,
        max_tasks=None,
        time_limit=60.0,
        shutdown_grace=5.0,
        connect=unused,
        inflight=InFlight(),
        pool=unused,
        finisher=unused,
        stats=WorkerStats(),
        stop=threading.Event(),
    )


def window(loop: coord.Coordinator, *, claims: int, jobs: int, notifies: int, at: float) -> bool:
    """One counting window ending at ``at``; returns whether marks are now takeable."""
    loop._waiting = {"default"}
    loop._window_claims, loop._window_jobs, loop._window_notifies = claims, jobs, notifies
    loop._choose_marks(at)
    return loop._takeable


def test_request_reply_traffic_keeps_standing_marks(loop) -> None:
    assert window(loop, claims=120, jobs=120, notifies=120, at=1.0) is False
    assert loop._waiting == {"default"}  # nothing to write again


def test_a_flood_of_notifies_per_claim_makes_marks_takeable_and_rewrites_them(loop) -> None:
    assert window(loop, claims=20, jobs=40, notifies=49, at=1.0) is False  # too few to matter
    assert window(loop, claims=200, jobs=3000, notifies=1500, at=2.0) is True
    assert loop._waiting == set()  # every mark is set again, takeable
    assert window(loop, claims=150, jobs=2800, notifies=150, at=3.0) is True  # batches: keep


def test_claims_of_single_jobs_make_takeable_marks_stand_again(loop) -> None:
    window(loop, claims=200, jobs=3000, notifies=1500, at=1.0)
    assert window(loop, claims=100, jobs=150, notifies=100, at=2.0) is False
    assert loop._waiting == set()
    assert window(loop, claims=5, jobs=0, notifies=0, at=3.0) is False  # idle: stays standing


def test_the_choice_waits_for_the_end_of_its_window(loop) -> None:
    window(loop, claims=1, jobs=1, notifies=1, at=10.0)
    assert loop._window_end == 10.0 + coord.MARKS_WINDOW
