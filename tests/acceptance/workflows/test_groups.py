"""Groups and chains across real worker processes: exactly one callback, results in job order,
a failure ends the workflow once, and operators' cancel, purge and requeue keep the count."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from pg_queue import chain, group
from pg_queue.ops import operations
from pg_queue.ops.dead_letters import requeue_dead_letters
from tests.acceptance.delivery.conftest import Db
from tests.acceptance.workflows import tasks
from tests.harness import Workers

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

TIMEOUT = 90.0
#: How long a test keeps watching for a second callback that must never come.
SETTLE = 1.5


def callbacks(db: Db) -> list[tuple[str, str, Any]]:
    return [tuple(row) for row in db.rows("SELECT kind, tag, payload FROM wf_callback ORDER BY id")]


def signals(db: Db) -> list[tuple[str, str]]:
    return [
        tuple(row)
        for row in db.rows(
            "SELECT signal, status FROM wf_signal WHERE signal LIKE '%%_finished' ORDER BY id"
        )
    ]


def start_worker(workers: Workers, *flags: str) -> None:
    workers.start("--queues", tasks.QUEUE, "--concurrency", "4", *flags)


def test_a_group_across_two_processes_calls_on_success_once_with_results_in_job_order(
    workers: Workers, wf: Db
) -> None:
    handle = group(
        # 10 ms each, so that both processes take part and race to finish the group.
        [tasks.add.job(i, i, 10) for i in range(300)],
        on_success=tasks.summarize.job("big"),
        on_error=tasks.report.job("big"),
    ).enqueue()
    assert handle.status() == "running"
    start_worker(workers, "--processes", "2")

    outcome = handle.wait(timeout=TIMEOUT)
    assert outcome.status == "succeeded", outcome
    assert outcome.results == [2 * i for i in range(300)]
    assert outcome.errors == []
    workers.wait_for(lambda: callbacks(wf), TIMEOUT, "on_success to run")
    time.sleep(SETTLE)
    assert callbacks(wf) == [("success", "big", [2 * i for i in range(300)])]
    assert wf.value("SELECT count(DISTINCT worker_id) FROM wf_exec") >= 2
    # The raising receiver connected before it changed nothing.
    workers.wait_for(lambda: signals(wf), 30, "group_finished")
    assert signals(wf) == [("group_finished", "succeeded")]
    assert handle.status() == "succeeded"


def test_one_failing_child_calls_on_error_once_and_on_success_never(
    workers: Workers, wf: Db
) -> None:
    handle = group(
        [tasks.fail_if.job(i, 3) for i in range(10)],
        on_success=tasks.summarize.job("one-bad"),
        on_error=tasks.report.job("one-bad"),
    ).enqueue()
    start_worker(workers)

    outcome = handle.wait(timeout=TIMEOUT)
    assert outcome.status == "failed"
    assert [e["task_id"] for e in outcome.errors] == [str(handle.task_ids[3])]
    assert "child 3 failed" in outcome.errors[0]["error"]
    workers.wait_for(lambda: callbacks(wf), TIMEOUT, "on_error to run")
    time.sleep(SETTLE)
    [(kind, tag, payload)] = callbacks(wf)
    assert (kind, tag) == ("error", "one-bad")
    assert payload["group_id"] == str(handle.group_id)
    assert [f["task_id"] for f in payload["failures"]] == [str(handle.task_ids[3])]
    assert "child 3 failed" in payload["failures"][0]["error"]
    workers.wait_for(lambda: signals(wf), 30, "group_finished")
    assert signals(wf) == [("group_finished", "failed")]


def test_an_empty_group_succeeds_at_once_with_no_results(workers: Workers, wf: Db) -> None:
    handle = group([], on_success=tasks.summarize.job("empty")).enqueue()
    assert handle.status() == "succeeded"
    assert handle.wait(timeout=1).results == []
    start_worker(workers)
    workers.wait_for(lambda: callbacks(wf), TIMEOUT, "on_success of the empty group")
    assert callbacks(wf) == [("success", "empty", [])]


def test_requeueing_a_failed_child_from_the_dead_letters_completes_the_group(
    workers: Workers, wf: Db
) -> None:
    handle = group(
        [tasks.add.job(1, 1), tasks.flaky.job(7), tasks.add.job(2, 2)],
        on_success=tasks.summarize.job("requeued"),
        on_error=tasks.report.job("requeued"),
    ).enqueue()
    start_worker(workers)
    assert handle.wait(timeout=TIMEOUT).status == "failed"
    workers.wait_for(lambda: callbacks(wf), TIMEOUT, "on_error to run")

    wf.rows("INSERT INTO wf_flag VALUES ('fixed')")
    letters = [row[0] for row in wf.rows("SELECT id FROM pg_queue_dead_letter")]
    assert requeue_dead_letters(letters) == [handle.task_ids[1]]

    workers.wait_for(lambda: handle.status() == "succeeded", TIMEOUT, "the group to end again")
    assert handle.wait(timeout=1).results == [2, 7, 4]
    workers.wait_for(lambda: len(callbacks(wf)) == 2, TIMEOUT, "on_success to run")
    time.sleep(SETTLE)
    assert [(kind, tag) for kind, tag, _ in callbacks(wf)] == [
        ("error", "requeued"),
        ("success", "requeued"),
    ]
    assert callbacks(wf)[1][2] == [2, 7, 4]


def test_cancelling_a_member_ends_its_group_with_on_error_once(workers: Workers, wf: Db) -> None:
    handle = group(
        [tasks.add.job(1, 1), tasks.add.using(delay=3600).job(2, 2)],
        on_success=tasks.summarize.job("cancel"),
        on_error=tasks.report.job("cancel"),
    ).enqueue()
    start_worker(workers)
    workers.wait_for(
        lambda: wf.value("SELECT finished FROM pg_queue_group") == 1, TIMEOUT, "first child"
    )
    report = operations.jobs_cancel(task_ids=[handle.task_ids[1]], actor="alice")
    assert report.cancelled

    outcome = handle.wait(timeout=TIMEOUT)
    assert outcome.status == "failed"
    assert outcome.errors == [{"task_id": str(handle.task_ids[1]), "error": "cancelled by alice"}]
    # Sent here, by the cancelling process, once its transaction committed.
    assert signals(wf) == [("group_finished", "failed")]
    workers.wait_for(lambda: callbacks(wf), TIMEOUT, "on_error to run")
    time.sleep(SETTLE)
    assert [(kind, tag) for kind, tag, _ in callbacks(wf)] == [("error", "cancel")]


def test_purging_a_queue_ends_the_groups_of_its_jobs(wf: Db, workers: Workers) -> None:
    handle = group(
        [tasks.add.using(delay=3600).job(i, i) for i in range(5)],
        on_error=tasks.report.job("purge"),
    ).enqueue()
    assert operations.jobs_purge(tasks.QUEUE, "delayed") == 5

    outcome = handle.wait(timeout=5)
    assert outcome.status == "failed"
    assert len(outcome.errors) == 5
    start_worker(workers)
    workers.wait_for(lambda: callbacks(wf), TIMEOUT, "on_error to run")
    [(kind, tag, payload)] = callbacks(wf)
    assert (kind, tag) == ("error", "purge")
    assert len(payload["failures"]) == 5


def test_a_chain_passes_each_result_to_the_next_step(workers: Workers, wf: Db) -> None:
    handle = chain(
        [tasks.start.job(1), tasks.step.job(2), tasks.step.job(3)],
        on_error=tasks.report.job("chain"),
    ).enqueue()
    start_worker(workers)
    outcome = handle.wait(timeout=TIMEOUT)
    assert outcome.ok, outcome
    assert outcome.result == [1, 2, 3]
    assert outcome.task_id == handle.task_ids[-1]
    workers.wait_for(lambda: signals(wf), 30, "chain_finished")
    assert signals(wf) == [("chain_finished", "succeeded")]
    assert callbacks(wf) == []


def test_a_failing_middle_step_cancels_the_rest_and_calls_on_error_once(
    workers: Workers, wf: Db
) -> None:
    handle = chain(
        [tasks.start.job(1), tasks.boom.job(2), tasks.step.job(3)],
        on_error=tasks.report.job("broken"),
    ).enqueue()
    start_worker(workers)
    outcome = handle.wait(timeout=TIMEOUT)
    assert outcome.status == "failed"
    assert outcome.task_id == handle.task_ids[1]
    assert "step 2 broke" in outcome.error
    workers.wait_for(lambda: callbacks(wf), TIMEOUT, "on_error to run")
    time.sleep(SETTLE)
    [(kind, tag, payload)] = callbacks(wf)
    assert (kind, tag) == ("error", "broken")
    assert payload["group_id"] == str(handle.chain_id)
    assert "step 2 broke" in json.dumps(payload["failures"])
    # The last step never ran: its outcome says it was cancelled, and it never reached a queue.
    last = wf.one("SELECT status FROM pg_task_result WHERE task_id = %s", [handle.task_ids[2]])
    assert last == ("cancelled",)
    assert wf.value("SELECT count(*) FROM pg_queue_message") == 0
    assert signals(wf) == [("chain_finished", "failed")]


def test_requeueing_the_failed_step_resumes_its_chain(workers: Workers, wf: Db) -> None:
    handle = chain(
        [tasks.start.job(1), tasks.flaky.job(), tasks.step.job(3)],
        on_error=tasks.report.job("resumed"),
    ).enqueue()
    start_worker(workers)
    assert handle.wait(timeout=TIMEOUT).status == "failed"
    last = wf.one("SELECT status FROM pg_task_result WHERE task_id = %s", [handle.task_ids[2]])
    assert last == ("cancelled",)

    wf.rows("INSERT INTO wf_flag VALUES ('fixed')")
    letters = [row[0] for row in wf.rows("SELECT id FROM pg_queue_dead_letter")]
    assert requeue_dead_letters(letters) == [handle.task_ids[1]]

    workers.wait_for(lambda: handle.status() == "succeeded", TIMEOUT, "the chain to end again")
    outcome = handle.wait(timeout=1)
    assert outcome.ok, outcome
    assert outcome.result == [1, 3]
    assert [(kind, tag) for kind, tag, _ in callbacks(wf)] == [("error", "resumed")]
