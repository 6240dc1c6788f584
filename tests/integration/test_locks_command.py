"""``pg_queue_locks`` (list, refuse a release without --force, force-release) and the locks and
running groups sections of ``pg_queue_status``.

Transactional: ``locks()`` and ``force_release()`` read on connections of their own, which see
committed rows only.
"""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
import uuid

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext

from pg_queue.management.commands.pg_queue_locks import REFUSED
from pg_queue.models import JobGroup, ResourceLock
from pg_queue.ops.workflow_overview import SHOWN, workflow_overview
from pg_queue.workflows.groups import chain, group
from pg_queue.workflows.locks import resource_lock
from tests.harness import REPO_ROOT
from tests.integration.admin import factory
from workers import tasks

pytestmark = pytest.mark.django_db(transaction=True)

#: Names rich would read as markup (see tests/integration/admin/test_commands.py).
MARKUP_KEYS = ("[/]", "[bold]x[/bold]", ":smile:")


def run(*args: str) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def rows(text: str) -> dict[str, list[str]]:
    """Table lines by their first cell."""
    return {line.split()[0]: line.split() for line in text.splitlines() if line.split()}


def job_lock(key: str, *, held_for: float, task_id: uuid.UUID | None = None) -> ResourceLock:
    """A job's lock (holder_kind 'worker', no expiry), taken ``held_for`` seconds ago."""
    return factory.lock(key, held_for=held_for, task_id=task_id)


def cli_lock(key: str, *, held_for: float, expires_in: float) -> ResourceLock:
    """A lock of code outside the worker, expiring ``expires_in`` seconds from now (negative:
    expired)."""
    return factory.lock(
        key,
        holder_kind="cli",
        holder_id="ops-host-77-c0ffee",
        held_for=held_for,
        expires_in=expires_in,
    )


# --- pg_queue_locks: the list ------------------------------------------------------------------


def test_list_shows_each_held_key_with_holder_task_age_and_expiry():
    task_id = uuid.uuid4()
    job_lock("rag:/data/a", held_for=125, task_id=task_id)
    cli_lock("rag:/data/stale", held_for=700, expires_in=-100)
    with resource_lock("rag:/data/b", holder_kind="web", ttl=600) as holder_id:
        text = run("pg_queue_locks")
    assert "resource locks (3 held)" in text
    by_key = rows(text)
    a = by_key["rag:/data/a"]
    assert a[1:4] == ["worker", "web-1-4242-a1b2", str(task_id)]
    assert " ".join(a[4:]).startswith("2m 0")  # age
    assert a[-3:] == ["with", "its", "job"]
    b = by_key["rag:/data/b"]
    assert b[1:4] == ["web", holder_id, "-"]
    assert b[4] in ("0s", "1s", "2s")
    assert " ".join(b[5:]).startswith("in 9m 5")
    stale = by_key["rag:/data/stale"]
    assert " ".join(stale[4:]).startswith("11m 4")
    assert " ".join(stale[6:]) in (
        "expired 1m 40s ago (free to take)",
        "expired 1m 41s ago (free to take)",
    )
    # oldest first
    assert [line.split()[0] for line in text.splitlines() if line.startswith("  rag:")] == [
        "rag:/data/stale",
        "rag:/data/a",
        "rag:/data/b",
    ]


def test_list_says_when_no_lock_is_held():
    assert run("pg_queue_locks").strip() == "No resource lock is held."
    assert json.loads(run("pg_queue_locks", "--json")) == []


def test_list_prints_keys_and_holders_as_plain_text():
    for key in MARKUP_KEYS:
        job_lock(key, held_for=5)
    ResourceLock.objects.filter(resource_key=":smile:").update(holder_id="[red")
    text = run("pg_queue_locks")
    by_key = rows(text)
    assert set(MARKUP_KEYS) <= set(by_key), text
    assert by_key[":smile:"][2] == "[red"
    assert "\N{SMILING FACE WITH OPEN MOUTH AND SMILING EYES}" not in text


