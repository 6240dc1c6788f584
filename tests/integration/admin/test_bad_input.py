"""Bad input on every pg_queue admin page is answered (200 or a clear 400), never with a 500.

The pages are found by looping over the ModelAdmins registered for pg_queue, so a list added
later is covered without touching this file.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib import admin
from django.contrib.admin.models import LogEntry
from django.urls import reverse

from pg_queue.models import DeadLetter, Job, PeriodicTask
from tests.integration.admin import factory

pytestmark = pytest.mark.django_db

OVERVIEW = "/admin/pg_queue/job/overview/"
#: Arabic-Indic digits: ``int()`` reads them as 12 and 10 and 1.
ARABIC_12, ARABIC_10, ARABIC_1 = "\u0661\u0662", "\u0661\u0660", "\u0661"
#: Texts whose ``str.isdigit()`` is true but which are no ASCII number: ``int()`` refuses the
#: first two, reads the third as 12; the last has too many digits for ``int()`` at all.
NOT_NUMBERS = ["²", "①", ARABIC_12, "9" * 5000]
#: Parameters shared by every changelist: search, ordering, page, and a made-up key.
COMMON_PARAMS = ["q", "o", "p"]


def _pg_queue_admins() -> list[tuple[str, Any]]:
    return sorted(
        (model._meta.model_name or "", model_admin)
        for model, model_admin in admin.site._registry.items()
        if model._meta.app_label == "pg_queue"
    )


ADMINS = _pg_queue_admins()
ADMIN_IDS = [name for name, _ in ADMINS]


def _changelist(name: str) -> str:
    return reverse(f"admin:pg_queue_{name}_changelist")


def _filter_params(model_admin: Any) -> list[str]:
    """Every GET parameter the admin's list filters read (plain field filters both ways)."""
    params: list[str] = []
    for item in model_admin.list_filter:
        if isinstance(item, str):
            params += [item, f"{item}__exact"]
        else:
            params.append(item.parameter_name)
    return params


def _one_row_each() -> None:
    """A row in every table; message and dead letter 12, which ``int(ARABIC_12)`` would find."""
    factory.job(queue="q", worker_id="w1", state="claimed", msg_id=12)
    factory.dead_letter(queue="q", id=12)
    factory.result(queue="q")
    factory.worker("w1", queues=["q"])
    factory.lock("rag:/data/1")
    factory.job_group()
    PeriodicTask.objects.create(name="nightly", task_name="t.report", cron="0 3 * * *")


def test_every_pg_queue_model_admin_is_looped_over():
    assert ADMIN_IDS == [
        "deadletter",
        "job",
        "jobgroup",
        "periodictask",
        "resourcelock",
        "taskresult",
        "worker",
    ]


# --- numbers that are not ASCII numbers --------------------------------------------------------


@pytest.mark.parametrize("term", NOT_NUMBERS, ids=["superscript", "circled", "arabic", "long"])
@pytest.mark.parametrize(("name", "model_admin"), ADMINS, ids=ADMIN_IDS)
def test_search_for_a_unicode_digit_matches_no_number_and_does_not_fail(
    admin_client, name, model_admin, term
):
    _one_row_each()
    response = admin_client.get(_changelist(name), {"q": term})
    assert response.status_code == 200
    assert list(response.context["cl"].result_list) == []


@pytest.mark.parametrize(
    "refresh",
    ["²", "①", ARABIC_10, "-1", "1e9", "abc", "0", "3601", "10.5", " 10", "9" * 5000, ""],
)
def test_overview_ignores_a_refresh_that_is_not_whole_seconds_from_1_to_3600(admin_client, refresh):
    response = admin_client.get(OVERVIEW, {"refresh": refresh})
    assert response.status_code == 200
    assert b"http-equiv" not in response.content


def test_overview_refresh_accepts_the_bounds(admin_client):
    assert b'content="1"' in admin_client.get(OVERVIEW, {"refresh": "1"}).content
    assert b'content="3600"' in admin_client.get(OVERVIEW, {"refresh": "3600"}).content


# --- NUL characters ----------------------------------------------------------------------------


