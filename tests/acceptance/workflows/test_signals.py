"""Lifecycle signals in a real worker: every job signal is sent, in order, off the hot threads,
and a receiver that raises (connected before each recording one) changes nothing."""

from __future__ import annotations

import pytest

from tests.acceptance.delivery.conftest import Db
from tests.acceptance.workflows import tasks
from tests.harness import Workers

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def test_job_signals_follow_each_job_through_retries_to_its_end(workers: Workers, wf: Db) -> None:
    recovers = tasks.lifecycle.enqueue(False)
    fails = tasks.lifecycle.enqueue(True)
    workers.start("--queues", tasks.QUEUE, "--concurrency", "2")

    def seen(handle_id: object) -> list[tuple[str, str]]:
        rows = wf.rows(
            "SELECT signal, status FROM wf_signal WHERE ref = %s ORDER BY id", [handle_id]
        )
        return [tuple(row) for row in rows]

    workers.wait_for(
        lambda: len(seen(recovers.task_id)) == 4 and len(seen(fails.task_id)) == 4,
        60,
        "both jobs' signals",
    )
    # The retry's signal and the next attempt's start come from two threads (the finisher and
    # the task thread) in that order, but a fast re-claim may be signalled first: compare sets
    # in the middle, order at the ends.
    for handle, end in ((recovers, ("job_succeeded", "")), (fails, ("job_failed", "exhausted"))):
        got = seen(handle.task_id)
        assert got[0] == ("job_started", "1")
        assert sorted(got[1:3]) == [("job_retried", ""), ("job_started", "2")]
        assert got[3] == end
    assert recovers.wait(timeout=10).result == 2
    assert "raised" in workers.logs(tail=20000)
