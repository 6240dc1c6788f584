"""Dead letters (requeue, discard), results and workers in the admin."""

from __future__ import annotations

import pytest
from django.contrib.admin.models import DELETION, LogEntry

from pg_queue.admin.base import ACTIONS_ON_CHANGE_FORM
from pg_queue.models import DeadLetter, Job, TaskResult
from tests.integration.admin import factory
from tests.integration.admin.pages import confirm, same_queries_for_3_and_50

pytestmark = pytest.mark.django_db

LETTERS = "/admin/pg_queue/deadletter/"
RESULTS = "/admin/pg_queue/taskresult/"
WORKERS = "/admin/pg_queue/worker/"


def _post_action(client, url: str, action: str, ids: list[int], **extra):
    return client.post(url, {"action": action, "index": "0", "_selected_action": ids, **extra})


# --- dead letters ----------------------------------------------------------------------------


def test_dead_letter_detail_shows_traceback_and_masks_payload_secrets(admin_client):
    letter = factory.dead_letter(payload={"args": [], "kwargs": {"Token": "t-123", "n": 1}})
    html = admin_client.get(f"{LETTERS}{letter.pk}/change/").content.decode()
    assert "raise RuntimeError(reason)" in html
    assert "t-123" not in html
    assert "********" in html
    assert "RuntimeError: boom" in html


def test_requeue_puts_letters_back_with_fresh_attempts_and_logs_it(staff_client):
    client = staff_client("change_deadletter", "view_deadletter")
    letter = factory.dead_letter(queue="email", attempts=3, max_attempts=3, priority=4)
    factory.result(task_id=letter.task_id, status="failed")
    response = _post_action(client, LETTERS, "requeue", [letter.pk])
    assert response.status_code == 302
    assert not DeadLetter.objects.exists()
    msg = Job.objects.get(task_id=letter.task_id)
    assert (msg.queue_name, msg.attempts, msg.max_attempts, msg.priority) == ("email", 0, 3, 4)
    assert not TaskResult.objects.filter(task_id=letter.task_id).exists()  # next one may win
    (entry,) = LogEntry.objects.filter(object_id=str(letter.pk))
    assert entry.user == client.user
    assert "Requeued" in entry.change_message


def test_requeue_skips_a_letter_whose_job_is_live_again(admin_client):
    letter = factory.dead_letter()
    factory.job(task_id=letter.task_id)
    response = _post_action(admin_client, LETTERS, "requeue", [letter.pk])
    assert response.status_code == 302
    assert DeadLetter.objects.filter(pk=letter.pk).exists()
    assert not LogEntry.objects.exists()
    messages = [str(m) for m in response.wsgi_request._messages]
    assert "1 skipped" in messages[0]


def test_discard_asks_first_then_deletes_and_keeps_outcomes(staff_client):
    client = staff_client("delete_deadletter", "view_deadletter")
    a, b, keep = factory.dead_letter(), factory.dead_letter(), factory.dead_letter()
    factory.result(task_id=a.task_id, status="failed")
    asked = _post_action(client, LETTERS, "discard", [a.pk, b.pk])
    assert b"Delete 2 dead letter(s) for good?" in asked.content
    assert DeadLetter.objects.count() == 3
    done = confirm(client, asked, LETTERS)
    assert done.status_code == 302
    assert list(DeadLetter.objects.values_list("pk", flat=True)) == [keep.pk]
    assert TaskResult.objects.filter(task_id=a.task_id, status="failed").exists()
    entries = LogEntry.objects.filter(user=client.user, action_flag=DELETION)
    assert sorted(int(e.object_id) for e in entries) == [a.pk, b.pk]
    assert {e.change_message for e in entries} == {"Discarded"}


def test_dead_letter_actions_follow_permissions(staff_client):
    letter = factory.dead_letter()

    def offered(client) -> set[str]:
        form = client.get(LETTERS).context["action_form"]
        return set() if form is None else {c for c, _ in form.fields["action"].choices if c}

    assert offered(staff_client("view_deadletter")) == set()
    assert offered(staff_client("change_deadletter")) == {"requeue"}
    assert offered(staff_client("delete_deadletter", "view_deadletter")) == {"discard"}
    changer = staff_client("change_deadletter")
    _post_action(changer, LETTERS, "discard", [letter.pk], pgq_confirm="yes")
    assert DeadLetter.objects.filter(pk=letter.pk).exists()
    assert staff_client("view_job").get(LETTERS).status_code == 403


