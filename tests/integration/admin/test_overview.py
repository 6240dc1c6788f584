"""The queues overview: counts per queue from two aggregate statements, stuck queues in red."""

from __future__ import annotations

import re

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from pg_queue.ops.overview import STUCK_READY_SECONDS, queue_overview
from tests.integration.admin import factory

pytestmark = pytest.mark.django_db

OVERVIEW = "/admin/pg_queue/job/overview/"


def _row(html: str, queue: str) -> str:
    pattern = rf'<tr class="([^"]*)" data-queue="{re.escape(queue)}">(.*?)</tr>'
    match = re.search(pattern, html, re.S)
    assert match, f"no row for queue {queue!r}"
    return match.group(1) + match.group(2)


def test_overview_counts_every_queue_from_two_statements():
    factory.busy_queues()
    with CaptureQueriesContext(connection) as queries:
        overview = queue_overview()
    assert len(queries) == 2
    by_name = {q.queue: q for q in overview.queues}
    assert list(by_name) == ["default", "email", "reports"]

    default = by_name["default"]
    assert (default.ready, default.delayed, default.running, default.lease_expired) == (12, 4, 8, 0)
    assert (default.finished_5m, default.failed_5m) == (33, 3)
    assert (default.finished_60m, default.failed_60m) == (233, 3)
    assert default.dead_letters == 0
    assert default.workers == 2
    assert not default.stuck

    email = by_name["email"]
    assert (email.ready, email.delayed, email.running, email.lease_expired) == (40, 0, 1, 1)
    assert email.oldest_ready_seconds is not None
    assert email.oldest_ready_seconds > 700
    assert email.ready_stuck
    assert email.lease_stuck
    assert email.stuck
    assert (email.finished_5m, email.failed_5m, email.finished_60m, email.failed_60m) == (
        6,
        6,
        31,
        6,
    )
    assert email.dead_letters == 6
    assert email.workers == 1  # web-1 listens on email; mail-1 is stale and does not count

    reports = by_name["reports"]
    assert (reports.ready, reports.delayed, reports.oldest_ready_seconds) == (0, 1, None)
    assert reports.finished_60m == 4
    assert not reports.stuck

    assert overview.totals.ready == 52
    assert overview.totals.dead_letters == 6
    assert overview.totals.workers == 2  # live workers, counted once each
    stale = {w.worker_id: w for w in overview.workers}
    assert stale["mail-1-777-dead"].stale
    assert stale["mail-1-777-dead"].in_flight == 1
    assert not stale["web-1-4242-a1b2"].stale
    assert stale["web-1-4242-a1b2"].in_flight == 5
    assert overview.stuck


#: Timestamp columns of each queue table, for ``_clock_moves_on``.
_TIMESTAMPS = {
    "pg_queue_message": ("available_at", "enqueued_at", "vt"),
    "pg_worker": ("heartbeat_at", "started_at"),
    "pg_task_result": ("finished_at", "started_at"),
    "pg_queue_dead_letter": ("failed_at",),
}


def _clock_moves_on(seconds: float) -> None:
    """Every timestamp ``seconds`` earlier: the rows as a test sees them that much later."""
    with connection.cursor() as cursor:
        for table, columns in _TIMESTAMPS.items():
            shift = ", ".join(f"{c} = {c} - make_interval(secs => %(s)s)" for c in columns)
            cursor.execute(f"UPDATE {table} SET {shift}", {"s": seconds})


def test_busy_queues_default_stays_healthy_for_a_test_that_looks_late():
    # The browser test once read the overview more than 30 s after busy_queues(): the delayed
    # retries had come due, the leases expired and the live workers looked stale.
    factory.busy_queues()
    _clock_moves_on(120)
    factory.keep_alive(*factory.LIVE_WORKERS)
    default = {q.queue: q for q in queue_overview().queues}["default"]
    assert (default.ready, default.delayed, default.running, default.lease_expired) == (12, 4, 8, 0)
    assert default.workers == 2
    assert not default.stuck


def test_overview_query_count_does_not_grow_with_the_number_of_queues():
    factory.job(queue="q0")
    factory.worker("w0", queues=["q0"])
    with CaptureQueriesContext(connection) as few:
        queue_overview()
    for i in range(1, 40):
        factory.job(queue=f"q{i}")
        factory.result(queue=f"r{i}")
        factory.dead_letter(queue=f"d{i}")
        factory.worker(f"w{i}", queues=[f"q{i}"])
    with CaptureQueriesContext(connection) as many:
        overview = queue_overview()
    assert len(overview.queues) == 1 + 3 * 39
    assert len(many) == len(few) == 2


