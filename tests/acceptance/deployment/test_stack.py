"""The compose stack, run service by service on this machine: it comes up, works, and stops.

Every built service of docker/docker-compose.yml runs its own ``command`` as a local process
(see local_stack.py for how the compose network maps onto this machine) and must pass its own
compose healthcheck: migrate exits 0; gunicorn answers 200 on the admin login page; each worker
role answers 200 on ``/healthz``; the Celery worker answers ``celery inspect ping``. Then the
stack is used the way a deployment is: an operator logs into the admin (gunicorn, PgBouncer in
transaction mode), and a producer in the web app's environment sends one call to each
transport through the ``pg_queue_enabled`` flag. Finally every service must stop by itself on
SIGTERM, well within its ``stop_grace_period``.
"""

from __future__ import annotations

import http.cookiejar
import json
import re
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from typing import Any

import pytest

from tests.acceptance.delivery.pgbouncer import PgBouncer
from tests.acceptance.deployment.compose import REPO_ROOT
from tests.acceptance.deployment.local_stack import LocalStack
from workers.roles import ROLES

#: Longest the whole stack may take to become healthy (about 15 s on an idle 2-core machine).
UP_TIMEOUT = 90.0
#: Longest one HTTP request or one dispatched call may take.
REQUEST_TIMEOUT = 10.0
#: Longest the producer process (Django start + two blocking dispatches) may take.
PRODUCER_TIMEOUT = 60.0

#: Run by a producer in the web app's environment (``docker compose exec web python manage.py
#: shell -c ...``): one call per org; the flag sends ``pg-org`` to PostgreSQL, the rest to Celery.
PRODUCER = f"""
import json
from backend.celery import app
from pg_queue.routing import RoutingDispatcher

dispatcher = RoutingDispatcher(app)
routed = {{}}
for org in ("pg-org", "celery-org"):
    r = dispatcher.dispatch(
        "workers.tasks.celery_multiply", [6, 7], queue="default", timeout={REQUEST_TIMEOUT},
        org_id=org,
    )
    routed[org] = [r.transport, r.ok, r.result, r.error]
print("ROUTED " + json.dumps(routed))
"""


class Browser:
    """Just enough of a browser for the Django admin: cookies, forms with a CSRF token."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar())
        )

    def get(self, path: str) -> tuple[int, str]:
        with self.opener.open(self.base_url + path, timeout=REQUEST_TIMEOUT) as response:
            return response.status, response.read().decode()

    def post(self, path: str, form: dict[str, str]) -> tuple[int, str, str]:
        data = urllib.parse.urlencode(form).encode()
        with self.opener.open(self.base_url + path, data, timeout=REQUEST_TIMEOUT) as response:
            return response.status, response.geturl(), response.read().decode()

    def log_in(self, username: str, password: str) -> tuple[int, str, str]:
        status, page = self.get("/admin/login/?next=/admin/")
        assert status == 200, page[:500]
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)
        assert token, page[:2000]
        return self.post(
            "/admin/login/?next=/admin/",
            {
                "csrfmiddlewaretoken": token.group(1),
                "username": username,
                "password": password,
                "next": "/admin/",
            },
        )


def produce_on_both_transports(stack: LocalStack) -> dict[str, Any]:
    """Run ``PRODUCER`` with the web service's environment; org -> [transport, ok, result]."""
    env = stack.service_env(stack.compose.services["web"])
    env.update(PG_QUEUE_ROUTING_ENABLED="false", PG_QUEUE_ROUTING_TENANTS="pg-org")
    done = subprocess.run(
        [sys.executable, "manage.py", "shell", "-v", "0", "-c", PRODUCER],
        cwd=REPO_ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=PRODUCER_TIMEOUT,
        check=False,
    )
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("ROUTED ")), None)
    output = f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}\n{stack.describe()}"
    assert done.returncode == 0, f"producer exited {done.returncode}:\n{output}"
    assert line, f"producer printed no ROUTED line:\n{output}"
    routed: dict[str, Any] = json.loads(line.removeprefix("ROUTED "))
    return routed


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_compose_stack_comes_up_locally_serves_the_admin_and_routes_both_ways(
    local_stack: LocalStack, pgbouncer: PgBouncer, django_user_model: Any, settings: Any
) -> None:
    # The web service checks passwords with Django's own hashers, not the suite's fast one.
    from django.conf import global_settings

    settings.PASSWORD_HASHERS = global_settings.PASSWORD_HASHERS
    started = time.monotonic()
    local_stack.up(timeout=UP_TIMEOUT)
    up_seconds = time.monotonic() - started
    states = {name: run.state for name, run in local_stack.runs.items()}
    assert states["migrate"] == "completed"
    assert {name for name, state in states.items() if state == "healthy"} == (
        set(states) - {"migrate"}
    )
    assert {r.service for r in ROLES} <= set(states)

    # An operator logs into the admin: gunicorn, Django sessions and auth through PgBouncer.
    django_user_model.objects.create_superuser("operator", "ops@example.com", "deploy-pw-1")
    transactions_before = pgbouncer.stats()[pgbouncer.dbname]["total_xact_count"]
    browser = Browser(f"http://127.0.0.1:{local_stack.local_port('web', 8000)}")
    status, url, page = browser.log_in("operator", "deploy-pw-1")
    assert (status, urllib.parse.urlsplit(url).path) == (200, "/admin/"), page[:2000]
    assert "Site administration" in page
    status, page = browser.get("/admin/pg_queue/")
    assert status == 200, page[:2000]
    transactions = pgbouncer.stats()[pgbouncer.dbname]["total_xact_count"]
    assert transactions > transactions_before, "the web app's queries went around PgBouncer"

    # The flag routes both ways: PostgreSQL (a worker role runs it) and Celery (the worker).
    routed = produce_on_both_transports(local_stack)
    assert routed == {
        "pg-org": ["postgres", True, 42, ""],
        "celery-org": ["celery", True, 42, ""],
    }, local_stack.describe()

    # docker compose down: SIGTERM, and every service exits cleanly on its own.
    stopped = local_stack.down()
    print(f"deployment: up in {up_seconds:.1f}s, ready at {local_stack.timings()}, stop {stopped}")
    for name, (code, seconds, killed) in stopped.items():
        run = local_stack.runs[name]
        assert not killed, f"{name} ignored SIGTERM for {seconds}s\n{run.log()}"
        assert code == 0, f"{name}: exit {code} after SIGTERM\n{run.log()}"
        assert seconds < run.service.stop_grace_period, name
