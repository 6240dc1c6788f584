"""The flag alone: the default provider's percentage and tenant rules, fail-closed and the kill
switch, evaluated in-process (no workers, no database)."""

from __future__ import annotations

import pytest

from pg_queue.routing.flags import _bucket, use_postgres
from tests.acceptance.routing.conftest import flag_off, flag_on, pg_queue_settings

TASK = "workers.tasks.celery_multiply"
ORGS = [f"org-{i}" for i in range(1000)]


def routed(org_id: str = "", task_name: str = TASK) -> bool:
    return use_postgres(task_name=task_name, queue="default", org_id=org_id).use_postgres


def test_routing_disabled_sends_every_org_to_celery():
    with flag_off():
        assert not any(routed(org) for org in ORGS[:100])
        assert not routed("")


def test_enabled_at_100_percent_sends_every_call_to_postgres_even_without_an_org():
    with flag_on():
        assert all(routed(org) for org in ORGS[:100])
        assert routed("")
        assert use_postgres(task_name=TASK, queue="q").reason == "flag"


def test_percentage_routes_a_stable_share_of_orgs_and_a_wider_ramp_keeps_them():
    with flag_on(ROUTING_PERCENT=30):
        at_30 = {org for org in ORGS if routed(org)}
        again = {org for org in ORGS if routed(org)}
        no_org = routed("")
    with flag_on(ROUTING_PERCENT=60):
        at_60 = {org for org in ORGS if routed(org)}
    with flag_on(ROUTING_PERCENT=0):
        at_0 = {org for org in ORGS if routed(org)}

    assert at_30 == again  # same org, same answer, every call (and every process: sha256)
    assert 200 <= len(at_30) <= 400, len(at_30)
    assert 500 <= len(at_60) <= 700, len(at_60)
    assert at_30 <= at_60  # ramping up never moves an org back to Celery
    assert at_0 == set()
    assert not no_org  # below 100% a call without a targeting key stays on Celery
    assert at_30 == {org for org in ORGS if _bucket(org) < 30}


def test_included_tenants_ride_postgres_even_with_routing_disabled():
    with flag_off(ROUTING_TENANTS=["org-canary"]):
        assert routed("org-canary")
        assert not routed("org-other")


def test_excluded_tenants_stay_on_celery_whatever_else_says_postgres():
    with flag_on(ROUTING_EXCLUDE_TENANTS=["org-big"], ROUTING_TENANTS=["org-big"]):
        assert not routed("org-big")
        assert routed("org-small")


def test_task_allow_list_limits_routing_to_the_listed_tasks():
    with flag_on(ROUTING_TASKS=["workers.tasks.add"]):
        assert routed("org-1", "workers.tasks.add")
        assert not routed("org-1", TASK)


def test_task_allow_list_also_applies_to_included_tenants():
    """A canary tenant must not bypass ROUTING_TASKS (a capability limit, not a rollout knob)."""
    with flag_off(ROUTING_TENANTS=["org-canary"], ROUTING_TASKS=["workers.tasks.add"]):
        assert routed("org-canary", "workers.tasks.add")
        assert not routed("org-canary", TASK)


def test_kill_switch_forces_celery_even_with_the_flag_on():
    with flag_on(TRANSPORT_ENABLED=False, ROUTING_TENANTS=["org-canary"]):
        decision = use_postgres(task_name=TASK, queue="q", org_id="org-canary")
        assert (decision.use_postgres, decision.reason) == (False, "kill_switch")
        assert not routed("")


@pytest.mark.parametrize(
    ("factory", "reason_prefix"),
    [
        ("tests.acceptance.routing.providers.raising_provider", "error:"),
        ("tests.acceptance.routing.providers.non_bool_provider", "error:"),
    ],
)
def test_a_failing_provider_answers_celery(factory, reason_prefix):
    # ROUTING_ENABLED=True: the default provider would say Postgres; the factory must win.
    with flag_on(FLAG_PROVIDER=factory):
        decision = use_postgres(task_name=TASK, queue="q", org_id="org-1")
    assert decision.use_postgres is False
    assert decision.reason.startswith(reason_prefix), decision.reason


def test_a_configured_provider_is_used_instead_of_the_settings():
    with flag_off(FLAG_PROVIDER="tests.acceptance.routing.providers.always_on_provider"):
        assert routed("org-1")
    with flag_off():  # back to the default provider once the setting changes back
        assert not routed("org-1")


def test_a_provider_path_that_cannot_be_imported_answers_celery():
    with pg_queue_settings(ROUTING_ENABLED=True, FLAG_PROVIDER="no.such.module.factory"):
        decision = use_postgres(task_name=TASK, queue="q", org_id="org-1")
    assert (decision.use_postgres, decision.reason.startswith("error:")) == (False, True)
