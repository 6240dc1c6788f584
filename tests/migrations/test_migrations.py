"""Migrations: in step with the models, and reversible, on a real PostgreSQL.

The tier that catches a model change without its migration (``makemigrations --check``), and a
migration that cannot be unapplied, before a deployment finds out.
"""

from __future__ import annotations

import io

import pytest
from django.core.management import call_command
from django.db import connection


def table_names() -> set[str]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() "
            "AND (tablename LIKE 'pg\\_queue%%' OR tablename IN ('pg_task_result', 'pg_worker', 'pg_resource_lock'))"
        )
        return {row[0] for row in cursor.fetchall()}


def wake_function_and_marks_persistence() -> tuple[bool, str | None]:
    """Does ``pg_queue_wake()`` exist, and how is ``pg_queue_waiter`` stored ('u': unlogged)?"""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT to_regprocedure('pg_queue_wake(text, text, text)') IS NOT NULL, "
            "(SELECT relpersistence FROM pg_class WHERE oid = to_regclass('pg_queue_waiter'))"
        )
        function, persistence = cursor.fetchone()
    return function, persistence


@pytest.mark.django_db
def test_models_and_migrations_are_in_step():
    out = io.StringIO()
    call_command("makemigrations", "--check", "--dry-run", stdout=out)
    assert "No changes detected" in out.getvalue()


@pytest.mark.django_db(transaction=True)
def test_every_migration_unapplies_and_applies_again():
    tables = {
        "pg_queue_message",
        "pg_task_result",
        "pg_queue_dead_letter",
        "pg_worker",
        "pg_queue_routing_pin",
        "pg_queue_group",
        "pg_resource_lock",
        "pg_queue_stats",
        "pg_queue_waiter",
    }
    assert table_names() == tables
    assert wake_function_and_marks_persistence() == (True, "u")
    try:
        call_command("migrate", "pg_queue", "zero", verbosity=0)
        assert table_names() == set()
        assert wake_function_and_marks_persistence() == (False, None)
    finally:
        call_command("migrate", "pg_queue", verbosity=0)
    assert table_names() == tables
    assert wake_function_and_marks_persistence() == (True, "u")  # 0013: unlogged marks
    with connection.cursor() as cursor:  # 0005's index on claimed rows is back, vt's is gone
        cursor.execute(
            "SELECT indexname FROM pg_indexes WHERE tablename = 'pg_queue_message' "
            "AND indexname LIKE 'pg_queue_msg_%%'"
        )
        indexes = {row[0] for row in cursor.fetchall()}
    assert "pg_queue_msg_claimed_idx" in indexes
    assert "pg_queue_msg_vt_idx" not in indexes