def _nul_requests() -> list[tuple[str, str, dict[str, str]]]:
    """(id, url, GET params) with a NUL somewhere, for every list, detail page and the overview."""
    cases: list[tuple[str, str, dict[str, str]]] = []
    for name, model_admin in ADMINS:
        url = _changelist(name)
        for param in [*COMMON_PARAMS, *_filter_params(model_admin)]:
            cases.append((f"{name}-{param}", url, {param: "\x00"}))
            cases.append((f"{name}-{param}-inside", url, {param: "a\x00b"}))
        cases.append((f"{name}-key", url, {"\x00": "1"}))
        cases.append((f"{name}-path", f"{url}%00/change/", {}))
        cases.append((f"{name}-history", f"{url}a%00b/history/", {}))
        cases.append((f"{name}-filters", f"{url}1/change/", {"_changelist_filters": "q=\x00"}))
    cases.append(("overview-refresh", OVERVIEW, {"refresh": "\x00"}))
    cases.append(("overview-key", OVERVIEW, {"\x00": ""}))
    return cases


NUL_REQUESTS = _nul_requests()


@pytest.mark.parametrize(
    ("url", "params"), [c[1:] for c in NUL_REQUESTS], ids=[c[0] for c in NUL_REQUESTS]
)
def test_a_nul_anywhere_in_the_address_is_a_clear_400(admin_client, url, params):
    _one_row_each()
    response = admin_client.get(url, params)
    assert response.status_code == 400
    text = response.content.decode()
    assert "NUL character" in text
    assert "Bad request" in text


def test_the_nul_answer_links_back_to_the_list_without_the_parameters(admin_client):
    response = admin_client.get(_changelist("job"), {"queue_name": "a\x00b"})
    assert response.status_code == 400
    text = response.content.decode()
    assert "parameter queue_name" in text
    assert f'href="{_changelist("job")}"' in text


def test_the_nul_answer_needs_a_staff_login_like_every_admin_page(client):
    response = client.get(_changelist("job"), {"queue_name": "\x00"})
    assert response.status_code == 302
    assert "/admin/login/" in response["Location"]


# --- forged row selections (POST) --------------------------------------------------------------

ACTIONS = [
    ("job", "run_now"),
    ("job", "cancel_jobs"),
    ("job", "change_priority"),
    ("deadletter", "requeue"),
    ("deadletter", "discard"),
]


def _rows_and_log() -> tuple[list[Any], int]:
    rows = [*Job.objects.values_list(), *DeadLetter.objects.values_list()]
    return rows, LogEntry.objects.count()


@pytest.mark.parametrize(
    "selected",
    ["abc", "\x00", "²", "99999999999999999999", "9" * 5000],
    ids=["letters", "nul", "superscript", "past-bigint", "long"],
)
@pytest.mark.parametrize(("name", "action"), ACTIONS, ids=[a for _, a in ACTIONS])
def test_a_selection_that_is_no_row_id_is_a_clear_400_and_changes_nothing(
    admin_client, name, action, selected
):
    factory.job(delay=600)
    factory.dead_letter()
    before = _rows_and_log()
    response = admin_client.post(
        _changelist(name), {"action": action, "index": "0", "_selected_action": [selected]}
    )
    assert response.status_code == 400
    assert "which is no row id" in response.content.decode()
    assert _rows_and_log() == before


@pytest.mark.parametrize(
    "ids",
    ["99999999999999999999", ARABIC_1, "\x00", "9" * 5000, "1,x"],
    ids=["past-bigint", "arabic", "nul", "long", "letters"],
)
@pytest.mark.parametrize(("name", "action"), ACTIONS, ids=[a for _, a in ACTIONS])
def test_a_forged_confirmation_is_refused_and_changes_nothing(admin_client, name, action, ids):
    row = factory.job(delay=600) if name == "job" else factory.dead_letter()
    before = _rows_and_log()
    response = admin_client.post(
        _changelist(name),
        {
            "action": action,
            "index": "0",
            "_selected_action": [str(row.pk)],
            "pgq_ids": ids,
            "pgq_confirm": "yes",
            "priority": "5",
        },
    )
    assert response.status_code == 403
    assert _rows_and_log() == before
