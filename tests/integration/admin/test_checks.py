"""System checks: each misconfiguration gets its own stable id."""

from __future__ import annotations

import pytest
from django.conf import settings
from django.test import override_settings

from pg_queue.checks import check_pg_queue


def ids(**changes) -> list[str]:
    with override_settings(PG_QUEUE={**settings.PG_QUEUE, **changes}):
        return [m.id for m in check_pg_queue()]


def test_the_example_settings_pass():
    assert ids() == []


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"LEASE_SECONDS": 0}, "pg_queue.E003"),
        ({"REARM_INTERVAL": 30, "LEASE_SECONDS": 30}, "pg_queue.E007"),
        ({"REARM_INTERVAL": 0}, "pg_queue.E007"),
        ({"TIME_LIMIT": -1}, "pg_queue.E008"),
        ({"TIME_LIMIT": 0.2}, "pg_queue.E008"),
        ({"RESULT_TTL_SECONDS": 30}, "pg_queue.E009"),
        ({"RESULT_TTL_SECONDS": 120, "LEASE_SECONDS": 300}, "pg_queue.E010"),
        ({"CELERY_APP": "no_such_module_xyz:app"}, "pg_queue.E011"),
        ({"CELERY_APP": "backend.celery:no_such_attr"}, "pg_queue.E011"),
        ({"ROUTING_PERCENT": 101}, "pg_queue.E012"),
        ({"ROUTING_PERCENT": -1}, "pg_queue.E012"),
        ({"LEASE_SECONDS": "30"}, "pg_queue.E013"),
        ({"NO_SUCH_KEY": 1}, "pg_queue.W001"),
        ({"RESULT_SWEEP_INTERVAL": 0}, "pg_queue.E014"),
        ({"RESULT_MAX_BYTES": -1}, "pg_queue.E014"),
        ({"UNWRITTEN_OUTCOME_MAX_AGE": 0}, "pg_queue.E014"),
        ({"UNHEALTHY_RESTART_AFTER": 0}, "pg_queue.E014"),
        ({"LOCK_TIMEOUT": -1}, "pg_queue.E015"),
        ({"STATEMENT_TIMEOUT": -5}, "pg_queue.E015"),
        ({"LOCK_TIMEOUT": 0}, "pg_queue.W002"),
        ({"STATEMENT_TIMEOUT": "30s"}, "pg_queue.E013"),
    ],
)
def test_each_misconfiguration_is_reported_with_its_id(changes, expected):
    assert expected in ids(**changes)


@pytest.mark.parametrize(
    "changes",
    [
        {"TIME_LIMIT": 0},  # no limit: fine, and no warning either
        {"TIME_LIMIT": 1},
        {"RESULT_TTL_SECONDS": 60, "LEASE_SECONDS": 30},
        {"ROUTING_PERCENT": 0},
        {"ROUTING_PERCENT": 100},
        {"CELERY_APP": ""},
        {"LEASE_SECONDS": 2, "REARM_INTERVAL": 0.5},  # the delivery tests' fast settings
    ],
)
def test_sane_edges_pass(changes):
    assert ids(**changes) == []


def test_celery_app_error_names_the_path_and_the_import_error():
    with override_settings(PG_QUEUE={**settings.PG_QUEUE, "CELERY_APP": "no_such_module_xyz:app"}):
        (message,) = [m for m in check_pg_queue() if m.id == "pg_queue.E011"]
    assert "'no_such_module_xyz:app'" in message.msg
    assert "ModuleNotFoundError" in message.msg or "ImportError" in message.msg


def test_a_string_where_a_number_belongs_is_reported_not_a_crash():
    with override_settings(PG_QUEUE={**settings.PG_QUEUE, "REARM_INTERVAL": "5"}):
        messages = check_pg_queue()
    assert [m.id for m in messages] == ["pg_queue.E013"]
    assert "REARM_INTERVAL" in messages[0].msg
    assert "'5'" in messages[0].msg


@pytest.mark.parametrize(
    ("database", "expected"),
    [
        ({"DISABLE_SERVER_SIDE_CURSORS": True}, ["pg_queue.W003"]),
        ({"OPTIONS": {"prepare_threshold": None}}, ["pg_queue.W003"]),
        ({}, []),
    ],
)
def test_settings_that_contradict_a_transaction_pooler_are_reported(database, expected):
    from django.db import connections

    live = connections["default"].settings_dict
    saved = dict(live)
    live.update(database)
    try:
        assert [m.id for m in check_pg_queue()] == expected
        off = {**settings.PG_QUEUE, "NOTIFY": False, "PREPARED_STATEMENTS": False}
        with override_settings(PG_QUEUE=off):
            assert check_pg_queue() == []
    finally:
        live.clear()
        live.update(saved)
