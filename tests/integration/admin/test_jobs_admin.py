"""Messages in the admin: filters, search, masked payloads, and the logged operator actions."""

from __future__ import annotations

import uuid

import pytest
from django.contrib.admin.models import CHANGE, DELETION, LogEntry
from django.db import connection
from django.db.models.functions import Now
from django.test.utils import CaptureQueriesContext

from pg_queue.admin.base import ACTIONS_ON_CHANGE_FORM
from pg_queue.core.payload import ContinuationSpec
from pg_queue.models import Job, TaskResult
from pg_queue.producer import enqueue
from tests.integration.admin import factory, pages

pytestmark = pytest.mark.django_db

LIST = "/admin/pg_queue/job/"


def detail(msg: Job) -> str:
    return f"{LIST}{msg.pk}/change/"


def listed(response) -> set[int]:
    return {obj.pk for obj in response.context["cl"].result_list}


def act(client, action: str, *msgs: Job, **extra):
    data = {"action": action, "index": "0", "_selected_action": [m.pk for m in msgs], **extra}
    return client.post(LIST, data)


def confirm(client, response, url: str = LIST, **fields):
    return pages.confirm(client, response, url, **fields)


def test_list_filters_narrow_the_rows(admin_client):
    due = factory.job(queue="a", task="t.one", due_ago=5)
    delayed = factory.job(queue="a", task="t.two", delay=600)
    running = factory.job(queue="b", state="claimed", worker_id="w1", lease_left=20)
    expired = factory.job(queue="b", state="claimed", worker_id="w2", lease_left=-5)
    tenant = factory.job(queue="c", tenant_key="acme", attempts=2, max_attempts=3)
    flagged = factory.job(queue="c", state="claimed", worker_id="w1", cancel_requested=True)
    last_run = factory.job(queue="d", state="claimed", worker_id="w1", attempts=3)

    def rows(query: str) -> set[int]:
        response = admin_client.get(f"{LIST}?{query}")
        assert response.status_code == 200, query
        return listed(response)

    assert rows("") == {m.pk for m in (due, delayed, running, expired, tenant, flagged, last_run)}
    assert rows("queue_name=a") == {due.pk, delayed.pk}
    assert rows("state=due") == {due.pk, tenant.pk}
    assert rows("state=delayed") == {delayed.pk}
    assert rows("state=ready") == {due.pk, delayed.pk, tenant.pk}
    assert rows("state=claimed") == {running.pk, expired.pk, flagged.pk, last_run.pk}
    assert rows("state=lease_expired") == {expired.pk}
    assert rows("state=cancel_requested") == {flagged.pk}
    assert rows("task_name=t.two") == {delayed.pk}
    assert rows("tenant=acme") == {tenant.pk}
    assert rows("attempts=0") == {due.pk, delayed.pk}
    assert rows("attempts=retried") == {tenant.pk, last_run.pk}
    assert rows("attempts=last") == {tenant.pk, last_run.pk}  # not the claimed 1-of-3 ones
    assert rows(f"q={due.task_id}") == {due.pk}
    assert rows(f"q={delayed.pk}") == {delayed.pk}
    assert rows("q=w1") == {running.pk, flagged.pk, last_run.pk}  # a worker's in-flight jobs
    assert rows("q=not-a-thing") == set()


def test_list_marks_expired_leases_and_cancel_requests(admin_client):
    factory.job(state="claimed", worker_id="w", lease_left=-5, cancel_requested=True)
    html = admin_client.get(LIST).content.decode()
    assert "lease expired" in html
    assert "cancel requested" in html


def test_list_page_queries_do_not_grow_with_rows(admin_client):
    factory.jobs(3)
    admin_client.get(LIST)
    with CaptureQueriesContext(connection) as few:
        assert admin_client.get(LIST).status_code == 200
    factory.jobs(47, queue="other", tenant_key="t")
    with CaptureQueriesContext(connection) as many:
        response = admin_client.get(LIST)
    assert len(response.context["cl"].result_list) == 50
    assert len(many) == len(few)
    assert len(few) <= 10


