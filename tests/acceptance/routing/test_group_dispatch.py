"""``dispatch_group``: one flag decision per group, fan-out, then one callback, on both transports.

Both sides serve this module's own queues, like the package's workers do theirs: a Postgres
worker, and a Celery worker whose result backend is Celery's filesystem backend (``file://`` in a
temporary folder). A Celery chord needs a backend that can tell when a group is done; the example
app's ``rpc://`` cannot (``dispatch_group`` raises ``NotImplementedError`` with it), so the test
process's producer app and the worker share the ``file://`` one instead. The queues are this
module's own, so the package's ``rpc://`` Celery worker never takes a chord's messages.

Every run of a child or a callback is a row in ``routing_group_call`` with the pid of the process
that ran it: a test proves which worker ran what, and how many times.
"""

from __future__ import annotations

import contextlib
import json
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from celery import Celery, signature
from django.db import DatabaseError, connection
from openfeature.evaluation_context import EvaluationContext
from openfeature.flag_evaluation import FlagResolutionDetails

from pg_queue.models import Job, TaskResult
from pg_queue.routing import RoutingDispatcher
from tests.acceptance.routing.conftest import (
    TASKS_MODULE,
    Queues,
    broker_reachable,
    flag_off,
    flag_on,
    start_pg_worker,
)
from tests.acceptance.routing.providers import _Base
from tests.harness import Process, wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

CHILD = "tests.acceptance.routing.tasks.group_square"
BOOM = "tests.acceptance.routing.tasks.boom"
DONE = "tests.acceptance.routing.tasks.group_done"
FAILED = "tests.acceptance.routing.tasks.group_failed"
#: Seconds a group, or one of its callbacks, gets to finish.
WAIT = 30.0
#: Values of the children; they sleep longer the earlier they come, so they finish in reverse.
VALUES = [1, 2, 3, 4]
SQUARES = [1, 4, 9, 16]


# --- workers, producer and the side table -------------------------------------------------------


@pytest.fixture(scope="module")
def group_queues(queues: Queues, broker_queues_to_delete: list[str]) -> Queues:
    """Queues of this module, served by ``group_pg_worker`` and ``chord_celery_worker`` only."""
    own = Queues(
        session=queues.session, main=f"{queues.main}-group", callbacks=f"{queues.main}-group-cb"
    )
    broker_queues_to_delete.extend([own.main, own.callbacks])
    return own


@pytest.fixture(scope="module")
def result_backend(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A chord-capable Celery result backend both the producer and the worker can reach."""
    return f"file://{tmp_path_factory.mktemp('celery-results')}"


@pytest.fixture(scope="module")
def group_pg_worker(
    subprocess_env: dict[str, str], group_queues: Queues, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Process]:
    proc = start_pg_worker(
        subprocess_env,
        tmp_path_factory.mktemp("group-pg-worker"),
        "group-pg-worker",
        [group_queues.main, group_queues.callbacks],
    )
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def chord_celery_worker(
    subprocess_env: dict[str, str],
    group_queues: Queues,
    result_backend: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Process]:
    """``celery -A backend worker`` with the ``file://`` result backend, on this module's queues."""
    if not broker_reachable():
        pytest.skip(
            "RabbitMQ is NOT reachable at 127.0.0.1:5672: Celery-side group tests skipped "
            "(start RabbitMQ to run them)"
        )
    argv = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "backend",
        "worker",
        "-Q",
        f"{group_queues.main},{group_queues.callbacks}",
        "-c",
        "2",
        "--pool",
        "threads",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
        "-n",
        f"routing-groups-{group_queues.session}@%h",
        "-I",
        TASKS_MODULE,
        "--loglevel",
        "INFO",
    ]
    log = tmp_path_factory.mktemp("chord-celery-worker") / "chord-celery-worker.log"
    env = {**subprocess_env, "CELERY_RESULT_BACKEND": result_backend}
    proc = Process("chord-celery-worker", argv, env, log)
    try:
        proc.wait_for_log(" ready.")
    except BaseException:
        proc.stop()
        raise
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def chord_app(result_backend: str) -> Iterator[Celery]:
    """The backend's Celery settings with the ``file://`` backend; never the current app."""
    app = Celery("routing-groups", set_as_current=False)
    app.config_from_object("django.conf:settings", namespace="CELERY")
    app.conf.result_backend = result_backend
    yield app
    app.close()