def test_json_lists_every_lock_with_its_expiry():
    task_id = uuid.uuid4()
    job_lock("k-job", held_for=30, task_id=task_id)
    cli_lock("k-cli", held_for=10, expires_in=50)
    data = {d["resource_key"]: d for d in json.loads(run("pg_queue_locks", "--json"))}
    assert data["k-job"]["holder_kind"] == "worker"
    assert data["k-job"]["task_id"] == str(task_id)
    assert data["k-job"]["expires_at"] is None
    assert data["k-job"]["expires_in_seconds"] is None
    assert data["k-job"]["age_seconds"] >= 30
    assert data["k-cli"]["task_id"] is None
    assert 45 < data["k-cli"]["expires_in_seconds"] <= 50
    assert data["k-cli"]["expired"] is False


# --- pg_queue_locks --release ------------------------------------------------------------------


def test_release_without_force_exits_2_says_why_and_keeps_the_lock():
    job_lock("rag:/data/a", held_for=60)
    with pytest.raises(CommandError) as refused:
        run("pg_queue_locks", "--release", "rag:/data/a")
    assert refused.value.returncode == REFUSED == 2
    message = str(refused.value)
    assert "without --force" in message
    assert "two holders would run together" in message
    assert "held by worker web-1-4242-a1b2" in message
    assert "for 1m 0" in message
    assert "expires with its job" in message
    assert ResourceLock.objects.filter(pk="rag:/data/a").exists()


def test_release_without_force_of_an_expired_lock_says_it_expired():
    cli_lock("k", held_for=100, expires_in=-40)
    with pytest.raises(
        CommandError, match=r"held by cli ops-host-77-c0ffee for 1m 4\ds, expired 4"
    ):
        run("pg_queue_locks", "--release", "k")
    assert ResourceLock.objects.filter(pk="k").exists()


def test_release_with_force_removes_the_lock_names_the_holder_and_logs_a_warning(caplog):
    task_id = uuid.uuid4()
    job_lock("rag:/data/a", held_for=60, task_id=task_id)
    caplog.set_level(logging.WARNING, logger="pg_queue.locks")
    text = run("pg_queue_locks", "--release", "rag:/data/a", "--force", "--by", "alice")
    assert not ResourceLock.objects.filter(pk="rag:/data/a").exists()
    assert text.startswith(
        f"released rag:/data/a (held by worker web-1-4242-a1b2 (task {task_id}) since "
    )
    assert text.rstrip().endswith("by cli:alice")
    (record,) = [r for r in caplog.records if r.name == "pg_queue.locks"]
    assert record.levelno == logging.WARNING
    logged = record.getMessage()
    assert "force-released key=rag:/data/a by=cli:alice" in logged
    assert "previous_holder_kind=worker previous_holder_id=web-1-4242-a1b2" in logged
    assert f"task_id={task_id}" in logged


def test_release_of_a_key_nobody_holds_exits_1():
    with pytest.raises(CommandError, match="nobody holds rag:/free") as nobody:
        run("pg_queue_locks", "--release", "rag:/free", "--force")
    assert nobody.value.returncode == 1
    data_out = io.StringIO()
    with pytest.raises(CommandError):
        call_command(
            "pg_queue_locks", "--release", "rag:/free", "--force", "--json", stdout=data_out
        )
    assert json.loads(data_out.getvalue())["released"] is False