def test_detail_shows_pretty_payload_with_secrets_masked_at_any_depth(admin_client):
    msg = factory.job(
        state="claimed",
        worker_id="web-1-42",
        attempts=2,
        max_attempts=5,
        last_error="ValueError: upstream said no",
        payload={
            "args": [{"PassWord": "hunter2", "user": "ann"}],
            "kwargs": {
                "api_key": "sk-live-1",
                "nested": {"deeper": [{"Authorization": "Bearer abc"}]},
                "access_token": "tok-2",
                "tokens_used": 17,
            },
        },
    )
    response = admin_client.get(detail(msg))
    assert response.status_code == 200
    html = response.content.decode()
    for secret in ("hunter2", "sk-live-1", "Bearer abc", "tok-2"):
        assert secret not in html
    assert html.count("********") == 4
    assert "&quot;tokens_used&quot;: 17" in html  # not a secret: only whole words match
    assert "&quot;user&quot;: &quot;ann&quot;" in html
    assert "2 / 5" in html  # attempts
    assert "web-1-42" in html
    assert "left" in html
    assert "ValueError: upstream said no" in html


def test_messages_are_read_only(admin_client):
    msg = factory.job()
    assert admin_client.get(f"{LIST}add/").status_code == 403
    saved = admin_client.post(detail(msg), {"priority": "9", "_save": "Save"})
    assert saved.status_code == 403
    assert admin_client.post(f"{LIST}{msg.pk}/delete/", {"post": "yes"}).status_code == 403
    msg.refresh_from_db()
    assert msg.priority == 0
    actions = dict(admin_client.get(LIST).context["action_form"].fields["action"].choices)
    assert "delete_selected" not in actions
    assert {"run_now", "cancel_jobs", "change_priority"} <= set(actions)


def _due_now(msg: Job) -> bool:
    return Job.objects.filter(pk=msg.pk, available_at__lte=Now()).exists()


def _log(msg: Job) -> list[LogEntry]:
    return list(LogEntry.objects.filter(object_id=str(msg.pk)).order_by("pk"))


def test_run_now_makes_delayed_jobs_due_and_logs_it(staff_client):
    client = staff_client("change_job")
    delayed = factory.job(delay=3600)
    due = factory.job(due_ago=60)
    running = factory.job(state="claimed", worker_id="w")
    response = act(client, "run_now", delayed, due, running)
    assert response.status_code == 302
    assert _due_now(delayed)
    # an already-due job keeps its place in the claim order; a running one is untouched
    assert Job.objects.get(pk=due.pk).available_at == due.available_at
    assert Job.objects.get(pk=running.pk).available_at == running.available_at
    (entry,) = _log(delayed)
    assert entry.user == client.user
    assert entry.action_flag == CHANGE
    assert "Run now" in entry.change_message
    assert str(delayed.task_id) in entry.object_repr
    assert not _log(due)
    assert not _log(running)
    messages = [str(m) for m in response.wsgi_request._messages]
    assert messages == [
        "1 delayed job(s) made due now; 2 left as they were (already due, or running)"
    ]


def test_cancel_asks_first_then_removes_queued_jobs_with_an_outcome_and_fires_on_error(
    staff_client,
):
    client = staff_client("change_job")
    handle = enqueue(
        "workers.tasks.echo",
        [1],
        queue="default",
        on_error=ContinuationSpec(task_name="workers.tasks.on_failed", queue="errors", args=["x"]),
    )
    queued = Job.objects.get(task_id=handle.task_id)
    running = factory.job(state="claimed", worker_id="w")

    asked = act(client, "cancel_jobs", queued, running)
    assert asked.status_code == 200
    assert b"Cancel 2 job(s)?" in asked.content
    assert b"1 queued" in asked.content
    assert b"1 running" in asked.content
    assert Job.objects.filter(pk__in=[queued.pk, running.pk]).count() == 2  # not yet

    done = confirm(client, asked)
    assert done.status_code == 302
    assert not Job.objects.filter(pk=queued.pk).exists()
    outcome = TaskResult.objects.get(task_id=handle.task_id)
    assert outcome.status == "cancelled"
    assert outcome.error == f"cancelled by {client.user.username}"
    callback = Job.objects.get(task_name="workers.tasks.on_failed")
    assert callback.queue_name == "errors"
    assert callback.payload["args"] == [
        str(handle.task_id),
        f"cancelled by {client.user.username}",
        "x",
    ]
    running.refresh_from_db()
    assert running.cancel_requested
    assert running.state == "claimed"
    assert handle.status() == "cancelled"

    (removed,) = _log(queued)
    assert removed.action_flag == DELETION
    assert removed.user == client.user
    assert "Cancelled by" in removed.change_message
    (flagged,) = _log(running)
    assert flagged.action_flag == CHANGE
    assert "Cancel requested" in flagged.change_message


