"""Tasks the workflow tests run in worker subprocesses (loaded with ``--include``).

They record what ran in the side tables of ``conftest.wf`` through the delivery tasks'
per-thread connection. Importing this module also connects the group/chain signal receivers,
one of which raises (a raising receiver must change nothing).
"""

from __future__ import annotations

import json
import time
from typing import Any

from pg_queue import JobContext, task
from pg_queue.signals import (
    chain_finished,
    group_finished,
    job_failed,
    job_retried,
    job_started,
    job_succeeded,
)
from tests.acceptance.delivery.tasks import _execute

QUEUE = "wf"


def _started(context: JobContext, key: str | None) -> int:
    rows = _execute(
        """
        INSERT INTO wf_exec (task_id, attempt, worker_id, resource_key, started_at)
        VALUES (%(task_id)s, %(attempt)s, %(worker_id)s, %(key)s, clock_timestamp())
        RETURNING id
        """,
        {
            "task_id": context.task_id,
            "attempt": context.attempt,
            "worker_id": context.worker_id,
            "key": key,
        },
    )
    return int(rows[0][0])


def _ended(exec_id: int) -> None:
    _execute("UPDATE wf_exec SET ended_at = clock_timestamp() WHERE id = %(id)s", {"id": exec_id})


@task(queue=QUEUE, takes_context=True, resource_key=lambda key, ms=0: key)
def keyed(context: JobContext, key: str, ms: float = 0) -> str:
    """Hold ``key`` (taken by the claim) for ``ms`` milliseconds, recording start and end."""
    exec_id = _started(context, key)
    time.sleep(ms / 1000)
    _ended(exec_id)
    return key


@task(queue=QUEUE, takes_context=True, max_attempts=1, resource_key=lambda key, ms=0: key)
def keyed_once(context: JobContext, key: str, ms: float = 0) -> str:
    """``keyed`` with a single attempt (a kill -9 while it runs dead-letters it)."""
    exec_id = _started(context, key)
    time.sleep(ms / 1000)
    _ended(exec_id)
    return key


@task(queue=QUEUE, takes_context=True)
def plain(context: JobContext, ms: float = 0) -> float:
    """No key: record the execution, sleep ``ms`` milliseconds."""
    exec_id = _started(context, None)
    time.sleep(ms / 1000)
    _ended(exec_id)
    return ms


@task(queue=QUEUE, takes_context=True)
def add(context: JobContext, a: int, b: int, ms: float = 0) -> int:
    """``a + b`` after ``ms`` milliseconds, recording which worker ran it."""
    exec_id = _started(context, None)
    time.sleep(ms / 1000)
    _ended(exec_id)
    return a + b


@task(queue=QUEUE, max_attempts=1)
def fail_if(x: int, bad: int) -> int:
    """Returns ``x``; fails for good (one attempt) when ``x == bad``."""
    if x == bad:
        raise ValueError(f"child {x} failed")
    return x


@task(queue=QUEUE, max_attempts=1)
def flaky(x: int) -> int:
    """Returns ``x`` once the flag ``fixed`` is set in ``wf_flag``; fails for good before."""
    if not _execute("SELECT 1 FROM wf_flag WHERE flag = 'fixed'", {}):
        raise ValueError(f"child {x}: not fixed yet")
    return x


@task(queue=QUEUE)
def summarize(results: list[Any], tag: str) -> int:
    """A group's on_success: records the results it was given."""
    _execute(
        "INSERT INTO wf_callback (kind, tag, payload) VALUES ('success', %(tag)s, %(payload)s)",
        {"tag": tag, "payload": json.dumps(results)},
    )
    return len(results)


@task(queue=QUEUE)
def report(group_id: str, failures: Any, tag: str) -> None:
    """A group's or chain's on_error: records the id and failures it was given."""
    _execute(
        "INSERT INTO wf_callback (kind, tag, payload) VALUES ('error', %(tag)s, %(payload)s)",
        {"tag": tag, "payload": json.dumps({"group_id": str(group_id), "failures": failures})},
    )


@task(queue=QUEUE)
def start(n: int) -> list[int]:
    """A chain's first step."""
    return [n]


@task(queue=QUEUE)
def step(previous: list[int], n: int) -> list[int]:
    """A chain step: the previous result with ``n`` appended."""
    return [*previous, n]


@task(queue=QUEUE, max_attempts=1)
def boom(previous: Any, n: int) -> None:
    raise RuntimeError(f"step {n} broke")


@task(queue=QUEUE, takes_context=True, max_attempts=2, retry_backoff=0.05)
def lifecycle(context: JobContext, fail_for_good: bool) -> int:
    """Fails its first attempt; then succeeds, or fails for good when ``fail_for_good``."""
    if context.attempt == 1 or fail_for_good:
        raise ValueError(f"attempt {context.attempt} failed")
    return context.attempt


def _insert_signal(name: str, ref: Any, status: str) -> None:
    _execute(
        "INSERT INTO wf_signal (signal, ref, status) VALUES (%(s)s, %(r)s, %(st)s)",
        {"s": name, "r": ref, "st": status},
    )


def _record_group_signal(name: str):  # type: ignore[no-untyped-def]
    def receiver(sender: Any, group_id: Any, status: str, **_: Any) -> None:
        _insert_signal(name, group_id, status)

    return receiver


def _record_job_signal(name: str):  # type: ignore[no-untyped-def]
    """Records the signals of ``lifecycle`` jobs only (status: the attempt, or the delay)."""

    def receiver(sender: Any, task_id: Any, task_name: str, **kwargs: Any) -> None:
        if task_name == lifecycle.name:
            _insert_signal(name, task_id, str(kwargs.get("attempt", kwargs.get("reason", ""))))

    return receiver


def _raising(sender: Any, **kwargs: Any) -> None:
    raise RuntimeError("a receiver that raises")


_receivers = {
    signal: _record_group_signal(name)
    for name, signal in (("group_finished", group_finished), ("chain_finished", chain_finished))
}
_receivers |= {
    signal: _record_job_signal(name)
    for name, signal in (
        ("job_started", job_started),
        ("job_succeeded", job_succeeded),
        ("job_retried", job_retried),
        ("job_failed", job_failed),
    )
}
for _signal, _receiver in _receivers.items():
    # A raising receiver before every recording one: it must change nothing.
    _signal.connect(_raising, dispatch_uid=f"wf-raising-{id(_signal)}")
    _signal.connect(_receiver, dispatch_uid=f"wf-record-{id(_signal)}")