@pytest.fixture
def dispatcher(chord_app: Celery) -> RoutingDispatcher:
    """The dispatcher under test, over the chord-capable app (shadows the package's)."""
    return RoutingDispatcher(chord_app)


@dataclass(frozen=True)
class Call:
    args: list[Any]
    pid: int


class Calls:
    """Reads ``routing_group_call``: the runs recorded under one key, in the order they ran."""

    def __init__(self, key: str) -> None:
        self.key = key

    def of(self, kind: str) -> list[Call]:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT args, pid FROM routing_group_call WHERE key = %s AND kind = %s ORDER BY at",
                [self.key, kind],
            )
            # Django hands jsonb back as text on a raw cursor.
            return [Call(json.loads(args), pid) for args, pid in cursor.fetchall()]

    def wait(self, kind: str, count: int, *logs: Process) -> list[Call]:
        """Until ``count`` runs of ``kind`` are recorded; fails with the workers' logs."""
        return wait_for(
            lambda: len(found := self.of(kind)) >= count and found,
            WAIT,
            lambda: f"{count} {kind} run(s) of {self.key}\n" + "\n".join(p.log() for p in logs),
        )


@pytest.fixture
def calls() -> Iterator[Calls]:
    """The side table the group tasks record each run in, and a reader for this test's key."""
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE TABLE IF NOT EXISTS routing_group_call (kind text NOT NULL, key text NOT NULL,"
            " args jsonb NOT NULL, pid int NOT NULL, at timestamptz NOT NULL)"
        )
    yield Calls(uuid.uuid4().hex)
    with contextlib.suppress(DatabaseError), connection.cursor() as cursor:
        cursor.execute("DROP TABLE IF EXISTS routing_group_call")


# --- signatures ---------------------------------------------------------------------------------


def children(q: Queues, key: str, values: list[int] = VALUES) -> list[Any]:
    """One child per value; the first sleeps longest, so they finish in reverse order."""
    last = len(values) - 1
    return [
        signature(CHILD, args=(n, key), kwargs={"delay": 0.2 * (last - i)}).set(queue=q.main)
        for i, n in enumerate(values)
    ]


def boom(q: Queues, text: str) -> Any:
    return signature(BOOM, args=(text,)).set(queue=q.main)


def on_success(q: Queues, key: str) -> Any:
    return signature(DONE, args=(key,)).set(queue=q.callbacks)


def on_error(q: Queues, key: str) -> Any:
    return signature(FAILED, args=(key,)).set(queue=q.callbacks)


def acked_on_postgres(task_name: str, key: str) -> int:
    """How many jobs of ``task_name`` for ``key`` the Postgres worker finished (enqueued once
    each: a second enqueue would be a second row)."""
    return TaskResult.objects.filter(task_name=task_name, result__key=key).count()


def celery_finished(worker: Process, task_name: str, key: str) -> bool:
    """The Celery worker logged ``task_name`` succeeding with ``key`` in its return value."""
    return any(
        f"{task_name}[" in line and " succeeded in " in line and key in line
        for line in worker.output().splitlines()
    )


# --- Postgres -----------------------------------------------------------------------------------


def test_flag_on_runs_the_group_on_postgres_and_on_success_once_with_results_in_order(
    dispatcher, group_queues, group_pg_worker, calls
):
    q, key = group_queues, calls.key
    with flag_on():
        handle = dispatcher.dispatch_group(
            children(q, key), on_success=on_success(q, key), on_error=on_error(q, key)
        )
    assert handle.transport == "postgres"

    outcome = handle.wait(WAIT)

    assert (outcome.ok, outcome.transport, outcome.group_id) == (True, "postgres", handle.group_id)
    assert (outcome.results, outcome.error) == (SQUARES, "")
    ran = calls.wait("child", len(VALUES), group_pg_worker)
    assert [c.args[0] for c in ran] != VALUES, "children finished in order; the test proves less"
    assert {c.pid for c in ran} == {group_pg_worker.pid}
    done = calls.wait("on_success", 1, group_pg_worker)
    assert [c.args for c in done] == [[SQUARES, key]]
    assert done[0].pid == group_pg_worker.pid
    wait_for(lambda: acked_on_postgres(DONE, key), WAIT, "the on_success job's ack")
    assert not Job.objects.exists()  # nothing left to run (again)
    assert len(calls.of("on_success")) == 1
    assert acked_on_postgres(DONE, key) == 1
    assert calls.of("on_error") == []
    assert not TaskResult.objects.filter(task_name=FAILED).exists()