def test_release_json_reports_the_previous_holder():
    cli_lock("k", held_for=5, expires_in=60)
    data = json.loads(run("pg_queue_locks", "--release", "k", "--force", "--json", "--by", "bob"))
    assert data["released"] is True
    assert data["by"] == "cli:bob"
    assert data["previous_holder"]["holder_kind"] == "cli"
    assert data["previous_holder"]["holder_id"] == "ops-host-77-c0ffee"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--force",), "--force needs --release KEY"),
        (("--release", ""), "--release takes a resource key"),
        (("--release", "a\x00b", "--force"), "no NUL"),
        (("--release", "k" * 301, "--force"), "1 to 300 characters"),
    ],
)
def test_bad_flags_are_refused_before_anything_changes(args, message):
    job_lock("k", held_for=1)
    with pytest.raises(CommandError, match=message):
        run("pg_queue_locks", *args)
    assert ResourceLock.objects.filter(pk="k").exists()


def test_exit_statuses_through_manage_py(worker_env):
    job_lock("rag:/data/a", held_for=60)

    def shell(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "manage.py", "pg_queue_locks", *args],
            cwd=REPO_ROOT,
            env=worker_env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    refused = shell("--release", "rag:/data/a")
    assert refused.returncode == 2, refused.stderr
    assert "without --force" in refused.stderr
    assert ResourceLock.objects.filter(pk="rag:/data/a").exists()
    released = shell("--release", "rag:/data/a", "--force")
    assert released.returncode == 0, released.stderr
    assert released.stdout.startswith("released rag:/data/a")
    assert not ResourceLock.objects.exists()
    assert shell("--release", "rag:/data/a", "--force").returncode == 1


# --- pg_queue_status: held locks and running groups -------------------------------------------


def test_status_shows_held_locks_and_running_groups_and_chains():
    task_id = uuid.uuid4()
    job_lock("rag:/data/a", held_for=65, task_id=task_id)
    running = group([tasks.echo.job(i) for i in range(3)]).enqueue()
    JobGroup.objects.filter(pk=running.group_id).update(finished=2, failed=1)
    steps = chain([tasks.echo.job(1), tasks.add.job(2)]).enqueue()
    done = group([]).enqueue()  # an empty group ends at once: not running
    text = run("pg_queue_status")
    assert "resource locks (1 held)" in text
    lock = rows(text)["rag:/data/a"]
    assert lock[1:4] == ["worker", "web-1-4242-a1b2", str(task_id)]
    assert " ".join(lock[4:6]) in ("1m 05s", "1m 06s")
    assert "running groups and chains (2)" in text
    by_id = rows(text)
    assert by_id[str(running.group_id)][1:4] == ["group", "2/3", "1"]
    assert by_id[str(steps.chain_id)][1:4] == ["chain", "0/2", "0"]
    assert str(done.group_id) not in text
    data = json.loads(run("pg_queue_status", "--json"))
    assert data["locks"]["total"] == 1
    assert data["locks"]["shown"][0]["resource_key"] == "rag:/data/a"
    assert data["locks"]["shown"][0]["expires_in_seconds"] is None
    assert data["running_groups"]["total"] == 2
    assert {g["group_id"] for g in data["running_groups"]["shown"]} == {
        str(running.group_id),
        str(steps.chain_id),
    }


def test_status_says_when_no_lock_is_held_and_nothing_runs():
    text = run("pg_queue_status")
    assert "No resource lock is held." in text
    assert "No group or chain is running." in text


def test_status_sections_are_bounded_and_one_statement_each():
    for i in range(SHOWN + 5):
        job_lock(f"key-{i:03d}", held_for=100 - i)
    for _ in range(SHOWN + 3):
        group([tasks.echo.job(1)]).enqueue()
    with CaptureQueriesContext(connection) as queries:
        flows = workflow_overview()
    assert len(queries) == 2
    assert (len(flows.locks), flows.locks_total) == (SHOWN, SHOWN + 5)
    assert flows.locks[0].resource_key == "key-000"  # oldest first
    assert (len(flows.groups), flows.groups_total) == (SHOWN, SHOWN + 3)
    text = run("pg_queue_status")
    assert "... and 5 more held lock(s)" in text
    assert "... and 3 more running" in text
    assert "key-019" in text
    assert "key-020" not in text
