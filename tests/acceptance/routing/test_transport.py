"""The flag decides, per call, which real worker runs it; pinning holds an execution in place.

A Postgres worker and a Celery worker serve the same queue name; each test proves both who ran
the call (a ``pg_task_result`` row, or the Celery worker's log) and who did not.
"""

from __future__ import annotations

import pytest

from pg_queue.models import Job, RoutingPin, TaskResult
from tests.acceptance.routing.conftest import flag_off, flag_on
from tests.harness import wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

TASK = "workers.tasks.celery_multiply"


def ran_on_postgres(result) -> bool:
    return TaskResult.objects.filter(task_id=result.task_id, status="succeeded").exists()


def assert_ran_on_celery(result, celery_worker) -> None:
    assert (result.ok, result.transport, result.result) == (True, "celery", 42), result
    assert not TaskResult.objects.filter(task_id=result.task_id).exists()
    assert not Job.objects.exists()
    wait_for(lambda: result.task_id in celery_worker.output(), 10, "the Celery worker's log line")


def test_flag_on_runs_the_call_on_the_postgres_worker(dispatcher, queues, pg_worker, celery_worker):
    with flag_on():
        result = dispatcher.dispatch(TASK, [6, 7], queue=queues.main, timeout=30, org_id="org-1")
    assert (result.ok, result.transport, result.result, result.error) == (True, "postgres", 42, "")
    row = TaskResult.objects.get(task_id=result.task_id)
    assert (row.status, row.result, row.task_name, row.queue_name) == (
        "succeeded",
        42,
        TASK,
        queues.main,
    )
    assert result.task_id not in celery_worker.output()


def test_dispatch_to_postgres_checks_nothing_for_the_id_it_generates(dispatcher, queues):
    """Request-reply latency is counted per query: dispatch() passes a fresh id, unchecked."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with flag_on(), CaptureQueriesContext(connection) as captured:
        result = dispatcher.dispatch(TASK, [6, 7], queue=queues.unserved("pg"), timeout=0.05)
    assert (result.ok, result.transport) == (False, "postgres")
    inserts = [q for q in captured.captured_queries if "INSERT INTO pg_queue_message" in q["sql"]]
    assert len(inserts) == 1
    assert not [q for q in captured.captured_queries if "ANY(" in q["sql"]], captured


def test_flag_off_runs_the_call_on_the_celery_worker(dispatcher, queues, pg_worker, celery_worker):
    with flag_off():
        result = dispatcher.dispatch(TASK, [6, 7], queue=queues.main, timeout=30, org_id="org-1")
    assert_ran_on_celery(result, celery_worker)


@pytest.mark.parametrize(
    "factory",
    [
        "tests.acceptance.routing.providers.raising_provider",
        "tests.acceptance.routing.providers.non_bool_provider",
    ],
)
def test_a_broken_flag_provider_fails_closed_to_celery(
    dispatcher, queues, pg_worker, celery_worker, factory
):
    with flag_on(FLAG_PROVIDER=factory):
        result = dispatcher.dispatch(TASK, [6, 7], queue=queues.main, timeout=30, org_id="org-1")
    assert_ran_on_celery(result, celery_worker)


def test_kill_switch_sends_the_call_to_celery_even_with_the_flag_on(
    dispatcher, queues, pg_worker, celery_worker
):
    with flag_on(TRANSPORT_ENABLED=False):
        result = dispatcher.dispatch(TASK, [6, 7], queue=queues.main, timeout=30, org_id="org-1")
    assert_ran_on_celery(result, celery_worker)


def test_tenant_rules_route_each_org_to_its_own_transport(
    dispatcher, queues, pg_worker, celery_worker
):
    with flag_off(ROUTING_TENANTS=["org-canary"]):
        canary = dispatcher.dispatch(
            TASK, [6, 7], queue=queues.main, timeout=30, org_id="org-canary"
        )
        other = dispatcher.dispatch(TASK, [6, 7], queue=queues.main, timeout=30, org_id="org-other")
    assert (canary.ok, canary.transport) == (True, "postgres")
    assert ran_on_postgres(canary)
    assert_ran_on_celery(other, celery_worker)


def test_pinned_execution_stays_on_postgres_while_the_flag_turns_off(
    dispatcher, queues, pg_worker, celery_worker
):
    with flag_on():
        assert dispatcher.pin("exec-pg", task_name=TASK, queue=queues.main) == "postgres"
        first = dispatcher.dispatch(
            TASK, [6, 7], queue=queues.main, timeout=30, execution_id="exec-pg"
        )
    with flag_off():
        later = dispatcher.dispatch(
            TASK, [6, 7], queue=queues.main, timeout=30, execution_id="exec-pg"
        )
        unpinned = dispatcher.dispatch(
            TASK, [6, 7], queue=queues.main, timeout=30, execution_id="exec-new"
        )
    assert (first.transport, later.transport) == ("postgres", "postgres")
    assert first.ok
    assert later.ok
    assert ran_on_postgres(first)
    assert ran_on_postgres(later)
    assert_ran_on_celery(unpinned, celery_worker)
    assert dict(RoutingPin.objects.values_list("execution_id", "transport")) == {
        "exec-pg": "postgres",
        "exec-new": "celery",
    }


def test_pinned_execution_stays_on_celery_while_the_flag_turns_on(
    dispatcher, queues, pg_worker, celery_worker
):
    with flag_off():
        first = dispatcher.dispatch(
            TASK, [6, 7], queue=queues.main, timeout=30, execution_id="exec-c"
        )
    with flag_on():
        later = dispatcher.dispatch(
            TASK, [6, 7], queue=queues.main, timeout=30, execution_id="exec-c"
        )
        handle = dispatcher.dispatch_async(TASK, [6, 7], queue=queues.main, execution_id="exec-c")
    assert_ran_on_celery(first, celery_worker)
    assert_ran_on_celery(later, celery_worker)
    assert handle.transport == "celery"
    assert handle.wait(30).result == 42


def test_kill_switch_wins_over_a_pin_to_postgres_and_the_pin_survives_it(
    dispatcher, queues, pg_worker, celery_worker
):
    with flag_on():
        assert dispatcher.pin("exec-k", task_name=TASK, queue=queues.main) == "postgres"
    with flag_on(TRANSPORT_ENABLED=False):
        during = dispatcher.dispatch(
            TASK, [6, 7], queue=queues.main, timeout=30, execution_id="exec-k"
        )
    with flag_off():  # switch back on; the flag is off now, the pin still says Postgres
        after = dispatcher.dispatch(
            TASK, [6, 7], queue=queues.main, timeout=30, execution_id="exec-k"
        )
    assert_ran_on_celery(during, celery_worker)
    assert (after.ok, after.transport) == (True, "postgres")
    assert ran_on_postgres(after)
    assert RoutingPin.objects.get(execution_id="exec-k").transport == "postgres"
