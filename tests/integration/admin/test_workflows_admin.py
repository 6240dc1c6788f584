"""Groups and chains (read-only, with their children) and resource locks (force release) in the
admin."""

from __future__ import annotations

import logging
import uuid

import pytest
from django.contrib.admin.models import DELETION, LogEntry
from django.db import connection
from django.test.utils import CaptureQueriesContext

from pg_queue.admin import workflows
from pg_queue.admin.base import ACTIONS_ON_CHANGE_FORM
from pg_queue.models import JobGroup, ResourceLock, TaskResult
from pg_queue.workflows.groups import chain, group
from tests.integration.admin import factory, pages
from workers import tasks

pytestmark = pytest.mark.django_db

GROUPS = "/admin/pg_queue/jobgroup/"
LOCKS = "/admin/pg_queue/resourcelock/"


def group_page(group_id: uuid.UUID) -> str:
    return f"{GROUPS}{group_id}/change/"


def lock_page(key: str) -> str:
    from django.contrib.admin.utils import quote

    return f"{LOCKS}{quote(key)}/change/"


def act(client, action: str, *keys: str, url: str = LOCKS):
    return client.post(url, {"action": action, "index": "0", "_selected_action": list(keys)})


def confirm(client, response, url: str = LOCKS):
    return pages.confirm(client, response, url)


# --- groups and chains -------------------------------------------------------------------------


def test_groups_list_shows_kind_status_progress_and_failures(admin_client):
    running = factory.job_group(total=3, finished=2, failed=1)
    done = factory.job_group(kind="chain", total=4, finished=4)
    response = admin_client.get(GROUPS)
    assert response.status_code == 200
    assert {g.pk for g in response.context["cl"].result_list} == {running.pk, done.pk}
    html = response.content.decode()
    assert "2 / 3" in html
    assert "4 / 4" in html
    assert '<span class="pgq-badge pgq-running">running</span>' in html
    assert '<span class="pgq-badge pgq-ok">succeeded</span>' in html
    filtered = admin_client.get(f"{GROUPS}?kind__exact=chain")
    assert [g.pk for g in filtered.context["cl"].result_list] == [done.pk]
    found = admin_client.get(GROUPS, {"q": str(running.pk)})
    assert [g.pk for g in found.context["cl"].result_list] == [running.pk]
    assert not admin_client.get(GROUPS, {"q": "not-a-uuid"}).context["cl"].result_list


def test_group_page_lists_every_child_by_its_place_with_its_state_and_row(admin_client):
    handle = group(
        [tasks.echo.job(i) for i in range(4)], on_success=tasks.on_done.job(label="x")
    ).enqueue()
    first, second, third, _fourth = handle.task_ids
    # child 0 succeeded, child 1 failed for good (dead letter and failed outcome), child 2 runs
    from pg_queue.models import Job

    Job.objects.filter(task_id__in=[first, second]).delete()
    factory.result(task_id=first, group_id=handle.group_id, group_index=0)
    factory.result(
        task_id=second, status="failed", group_id=handle.group_id, group_index=1, error="E: boom"
    )
    letter = factory.dead_letter(task_id=second, group_id=handle.group_id, group_index=1)
    Job.objects.filter(task_id=third).update(state="claimed", worker_id="w", vt=factory.later(30))
    JobGroup.objects.filter(pk=handle.group_id).update(finished=2, failed=1)

    response = admin_client.get(group_page(handle.group_id))
    assert response.status_code == 200
    children = response.context["children"]
    assert [(c.index, c.state) for c in children] == [
        (0, "succeeded"),
        (1, "failed"),
        (2, "running"),
        (3, "queued"),
    ]
    assert [c.task_id for c in children] == [str(t) for t in handle.task_ids]
    html = response.content.decode()
    assert "Children (2 of 4 finished, 1 failed)" in html
    assert f'href="/admin/pg_queue/taskresult/{first}/change/"' in html
    assert f'href="/admin/pg_queue/deadletter/{letter.pk}/change/">dead letter</a>' in html
    running = Job.objects.get(task_id=third)
    assert f'href="/admin/pg_queue/job/{running.pk}/change/"' in html
    assert "E: boom" in html
    assert "workers.tasks.on_done" in html  # the on_success callback
    assert "Chain steps" not in html


