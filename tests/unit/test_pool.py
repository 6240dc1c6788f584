"""The task pool on its own: time limits need no claim loop, and every thread is accounted for.

No database is involved: the pool turns jobs into outcomes and hands them to ``submit``.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
import uuid

from pg_queue.core.outcomes import ClaimedJob, Outcome, RetryLater, Success
from pg_queue.core.payload import TaskPayload
from pg_queue.tasks import Task
from pg_queue.worker.execution import JobRun
from pg_queue.worker.inflight import InFlight
from pg_queue.worker.pool import Pool
from pg_queue.worker.stats import WorkerStats
from tests.harness import wait_for

release = threading.Event()


def _blocks(seconds: float) -> str:
    release.wait(seconds)
    return "late"


def _quick(n: int) -> int:
    return n


BLOCKS = Task(func=_blocks, name="tests.unit.test_pool.blocks", queue="q", max_attempts=3)
QUICK = Task(func=_quick, name="tests.unit.test_pool.quick", queue="q")


def job_of(task: Task, args: list[object], time_limit: float = 0.0) -> JobRun:
    now = dt.datetime.now(dt.UTC)
    msg = ClaimedJob(
        msg_id=int(uuid.uuid4().int % 2**62),
        task_id=uuid.uuid4(),
        task_name=task.name,
        queue_name="q",
        payload_text="{}",
        attempts=1,
        max_attempts=task.max_attempts,
        lease_token=uuid.uuid4(),
        enqueued_at=now,
        available_at=now,
        claimed_at=now,
    )
    return JobRun(msg, TaskPayload(args=args), task, time.monotonic(), time_limit)


def test_a_time_limit_fires_without_a_claim_loop_and_the_stuck_thread_is_replaced_then_pruned():
    release.clear()
    outcomes: list[Outcome] = []
    stats = WorkerStats()
    pool = Pool(
        concurrency=1,
        worker_id="w",
        inflight=InFlight(),
        submit=outcomes.append,
        stats=stats,
        exit_on_time_limit=False,
        request_exit=lambda: None,
    )
    pool.start()
    try:
        stuck = job_of(BLOCKS, [30.0], time_limit=0.2)
        pool.put(stuck)
        wait_for(lambda: outcomes, timeout=10, what="the time limit to fire")
        (timeout,) = outcomes
        assert isinstance(timeout, RetryLater), timeout
        assert timeout.msg is stuck.msg
        assert timeout.error == "TimeoutError: task exceeded its time limit of 0.2s"
        assert stats.time_limited == 1
        assert pool.health() == {"task_threads": 1, "abandoned_threads": 1, "task_thread_errors": 0}

        pool.put(job_of(QUICK, [7]))  # the replacement thread takes the next job
        wait_for(lambda: len(outcomes) == 2, timeout=10, what="the next job on the new thread")
        assert isinstance(outcomes[1], Success)
        assert outcomes[1].result_json == "7"

        release.set()  # the stuck task returns: its late result is discarded, its thread ends
        wait_for(
            lambda: pool.health()["abandoned_threads"] == 0,
            timeout=10,
            what="the abandoned thread to be pruned",
        )
        assert len(outcomes) == 2
        assert pool.health()["task_threads"] == 1
    finally:
        release.set()
        pool.stop(join_timeout=5)
    assert pool.health()["task_threads"] == 0
    assert not pool.timer.alive
