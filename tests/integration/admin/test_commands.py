"""Operator commands: pg_queue_status, pg_queue_purge, pg_queue_requeue, pg_queue_cancel."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import uuid

import pytest
from django.core.management import CommandError, call_command

from pg_queue.core.payload import ContinuationSpec
from pg_queue.models import DeadLetter, Job, TaskResult
from pg_queue.producer import enqueue
from tests.harness import REPO_ROOT
from tests.integration.admin import factory

pytestmark = pytest.mark.django_db


def run(*args: str) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


# --- pg_queue_status -------------------------------------------------------------------------


def test_status_prints_a_table_per_queue_and_says_what_is_stuck():
    factory.busy_queues()
    text = run("pg_queue_status")
    assert "pg_queue queues at" in text
    (default,) = [line.split() for line in text.splitlines() if line.split()[:1] == ["default"]]
    assert default[1] == "12"
    assert default[3:6] == ["4", "8", "0"]
    assert "email !" in text  # stuck queues are marked even without colour
    assert "mail-1-777-dead !" in text
    assert "email: oldest due job has waited" in text
    assert "email: 1 job(s) running past their lease" in text
    assert "worker mail-1-777-dead on mail-1: no heartbeat" in text
    assert "default !" not in text


def test_status_json_has_every_queue_and_worker():
    factory.busy_queues()
    data = json.loads(run("pg_queue_status", "--json"))
    queues = {q["queue"]: q for q in data["queues"]}
    assert queues["email"]["ready"] == 40
    assert queues["email"]["stuck"] is True
    assert queues["default"]["stuck"] is False
    assert data["totals"]["dead_letters"] == 6
    assert {w["worker_id"] for w in data["workers"] if w["stale"]} == {"mail-1-777-dead"}
    assert data["stuck"] is True
    assert data["stuck_ready_seconds"] == 300.0


def test_status_on_an_empty_database_says_so():
    text = run("pg_queue_status")
    assert "No queues" in text
    assert "No worker is registered" in text
    assert "Nothing stuck" in text


def test_status_watch_stops_after_the_iterations():
    factory.job(queue="q")
    text = run("pg_queue_status", "--watch", "0.01", "--iterations", "3")
    assert text.count("pg_queue queues at") == 3
    lines = run("pg_queue_status", "--json", "--watch", "0.01", "--iterations", "2").splitlines()
    assert [json.loads(line)["queues"][0]["queue"] for line in lines] == ["q", "q"]


def test_status_watch_exits_cleanly_on_ctrl_c(monkeypatch):
    from pg_queue.management.commands import pg_queue_status

    def interrupt(_: float) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(pg_queue_status.time, "sleep", interrupt)
    factory.job(queue="q")
    assert run("pg_queue_status", "--watch", "5").count("pg_queue queues at") == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--watch", "0"), "--watch must be between 0 and 3600 seconds, got 0"),
        (("--watch", "1", "--iterations", "0"), "--iterations must be >= 1, got 0"),
        (
            (
                "--iterations",
                "2",
            ),
            "--iterations needs --watch",
        ),
        (("--stuck-ready-seconds", "-1"), "--stuck-ready-seconds must be > 0"),
    ],
)
def test_status_refuses_bad_flags(args, message):
    with pytest.raises(CommandError, match=message):
        run("pg_queue_status", *args)


#: Names rich would read as markup: a closing tag with nothing to close (MarkupError), tags
#: (dropped), an emoji code (replaced), an unclosed bracket.
MARKUP_NAMES = ("[/]", "[bold]x[/bold]", ":smile:", "[red")


def test_status_prints_names_from_the_database_as_plain_text():
    closing, bold, smile, bracket = MARKUP_NAMES
    factory.job(queue=closing, task=bold)
    factory.job(queue=bold, state="claimed", worker_id=smile)
    factory.job(queue=bracket)  # nobody listens: stuck, named in the problems too
    factory.worker(smile, queues=[closing, bold], hostname=bracket, state=closing)
    factory.worker(bold, queues=[smile], hostname=closing, heartbeat_ago=3600)  # stale
    text = run("pg_queue_status")
    rows = [line.split() for line in text.splitlines()]
    assert [closing, "1"] in [row[:2] for row in rows], text
    assert [bold, "0"] in [row[:2] for row in rows], text
    assert [bracket, "!", "1"] in [row[:3] for row in rows], text
    worker = [smile, bracket, "4242", f"{closing},", bold, "8", closing]  # id host pid queues..
    assert any(row[:7] == worker for row in rows), text
    assert any(row[:4] == [bold, "!", closing, "4242"] for row in rows), text
    assert f"{bracket}: jobs are due or running but no live worker listens" in text
    assert f"worker {bold} on {closing}: no heartbeat" in text
    assert "\N{SMILING FACE WITH OPEN MOUTH AND SMILING EYES}" not in text


# --- pg_queue_purge --------------------------------------------------------------------------


def _purge_fixture() -> dict[str, Job]:
    return {
        "due": factory.job(queue="bulk"),
        "delayed": factory.job(queue="bulk", delay=600),
        "running": factory.job(queue="bulk", state="claimed", worker_id="w"),
        "other": factory.job(queue="other"),
    }


def test_purge_is_a_dry_run_by_default():
    _purge_fixture()
    text = run("pg_queue_purge", "--queue", "bulk")
    assert "Dry run: would delete 2 queued (due or delayed, not running) job(s)" in text
    assert "--yes" in text
    assert Job.objects.count() == 4


@pytest.mark.parametrize(
    ("state", "gone"),
    [
        ("ready", {"due"}),
        ("delayed", {"delayed"}),
        ("queued", {"due", "delayed"}),
        ("claimed", {"running"}),
        ("all", {"due", "delayed", "running"}),
    ],
)
def test_purge_with_yes_deletes_only_the_state_asked_for(state, gone):
    rows = _purge_fixture()
    text = run("pg_queue_purge", "--queue", "bulk", "--state", state, "--yes")
    assert f"Deleted {len(gone)} " in text
    assert "job(s) from queue 'bulk'." in text
    left = set(Job.objects.values_list("pk", flat=True))
    assert left == {m.pk for name, m in rows.items() if name not in gone}
    assert not TaskResult.objects.exists()  # a purge records no outcome


def test_purge_of_an_unknown_queue_hints_at_a_typo():
    assert "has no jobs at all" in run("pg_queue_purge", "--queue", "nope")


def test_purge_refuses_bad_input():
    with pytest.raises(CommandError, match="--queue must name a queue"):
        run("pg_queue_purge", "--queue", " ")
    with pytest.raises(CommandError, match="invalid choice: 'running'"):
        run("pg_queue_purge", "--queue", "q", "--state", "running")
    with pytest.raises(CommandError, match="--queue"):
        run("pg_queue_purge")


def test_purge_deletes_in_chunks(monkeypatch):
    from pg_queue.ops import operations

    monkeypatch.setattr(operations, "ACTION_CHUNK", 7)
    factory.jobs(30, queue="bulk")
    assert "Deleted 30 queued" in run("pg_queue_purge", "--queue", "bulk", "--yes")
    assert not Job.objects.exists()


# --- pg_queue_requeue ------------------------------------------------------------------------


def test_requeue_dry_run_counts_and_breaks_down_by_queue_task_reason():
    factory.dead_letter(queue="email", task_name="t.mail")
    factory.dead_letter(queue="email", task_name="t.mail")
    factory.dead_letter(queue="default", task_name="t.other", reason="unknown_task")
    text = run("pg_queue_requeue", "--dead-letter")
    assert "Dry run: would requeue 3 dead letter(s)." in text
    assert "2  queue=email task=t.mail reason=exhausted" in text
    assert "1  queue=default task=t.other reason=unknown_task" in text
    assert DeadLetter.objects.count() == 3
    assert not Job.objects.exists()


def test_requeue_with_filters_and_yes():
    mail = factory.dead_letter(queue="email", task_name="t.mail")
    factory.dead_letter(queue="email", task_name="t.other")
    factory.dead_letter(queue="default", task_name="t.mail")
    old = factory.dead_letter(queue="email", task_name="t.mail")
    DeadLetter.objects.filter(pk=old.pk).update(failed_at=factory.ago(7200))
    text = run(
        "pg_queue_requeue", "--dead-letter", "--queue", "email", "--task", "t.mail",
        "--since-minutes", "60", "--yes",
    )  # fmt: skip
    described = "(queue 'email', task 't.mail', failed in the last 60 min)"
    assert f"Requeued 1 dead letter(s) {described}" in text
    assert list(Job.objects.values_list("task_id", flat=True)) == [mail.task_id]
    assert DeadLetter.objects.count() == 3


def test_requeue_since_an_iso_time():
    recent = factory.dead_letter()
    old = factory.dead_letter()
    DeadLetter.objects.filter(pk=old.pk).update(failed_at=factory.ago(86400 * 3))
    since = DeadLetter.objects.get(pk=recent.pk).failed_at.isoformat()
    text = run("pg_queue_requeue", "--dead-letter", "--since", since)
    assert "would requeue 1 dead letter(s)" in text
    text = run("pg_queue_requeue", "--dead-letter", "--since", "2000-01-01T00:00:00Z")
    assert "would requeue 2 dead letter(s)" in text


def test_requeue_reports_letters_skipped_because_the_job_is_live_again():
    letter = factory.dead_letter()
    factory.job(task_id=letter.task_id)
    text = run("pg_queue_requeue", "--dead-letter", "--yes")
    assert "Requeued 0 dead letter(s)" in text
    assert "Skipped 1" in text


def test_requeue_prints_names_from_the_database_as_they_are():
    closing, bold, *_ = MARKUP_NAMES
    factory.dead_letter(queue=closing, task_name=bold)
    text = run("pg_queue_requeue", "--dead-letter", "--queue", closing)
    assert f"would requeue 1 dead letter(s) (queue {closing!r})" in text
    assert f"1  queue={closing} task={bold} reason=exhausted" in text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "say what to requeue: --dead-letter"),
        (("--dead-letter", "--since", "yesterday"), "--since 'yesterday' is not an ISO 8601"),
        (("--dead-letter", "--since", "2025-01-01T00:00"), "has no time zone"),
        (("--dead-letter", "--since-minutes", "0"), "--since-minutes must be a number > 0"),
        (("--dead-letter", "--since-minutes", "x"), "invalid float value: 'x'"),
        (
            ("--dead-letter", "--since", "2025-01-01T00:00Z", "--since-minutes", "5"),
            "not allowed with argument",
        ),
        (("--dead-letter", "--queue", ""), "--queue must not be empty"),
    ],
)
def test_requeue_refuses_bad_input(args, message):
    factory.dead_letter()
    with pytest.raises(CommandError, match=message):
        run("pg_queue_requeue", *args)
    assert not Job.objects.exists()


# --- pg_queue_cancel -------------------------------------------------------------------------


def test_cancel_reports_each_id_and_fails_when_one_is_not_found():
    handle = enqueue(
        "workers.tasks.echo",
        [1],
        on_error=ContinuationSpec(task_name="workers.tasks.on_failed", queue="default"),
    )
    running = factory.job(state="claimed", worker_id="w")
    missing = uuid.uuid4()
    out = io.StringIO()
    with pytest.raises(CommandError, match="1 of 3 task id"):
        call_command(
            "pg_queue_cancel", str(handle.task_id), str(running.task_id), str(missing),
            "--by", "ops-oncall", stdout=out,
        )  # fmt: skip
    text = out.getvalue()
    assert f"{handle.task_id}  cancelled (queued workers.tasks.echo on default; removed)" in text
    assert f"{running.task_id}  cancel requested (running" in text
    assert f"{missing}  not found" in text
    assert "1 cancelled, 1 cancel requested, 1 not found; 1 on_error callback(s) enqueued" in text
    assert TaskResult.objects.get(task_id=handle.task_id).error == "cancelled by ops-oncall"
    callback = Job.objects.get(task_name="workers.tasks.on_failed")
    assert callback.payload["args"] == [str(handle.task_id), "cancelled by ops-oncall"]
    assert Job.objects.get(pk=running.pk).cancel_requested


def test_cancel_names_the_login_by_default():
    msg = factory.job()
    assert "1 cancelled" in run("pg_queue_cancel", str(msg.task_id))
    error = TaskResult.objects.get(task_id=msg.task_id).error
    assert error.startswith("cancelled by ")
    assert error.endswith(" via pg_queue_cancel")


def test_cancel_refuses_a_bad_id_before_touching_anything():
    msg = factory.job()
    with pytest.raises(CommandError, match="'nope' is not a task id"):
        run("pg_queue_cancel", str(msg.task_id), "nope")
    assert Job.objects.filter(pk=msg.pk).exists()


def test_cancel_prints_names_from_the_database_as_they_are():
    closing, bold, *_ = MARKUP_NAMES
    msg = factory.job(queue=closing, task=bold)
    text = run("pg_queue_cancel", str(msg.task_id))
    assert f"{msg.task_id}  cancelled (queued {bold} on {closing}; removed)" in text


# --- exit codes, as a shell sees them --------------------------------------------------------


def test_commands_exit_non_zero_with_the_problem_named(worker_env):
    def shell(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=REPO_ROOT,
            env=worker_env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    bad = shell("pg_queue_cancel", "not-a-uuid")
    assert bad.returncode == 1
    assert "'not-a-uuid' is not a task id" in bad.stderr
    usage = shell("pg_queue_purge", "--queue", "q", "--state", "bogus")
    assert usage.returncode == 2
    assert "invalid choice: 'bogus'" in usage.stderr
    ok = shell("pg_queue_purge", "--queue", "q")
    assert ok.returncode == 0
    assert "Dry run: would delete 0" in ok.stdout