def test_a_failing_child_on_postgres_fails_the_group_and_fires_on_error_once_never_on_success(
    dispatcher, group_queues, group_pg_worker, calls
):
    q, key = group_queues, calls.key
    first, _, third = children(q, key, [1, 2, 3])
    with flag_on():
        handle = dispatcher.dispatch_group(
            [first, boom(q, "disk full on node n-3"), third],
            on_success=on_success(q, key),
            on_error=on_error(q, key),
        )
    assert handle.transport == "postgres"
    failed_id = str(handle.native.task_ids[1])

    outcome = handle.wait(WAIT)

    assert (outcome.ok, outcome.transport) == (False, "postgres")
    assert outcome.error == f"{failed_id}: RuntimeError: disk full on node n-3"
    errors = calls.wait("on_error", 1, group_pg_worker)
    assert [c.args for c in errors] == [
        [
            handle.group_id,
            [{"task_id": failed_id, "error": "RuntimeError: disk full on node n-3"}],
            key,
        ]
    ]
    wait_for(lambda: acked_on_postgres(FAILED, key), WAIT, "the on_error job's ack")
    assert not Job.objects.exists()
    assert len(calls.of("on_error")) == 1
    assert acked_on_postgres(FAILED, key) == 1
    assert calls.of("on_success") == []
    assert not TaskResult.objects.filter(task_name=DONE).exists()
    failed = TaskResult.objects.get(task_id=failed_id)
    assert (failed.status, failed.attempts) == ("failed", 1)  # a plain raise: one attempt
    assert sorted(c.args[0] for c in calls.of("child")) == [1, 3]  # the others still ran


def test_a_group_with_an_execution_id_follows_the_pin_not_the_flag(
    dispatcher, group_queues, group_pg_worker, calls
):
    q, key = group_queues, calls.key
    execution_id = f"exec-group-{key}"
    with flag_on():
        assert dispatcher.pin(execution_id, task_name=CHILD, queue=q.main) == "postgres"
    with flag_off():
        handle = dispatcher.dispatch_group(
            children(q, key, [5, 6]), on_success=on_success(q, key), execution_id=execution_id
        )

    outcome = handle.wait(WAIT)

    assert (outcome.ok, outcome.transport, outcome.results) == (True, "postgres", [25, 36])
    assert [c.args for c in calls.wait("on_success", 1, group_pg_worker)] == [[[25, 36], key]]


# --- Celery (a chord over the file:// result backend) -------------------------------------------


def test_flag_off_runs_the_group_as_a_celery_chord_and_on_success_once_with_results_in_order(
    dispatcher, group_queues, group_pg_worker, chord_celery_worker, calls
):
    q, key = group_queues, calls.key
    with flag_off():
        handle = dispatcher.dispatch_group(
            children(q, key), on_success=on_success(q, key), on_error=on_error(q, key)
        )
    assert handle.transport == "celery"

    outcome = handle.wait(WAIT)

    assert (outcome.ok, outcome.transport, outcome.group_id) == (True, "celery", handle.group_id)
    assert (outcome.results, outcome.error) == (SQUARES, "")
    ran = calls.wait("child", len(VALUES), chord_celery_worker)
    assert [c.args[0] for c in ran] != VALUES, "children finished in order; the test proves less"
    assert {c.pid for c in ran} == {chord_celery_worker.pid}
    done = calls.wait("on_success", 1, chord_celery_worker)
    assert [c.args for c in done] == [[SQUARES, key]]
    assert done[0].pid == chord_celery_worker.pid
    wait_for(
        lambda: celery_finished(chord_celery_worker, DONE, key),
        WAIT,
        lambda: f"the on_success task's end\n{chord_celery_worker.log()}",
    )
    assert len(calls.of("on_success")) == 1
    assert calls.of("on_error") == []
    assert not Job.objects.exists()
    assert not TaskResult.objects.exists()