def test_dead_letter_list_queries_do_not_grow_with_rows(admin_client):
    count = same_queries_for_3_and_50(
        admin_client, LETTERS, lambda n: [factory.dead_letter() for _ in range(n)]
    )
    assert count <= 10


# --- results ---------------------------------------------------------------------------------


def test_results_are_read_only_and_mask_secrets(admin_client):
    outcome = factory.result(result={"session": {"secret": "s3cr3t"}, "n": 2})
    page = admin_client.get(f"{RESULTS}{outcome.pk}/change/")
    assert page.status_code == 200
    assert b"s3cr3t" not in page.content
    assert b"********" in page.content
    assert admin_client.get(f"{RESULTS}add/").status_code == 403
    assert admin_client.post(f"{RESULTS}{outcome.pk}/delete/", {"post": "yes"}).status_code == 403
    saved = admin_client.post(f"{RESULTS}{outcome.pk}/change/", {"status": "failed"})
    assert saved.status_code == 403
    assert TaskResult.objects.get(pk=outcome.pk).status == "succeeded"
    assert admin_client.get(RESULTS).context["action_form"] is None


def test_results_filter_by_status_queue_and_task(admin_client):
    ok = factory.result(queue="a")
    bad = factory.result(queue="b", status="failed", task_name="t.bad")

    def rows(query: str) -> set:
        return {r.pk for r in admin_client.get(f"{RESULTS}?{query}").context["cl"].result_list}

    assert rows("status__exact=failed") == {bad.pk}
    assert rows("queue=a") == {ok.pk}
    assert rows("task=t.bad") == {bad.pk}
    assert rows(f"q={ok.task_id}") == {ok.pk}
    assert rows("q=nonsense") == set()


def test_result_list_queries_do_not_grow_with_rows(admin_client):
    count = same_queries_for_3_and_50(
        admin_client, RESULTS, lambda n: [factory.result() for _ in range(n)]
    )
    assert count <= 10


# --- workers ---------------------------------------------------------------------------------


def test_workers_show_in_flight_counts_and_stale_heartbeats(admin_client):
    factory.worker("live", queues=["default"])
    factory.worker("dead", queues=["default"], heartbeat_ago=600)
    for _ in range(3):
        factory.job(state="claimed", worker_id="live")
    factory.job(state="claimed", worker_id="dead")
    factory.job(worker_id="live")  # ready rows are not in flight
    response = admin_client.get(WORKERS)
    by_id = {w.pk: w for w in response.context["cl"].result_list}
    assert (by_id["live"].in_flight, by_id["dead"].in_flight) == (3, 1)
    html = response.content.decode()
    assert "stale: 10m 00s ago" in html or "stale: 10m 0" in html
    assert html.count("pgq-badge pgq-stuck") == 1


def test_worker_list_queries_do_not_grow_with_rows(admin_client):
    made = iter(range(10_000))

    def make(n: int) -> None:
        for _ in range(n):
            i = next(made)
            factory.worker(f"w{i}", queues=["default"])
            factory.job(state="claimed", worker_id=f"w{i}")

    count = same_queries_for_3_and_50(admin_client, WORKERS, make)
    assert count <= 10


def test_workers_are_read_only(admin_client):
    factory.worker("w", queues=["default"])
    assert admin_client.get(f"{WORKERS}add/").status_code == 403
    assert admin_client.post(f"{WORKERS}w/delete/", {"post": "yes"}).status_code == 403
    assert admin_client.get(f"{WORKERS}w/change/").status_code == 200


@pytest.mark.skipif(
    not ACTIONS_ON_CHANGE_FORM, reason="Django < 6.1 runs admin actions from the list only"
)
def test_requeue_from_the_detail_page_returns_to_the_list(admin_client):
    letter = factory.dead_letter()
    page = f"{LETTERS}{letter.pk}/change/"
    assert b'name="CHANGE_FORM-action"' in admin_client.get(page).content
    done = admin_client.post(
        page, {"CHANGE_FORM-action": "requeue", "_selected_action": str(letter.pk)}
    )
    assert done.status_code == 302
    assert done["Location"] == LETTERS
    assert Job.objects.filter(task_id=letter.task_id).exists()