@pytest.mark.skipif(
    not ACTIONS_ON_CHANGE_FORM, reason="Django < 6.1 runs admin actions from the list only"
)
def test_cancel_from_the_detail_page_returns_to_the_list(staff_client):
    client = staff_client("change_job")
    msg = factory.job()
    page = client.get(detail(msg))
    assert page.status_code == 200
    assert b'name="CHANGE_FORM-action"' in page.content
    asked = client.post(
        detail(msg), {"CHANGE_FORM-action": "cancel_jobs", "_selected_action": str(msg.pk)}
    )
    done = confirm(client, asked, url=detail(msg))
    assert done.status_code == 302
    assert done["Location"] == LIST
    assert not Job.objects.filter(pk=msg.pk).exists()
    assert TaskResult.objects.get(task_id=msg.task_id).status == "cancelled"


def test_change_priority_validates_then_sets_it_and_logs_it(staff_client):
    client = staff_client("change_job")
    a, b = factory.job(), factory.job(priority=3)
    form = act(client, "change_priority", a, b)
    assert form.status_code == 200
    assert b'name="priority"' in form.content

    refused = confirm(client, form, priority="40000")
    assert refused.status_code == 200
    assert b"Ensure this value is less than or equal to 32767" in refused.content
    refused = confirm(client, form, priority="high")
    assert refused.status_code == 200
    assert b"Enter a whole number" in refused.content
    assert set(Job.objects.values_list("priority", flat=True)) == {0, 3}

    done = confirm(client, form, priority="3")
    assert done.status_code == 302
    assert set(Job.objects.values_list("priority", flat=True)) == {3}
    (entry,) = _log(a)  # b already had priority 3: nothing changed, nothing logged
    assert entry.change_message == "Priority set to 3"
    assert not _log(b)


def test_bulk_cancel_of_thousands_is_set_based(admin_client):
    def cancel_all() -> tuple[int, int]:
        first = Job.objects.order_by("pk").first()
        asked = admin_client.post(
            LIST,
            {
                "action": "cancel_jobs",
                "index": "0",
                "select_across": "1",
                "_selected_action": [first.pk],
            },
        )
        with CaptureQueriesContext(connection) as queries:
            confirm(admin_client, asked)
        return len(queries), len(asked.context["echo"])

    factory.jobs(20)
    few, _ = cancel_all()
    assert TaskResult.objects.filter(status="cancelled").count() == 20
    factory.jobs(3000)
    many, _ = cancel_all()
    assert not Job.objects.exists()
    assert TaskResult.objects.filter(status="cancelled").count() == 3020
    assert LogEntry.objects.filter(action_flag=DELETION).count() == 3020
    assert many == few  # one DELETE, one LogEntry batch, whatever the count
    assert few <= 20


def test_actions_need_the_change_permission(staff_client):
    viewer = staff_client("view_job")
    msg = factory.job(delay=600)
    page = viewer.get(LIST)
    assert page.status_code == 200
    assert page.context["action_form"] is None  # no action offered at all
    refused = act(viewer, "run_now", msg)
    assert refused.status_code in (200, 302)
    assert not _due_now(msg)
    assert not LogEntry.objects.exists()
    assert viewer.get(detail(msg)).status_code == 200


def test_message_pages_are_denied_without_staff_or_permission(client, staff_client):
    msg = factory.job()
    for url in (LIST, detail(msg)):
        response = client.get(url)
        assert response.status_code == 302
        assert "/admin/login/" in response["Location"]
        response = staff_client("view_job", staff=False).get(url)
        assert response.status_code == 302
        assert "/admin/login/" in response["Location"]
        assert staff_client("view_deadletter").get(url).status_code == 403


def test_cancel_by_task_id_of_an_unknown_job_reports_not_found():
    from pg_queue.ops.operations import jobs_cancel

    report = jobs_cancel(task_ids=[uuid.uuid4()], actor="ops")
    assert report.not_found
    assert not report.cancelled
    assert not report.requested


def test_tenant_filter_keeps_the_other_filters_and_the_search(admin_client):
    msg = factory.job(queue="a", tenant_key="acme")
    html = admin_client.get(f"{LIST}?queue_name=a&q={msg.task_id}&o=2").content.decode()
    assert '<input type="hidden" name="queue_name" value="a">' in html
    assert f'<input type="hidden" name="q" value="{msg.task_id}">' in html
    assert '<input type="hidden" name="o" value="2">' in html


@pytest.mark.parametrize(
    "url",
    [LIST, "/admin/pg_queue/deadletter/", "/admin/pg_queue/taskresult/", "/admin/pg_queue/worker/"],
)
def test_list_pages_render_with_facet_counts(admin_client, url):
    factory.job(tenant_key="acme")
    factory.dead_letter()
    factory.result()
    factory.worker("w", queues=["default"])
    assert admin_client.get(f"{url}?_facets=True").status_code == 200