def test_a_failing_child_on_celery_fails_the_chord_and_on_success_never_runs(
    dispatcher, group_queues, group_pg_worker, chord_celery_worker, calls
):
    """On Celery ``on_error`` is the chord body's errback, with Celery's own arguments (not
    pg_queue's ``(group_id, failures, ...)``), so this checks the failure, not the errback."""
    q, key = group_queues, calls.key
    first, _, third = children(q, key, [1, 2, 3])
    with flag_off():
        handle = dispatcher.dispatch_group(
            [first, boom(q, "disk full on node n-3"), third], on_success=on_success(q, key)
        )
    assert handle.transport == "celery"

    outcome = handle.wait(WAIT)

    assert (outcome.ok, outcome.transport) == (False, "celery")
    assert outcome.error == "RuntimeError: disk full on node n-3"
    assert outcome.results[0::2] == [1, 9]
    # Celery's chord_unlock gave up on the body: from here on it is never sent.
    chord_failed = f"Chord {handle.group_id!r} raised"
    wait_for(
        lambda: chord_failed in chord_celery_worker.output(),
        WAIT,
        lambda: f"{chord_failed!r}\n{chord_celery_worker.log()}",
    )
    assert calls.of("on_success") == []
    assert sorted(c.args[0] for c in calls.of("child")) == [1, 3]
    assert not Job.objects.exists()


# --- one decision per group ---------------------------------------------------------------------


#: Every answer ``FlippingProvider`` gave, in order (read by the test that installed it).
ANSWERS: list[bool] = []


class FlippingProvider(_Base):
    """A flag that answers the opposite of its previous answer on every evaluation: if a group
    were decided child by child, its children would alternate between the transports."""

    name = "flipping"

    def __init__(self, first: bool) -> None:
        super().__init__()
        self.next = first

    def resolve_boolean_details(
        self,
        flag_key: str,
        default_value: bool,
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[bool]:
        value, self.next = self.next, not self.next
        ANSWERS.append(value)
        return FlagResolutionDetails(value=value)


def flipping_from_postgres() -> FlippingProvider:
    return FlippingProvider(True)


def flipping_from_celery() -> FlippingProvider:
    return FlippingProvider(False)


@pytest.mark.parametrize(
    ("factory", "transport"),
    [("flipping_from_postgres", "postgres"), ("flipping_from_celery", "celery")],
    ids=["postgres", "celery"],
)
def test_one_flag_decision_sends_the_whole_group_and_its_callback_to_one_transport(
    dispatcher, group_queues, group_pg_worker, chord_celery_worker, calls, factory, transport
):
    q, key = group_queues, calls.key
    worker = {"postgres": group_pg_worker, "celery": chord_celery_worker}[transport]
    ANSWERS.clear()
    with flag_on(FLAG_PROVIDER=f"{__name__}.{factory}"):
        handle = dispatcher.dispatch_group(children(q, key), on_success=on_success(q, key))
    assert len(ANSWERS) == 1, ANSWERS  # the flag was asked once, for the whole group
    assert handle.transport == transport

    outcome = handle.wait(WAIT)

    assert (outcome.ok, outcome.transport, outcome.results) == (True, transport, SQUARES)
    ran = calls.wait("child", len(VALUES), group_pg_worker, chord_celery_worker)
    done = calls.wait("on_success", 1, group_pg_worker, chord_celery_worker)
    assert {c.pid for c in [*ran, *done]} == {worker.pid}
    assert sorted(c.args[0] for c in ran) == VALUES  # each child ran once, all on one side
    if transport == "postgres":
        wait_for(lambda: acked_on_postgres(DONE, key), WAIT, "the on_success job's ack")
        assert TaskResult.objects.filter(task_name=CHILD).count() == len(VALUES)
    else:
        assert not TaskResult.objects.exists()
        assert not Job.objects.exists()


# --- single calls with a result backend that stores results (file://) --------------------------


def test_a_celery_call_with_a_stored_result_is_read_from_another_thread_by_its_deadline(
    dispatcher, group_queues, chord_celery_worker, calls, broker_queues_to_delete
):
    """Not a group: the ``file://`` app shows a Celery handle on a result store (not ``rpc://``)
    is read from any thread, and a wait for a call nobody serves returns by its timeout."""
    import threading
    import time

    nobody = f"{group_queues.main}-nobody"
    broker_queues_to_delete.append(nobody)
    with flag_off():
        handle = dispatcher.dispatch_async(CHILD, [7, calls.key], queue=group_queues.main)
        started = time.monotonic()
        late = dispatcher.dispatch(CHILD, [7, calls.key], queue=nobody, timeout=0.5)
        elapsed = time.monotonic() - started
    box: list[Any] = []
    reader = threading.Thread(target=lambda: box.append(handle.wait(WAIT)))
    reader.start()
    reader.join(WAIT + 5)
    assert [(r.ok, r.result) for r in box] == [(True, 49)]
    assert handle.status() == "succeeded"
    assert (late.ok, late.error.startswith("TimeoutError: ")) == (False, True), late
    assert elapsed < 0.8, elapsed