def test_chain_page_lists_steps_not_queued_yet_and_masks_secret_arguments(admin_client):
    handle = chain(
        [tasks.echo.job(1), tasks.add.job(2), tasks.on_done.job(label="done", token="t-123")],
    ).enqueue()
    response = admin_client.get(group_page(handle.chain_id))
    assert response.status_code == 200
    assert [(c.index, c.state) for c in response.context["children"]] == [
        (0, "queued"),
        (1, "not queued yet"),
        (2, "not queued yet"),
    ]
    html = response.content.decode()
    assert "Steps (0 of 3 finished, 0 failed)" in html
    assert "Chain steps" in html
    assert "workers.tasks.add" in html
    assert "t-123" not in html
    assert "********" in html


def test_group_page_shows_the_first_children_and_counts_the_rest(admin_client, monkeypatch):
    monkeypatch.setattr(workflows, "CHILDREN_SHOWN", 3)
    handle = group([tasks.echo.job(i) for i in range(5)]).enqueue()
    response = admin_client.get(group_page(handle.group_id))
    assert [c.index for c in response.context["children"]] == [0, 1, 2]
    assert "The first 3 by their place; 2 more not listed." in response.content.decode()


def test_group_page_queries_do_not_grow_with_children(admin_client):
    def page_queries(n: int) -> int:
        handle = group([tasks.echo.job(i) for i in range(n)]).enqueue()
        url = group_page(handle.group_id)
        admin_client.get(url)
        with CaptureQueriesContext(connection) as queries:
            response = admin_client.get(url)
        assert len(response.context["children"]) == n
        return len(queries)

    assert page_queries(2) == page_queries(30)


def test_group_page_says_when_children_outcomes_expired(admin_client):
    finished = factory.job_group(total=2, finished=2)
    response = admin_client.get(group_page(finished.pk))
    assert response.context["children"] == []
    html = response.content.decode()
    assert "No child has a row left (their outcomes expired)." in html
    assert "2 of 2 have no row left" in html


def test_groups_are_read_only(admin_client):
    row = factory.job_group(total=3, finished=1)
    assert admin_client.get(f"{GROUPS}add/").status_code == 403
    saved = admin_client.post(group_page(row.pk), {"finished": "3", "_save": "Save"})
    assert saved.status_code == 403
    assert admin_client.post(f"{GROUPS}{row.pk}/delete/", {"post": "yes"}).status_code == 403
    row.refresh_from_db()
    assert (row.finished, row.status) == (1, "running")
    assert admin_client.get(GROUPS).context["action_form"] is None


def test_group_list_queries_do_not_grow_with_rows(admin_client):
    def make(n: int) -> None:
        for _ in range(n):
            factory.job_group(total=2, finished=1)

    assert pages.same_queries_for_3_and_50(admin_client, GROUPS, make) <= 8


def test_group_pages_need_the_view_permission(staff_client):
    row = factory.job_group()
    for url in (GROUPS, group_page(row.pk)):
        assert staff_client("view_job").get(url).status_code == 403
        assert staff_client("view_jobgroup").get(url).status_code == 200


# --- resource locks ----------------------------------------------------------------------------