def test_a_queue_with_due_jobs_and_no_live_worker_is_stuck():
    factory.job(queue="orphan")
    factory.worker("old", queues=["orphan"], heartbeat_ago=3600)
    (orphan,) = queue_overview().queues
    assert orphan.workers == 0
    assert orphan.no_workers
    assert orphan.stuck
    assert not orphan.ready_stuck  # just enqueued


def test_oldest_ready_threshold_is_the_named_constant():
    factory.job(queue="slow", due_ago=STUCK_READY_SECONDS - 30)
    factory.job(queue="stuck", due_ago=STUCK_READY_SECONDS + 30)
    factory.worker("w", queues=["slow", "stuck"])
    by_name = {q.queue: q for q in queue_overview().queues}
    assert not by_name["slow"].ready_stuck
    assert by_name["stuck"].ready_stuck
    assert queue_overview(stuck_ready_seconds=10).queues[0].ready_stuck


def test_overview_page_shows_counts_and_marks_stuck_queues_and_workers_red(admin_client):
    factory.busy_queues()
    response = admin_client.get(OVERVIEW)
    assert response.status_code == 200
    html = response.content.decode()
    assert "Queues overview" in html
    assert "pgq-stuck-row" in _row(html, "email")
    assert "pgq-stuck" not in _row(html, "default")
    assert "pgq-stuck" not in _row(html, "reports")
    assert re.search(r'<tr class="pgq-worker pgq-stuck">\s*<td>mail-1-777-dead</td>', html)
    assert re.search(r'<tr class="pgq-worker">\s*<td>web-1-4242-a1b2</td>', html)
    # counts link to the filtered lists
    assert "?queue_name=email&amp;state=lease_expired" in html
    assert "something is stuck" in html


def test_overview_page_queries_do_not_grow_with_queues(admin_client):
    factory.busy_queues()
    admin_client.get(OVERVIEW)  # warm caches (content types, session)
    with CaptureQueriesContext(connection) as few:
        assert admin_client.get(OVERVIEW).status_code == 200
    for i in range(30):
        factory.job(queue=f"extra{i}")
        factory.worker(f"extra-w{i}", queues=[f"extra{i}"])
    with CaptureQueriesContext(connection) as many:
        assert admin_client.get(OVERVIEW).status_code == 200
    assert len(many) == len(few)
    assert len(few) <= 6


def test_overview_page_auto_refresh_is_bounded(admin_client):
    refreshing = admin_client.get(OVERVIEW + "?refresh=10").content
    assert b'http-equiv="refresh" content="10"' in refreshing
    assert b"http-equiv" not in admin_client.get(OVERVIEW + "?refresh=0").content
    assert b"http-equiv" not in admin_client.get(OVERVIEW + "?refresh=99999").content


def test_app_index_and_lists_link_to_the_overview(admin_client):
    index = admin_client.get(reverse("admin:app_list", kwargs={"app_label": "pg_queue"}))
    assert index.status_code == 200
    assert OVERVIEW.encode() in index.content
    for model in ("job", "deadletter", "taskresult", "worker"):
        page = admin_client.get(reverse(f"admin:pg_queue_{model}_changelist"))
        assert OVERVIEW.encode() in page.content, model
    assert reverse("admin:pg_queue_overview") == OVERVIEW


def test_overview_is_denied_without_staff_or_permission(client, staff_client):
    anonymous = client.get(OVERVIEW)
    assert anonymous.status_code == 302
    assert "/admin/login/" in anonymous["Location"]
    not_staff = staff_client("view_job", staff=False).get(OVERVIEW)
    assert not_staff.status_code == 302
    assert "/admin/login/" in not_staff["Location"]
    assert staff_client("view_deadletter").get(OVERVIEW).status_code == 403
    assert staff_client("view_job").get(OVERVIEW).status_code == 200
    assert staff_client("change_job").get(OVERVIEW).status_code == 200


def test_app_index_hides_the_overview_link_from_staff_without_message_permission(staff_client):
    page = staff_client("view_deadletter").get("/admin/pg_queue/")
    assert page.status_code == 200
    assert OVERVIEW.encode() not in page.content


@pytest.mark.django_db(transaction=True)
def test_overview_reads_queues_and_workers_from_one_snapshot():
    factory.job(queue="q", state="claimed", worker_id="w")
    factory.worker("w", queues=["q"])
    with CaptureQueriesContext(connection) as queries:
        overview = queue_overview()
    statements = [q["sql"] for q in queries.captured_queries if q["sql"] not in ("BEGIN", "COMMIT")]
    assert statements[0].startswith("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
    assert len(statements) == 3
    assert overview.queues[0].running == overview.workers[0].in_flight == 1
