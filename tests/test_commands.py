"""Management commands: bad flags are refused up front; the migrations match the models."""

from __future__ import annotations

import io

import pytest
from django.core.management import call_command

from pg_queue.models import QueueMessage, Worker
from pg_queue.producer import enqueue_many
from workers import tasks


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--queues", "a=0"), "--queues: queue 'a': weight must be >= 1, got 0"),
        (("--queues", "a=x"), "--queues: queue 'a': weight 'x' is not an integer"),
        (("--queues", ","), "names no queue"),
        (("--concurrency", "0"), "--concurrency must be >= 1, got 0"),
        (("--batch-size", "-1"), "--batch-size must be >= 1, got -1"),
        (("--max-tasks", "0"), "--max-tasks must be >= 1, got 0"),
        (("--include", "no_such_module_xyz"), "cannot import task module"),
    ],
)
def test_bad_worker_flags_exit_nonzero_with_a_clear_message_and_touch_nothing(
    run_worker, flags, message
):
    enqueue_many(tasks.echo.job(i) for i in range(3))
    before = sorted(
        QueueMessage.objects.values_list("msg_id", "state", "attempts", "lease_token", "worker_id")
    )
    code, output = run_worker(*flags, timeout=60)
    assert code != 0, output
    assert message in output
    assert "CommandError" in output
    assert "Traceback" not in output  # a message, not a crash
    after = sorted(
        QueueMessage.objects.values_list("msg_id", "state", "attempts", "lease_token", "worker_id")
    )
    assert after == before
    assert all(state == "ready" and attempts == 0 for _, state, attempts, *_ in after)
    assert not Worker.objects.exists()


@pytest.mark.django_db
def test_migrations_match_the_models():
    out = io.StringIO()
    try:
        call_command("makemigrations", "--check", "--dry-run", stdout=out, stderr=out)
    except SystemExit as exc:  # --check exits 1 when a migration is missing
        pytest.fail(f"models and migrations differ (exit {exc.code}):\n{out.getvalue()}")
    assert "No changes detected" in out.getvalue()