def test_lock_list_shows_holder_task_age_expiry_and_the_expired_flag(admin_client):
    task_id = uuid.uuid4()
    factory.lock("rag:/data/a", held_for=125, task_id=task_id)
    factory.lock("rag:/data/b", holder_kind="cli", holder_id="ops-1", held_for=5, expires_in=300)
    factory.lock("rag:/data/c", holder_kind="web", holder_id="web-9", held_for=900, expires_in=-60)
    response = admin_client.get(LOCKS)
    assert response.status_code == 200
    # oldest first
    assert [x.pk for x in response.context["cl"].result_list] == [
        "rag:/data/c",
        "rag:/data/a",
        "rag:/data/b",
    ]
    html = response.content.decode()
    assert f'<a href="/admin/pg_queue/job/?q={task_id}">{task_id}</a>' in html
    assert "2m 0" in html  # the job's lock's age
    assert "with its job" in html
    assert "in 4m 5" in html or "in 5m 00s" in html
    assert '<span class="pgq-badge pgq-stuck">expired 1m 0' in html
    assert html.count('alt="True"') == 1  # the expired flag, on the expired lock only
    assert "ops-1" in html
    filtered = admin_client.get(f"{LOCKS}?holder_kind__exact=cli")
    assert [x.pk for x in filtered.context["cl"].result_list] == ["rag:/data/b"]
    found = admin_client.get(LOCKS, {"q": "data/a"})
    assert [x.pk for x in found.context["cl"].result_list] == ["rag:/data/a"]


def test_lock_page_shows_the_holder_with_secret_details_masked(admin_client):
    factory.lock(
        "rag:/data/a",
        holder_kind="cli",
        holder_id="ops-1",
        expires_in=60,
        holder_meta={"user": "alice", "api_key": "k-999"},
    )
    response = admin_client.get(lock_page("rag:/data/a"))
    assert response.status_code == 200
    html = response.content.decode()
    assert "ops-1" in html
    assert "alice" in html
    assert "k-999" not in html


def test_lock_list_queries_do_not_grow_with_rows(admin_client):
    made = iter(range(1000))

    def make(n: int) -> None:
        for _ in range(n):
            factory.lock(f"key-{next(made)}")

    assert pages.same_queries_for_3_and_50(admin_client, LOCKS, make) <= 8


@pytest.mark.django_db(transaction=True)
def test_force_release_asks_first_then_releases_logs_each_key_and_warns(staff_client, caplog):
    client = staff_client("view_resourcelock", "delete_resourcelock")
    task_id = uuid.uuid4()
    factory.lock("rag:/data/a", task_id=task_id)
    factory.lock("rag:/data/b,c", holder_kind="cli", holder_id="ops-1", expires_in=60)
    factory.lock("rag:/data/kept")
    asked = act(client, "force_release", "rag:/data/a", "rag:/data/b,c")
    assert asked.status_code == 200
    page = asked.content.decode()
    assert "Force release 2 lock(s), whoever holds them?" in page
    assert "rag:/data/a held by worker web-1-4242-a1b2" in page
    assert "two holders would then run together" in page.lower()
    assert ResourceLock.objects.count() == 3  # nothing released before the answer

    caplog.set_level(logging.WARNING, logger="pg_queue.locks")
    done = confirm(client, asked)
    assert done.status_code == 302
    assert list(ResourceLock.objects.values_list("pk", flat=True)) == ["rag:/data/kept"]
    entries = {e.object_id: e for e in LogEntry.objects.all()}
    assert set(entries) == {"rag:/data/a", "rag:/data/b,c"}
    actor = f"admin:{client.user.username}"
    for entry in entries.values():
        assert entry.user == client.user
        assert entry.action_flag == DELETION
        assert entry.change_message == f"Force-released by {actor}"
    assert entries["rag:/data/b,c"].object_repr == "rag:/data/b,c held by cli ops-1"
    warnings = sorted(r.getMessage() for r in caplog.records if r.name == "pg_queue.locks")
    assert len(warnings) == 2
    assert f"key=rag:/data/a by={actor} previous_holder_kind=worker" in warnings[0]
    assert f"task_id={task_id}" in warnings[0]
    messages = [str(m) for m in done.wsgi_request._messages]
    assert messages == ["2 lock(s) force-released"]


