"""Management commands: bad flags are refused up front; the migrations match the models; the
demo prints names and paths as they are."""

from __future__ import annotations

import io

import pytest
from django.core.management import call_command
from rich.console import Console

from pg_queue.models import Job, Worker
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
        Job.objects.values_list("msg_id", "state", "attempts", "lease_token", "worker_id")
    )
    code, output = run_worker(*flags, timeout=60)
    assert code != 0, output
    assert message in output
    assert "CommandError" in output
    assert "Traceback" not in output  # a message, not a crash
    after = sorted(
        Job.objects.values_list("msg_id", "state", "attempts", "lease_token", "worker_id")
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


# --- pg_queue_demo: names from the database and paths are printed as they are ----------------


@pytest.mark.django_db
def test_demo_per_task_table_prints_task_names_as_plain_text():
    from pg_queue.management.commands import pg_queue_demo
    from tests.integration.admin import factory

    module = pg_queue_demo.DEFAULT_TASKS_MODULE
    for name in (f"{module}.[/]", "[bold]x[/bold]", ":smile:"):
        factory.result(queue=pg_queue_demo.DEMO_QUEUE, task_name=name)
    console = Console(file=io.StringIO(), width=120)
    console.print(pg_queue_demo._per_task_table(module))
    rows = [
        [cell.strip() for cell in line.split("│")] for line in console.file.getvalue().splitlines()
    ]
    tasks = {row[1] for row in rows if row[2:3] == ["1"]}  # task, jobs (1 each), ...
    assert tasks == {"[/]", "[bold]x[/bold]", ":smile:"}


class _StopBeforeTheWorker(Exception):
    pass


@pytest.mark.django_db
def test_demo_prints_a_worker_log_path_with_brackets_as_it_is(monkeypatch, tmp_path):
    from pg_queue.management.commands import pg_queue_demo

    log_dir = tmp_path / "[/]" / "[bold]x[/bold]"
    log_dir.mkdir(parents=True)
    monkeypatch.setattr(pg_queue_demo.tempfile, "mkdtemp", lambda prefix: str(log_dir))

    def no_worker(*args: object, **kwargs: object) -> None:
        raise _StopBeforeTheWorker

    monkeypatch.setattr(pg_queue_demo.subprocess, "Popen", no_worker)
    out = io.StringIO()
    with pytest.raises(_StopBeforeTheWorker):
        call_command("pg_queue_demo", "--jobs", "1", stdout=out)
    assert f"worker log: {log_dir / 'worker.log'}" in out.getvalue().replace("\n", "")