@pytest.mark.django_db(transaction=True)
def test_force_release_of_a_lock_released_meanwhile_counts_it_and_logs_nothing(admin_client):
    factory.lock("rag:/data/a")
    asked = act(admin_client, "force_release", "rag:/data/a")
    factory.lock("rag:/data/b")
    ResourceLock.objects.filter(pk="rag:/data/a").delete()  # its job finished meanwhile
    done = confirm(admin_client, asked)
    assert done.status_code == 302
    assert ResourceLock.objects.filter(pk="rag:/data/b").exists()  # not in the confirmed set
    assert not LogEntry.objects.exists()


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(
    not ACTIONS_ON_CHANGE_FORM, reason="Django < 6.1 runs admin actions from the list only"
)
def test_force_release_from_the_lock_page_returns_to_the_list(staff_client):
    client = staff_client("view_resourcelock", "delete_resourcelock")
    factory.lock("rag:/data/a")
    url = lock_page("rag:/data/a")
    page = client.get(url)
    assert page.status_code == 200
    assert b'name="CHANGE_FORM-action"' in page.content
    assert b"/delete/" not in page.content  # no delete page: only the logged release
    asked = client.post(
        url, {"CHANGE_FORM-action": "force_release", "_selected_action": "rag:/data/a"}
    )
    done = confirm(client, asked, url=url)
    assert done.status_code == 302
    assert done["Location"] == LOCKS
    assert not ResourceLock.objects.exists()
    (entry,) = LogEntry.objects.all()
    assert entry.object_id == "rag:/data/a"


def test_force_release_needs_the_delete_permission(staff_client):
    viewer = staff_client("view_resourcelock", "change_resourcelock")
    factory.lock("rag:/data/a")
    page = viewer.get(LOCKS)
    assert page.status_code == 200
    assert page.context["action_form"] is None  # no action offered at all
    refused = act(viewer, "force_release", "rag:/data/a")
    assert refused.status_code in (200, 302)
    forged = viewer.post(
        LOCKS,
        {"action": "force_release", "_selected_action": "rag:/data/a", "pgq_confirm": "yes"},
    )
    assert forged.status_code in (200, 302)
    assert ResourceLock.objects.filter(pk="rag:/data/a").exists()
    assert not LogEntry.objects.exists()
    assert viewer.get(lock_page("rag:/data/a")).status_code == 200
    assert staff_client("view_job").get(LOCKS).status_code == 403


def test_locks_are_never_added_edited_or_deleted_as_rows(admin_client):
    factory.lock("rag:/data/a", holder_id="w-1")
    assert admin_client.get(f"{LOCKS}add/").status_code == 403
    url = lock_page("rag:/data/a")
    assert admin_client.post(url, {"holder_id": "me", "_save": "Save"}).status_code == 403
    assert (
        admin_client.post(url.replace("/change/", "/delete/"), {"post": "yes"}).status_code == 403
    )
    assert ResourceLock.objects.get(pk="rag:/data/a").holder_id == "w-1"
    actions = dict(admin_client.get(LOCKS).context["action_form"].fields["action"].choices)
    assert "delete_selected" not in actions
    assert "force_release" in actions


def test_a_selection_with_a_nul_is_a_clear_400_and_releases_nothing(admin_client):
    factory.lock("rag:/data/a")
    response = act(admin_client, "force_release", "rag:/data/a", "a\x00b")
    assert response.status_code == 400
    assert b"NUL" in response.content
    assert ResourceLock.objects.exists()


def test_too_many_locks_at_once_are_refused(admin_client, monkeypatch):
    monkeypatch.setattr(workflows, "MAX_FORCE_RELEASE", 2)
    for key in ("a", "b", "c"):
        factory.lock(key)
    response = act(admin_client, "force_release", "a", "b", "c")
    assert response.status_code == 302
    messages = [str(m) for m in response.wsgi_request._messages]
    assert messages[0].startswith("3 locks selected; at most 2 per force release")
    assert ResourceLock.objects.count() == 3


def test_app_index_lists_groups_and_locks(admin_client):
    page = admin_client.get("/admin/pg_queue/").content.decode()
    assert GROUPS in page
    assert LOCKS in page
    assert TaskResult._meta.app_label == "pg_queue"
