"""docker/docker-compose.yml says what a deployment runs; these tests hold it to that.

The compose file is written by hand (readable, reviewable); workers/roles.py is the definition of
the worker roles. The tests check the two against each other and say what the compose service
must contain when they disagree. No process is started here; test_stack.py runs the services.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml

from tests.acceptance.deployment.compose import (
    DOCKERFILE,
    REPO_ROOT,
    Compose,
    duration,
    interpolate,
)
from tests.acceptance.deployment.local_stack import container_env
from workers.roles import ROLES, WorkerRole, celery_queues

#: Longest one ``manage.py check`` may take (it starts Django; it connects to nothing).
CHECK_TIMEOUT = 60.0
#: Port of a URL scheme when the URL names none.
DEFAULT_PORTS = {"postgres": 5432, "postgresql": 5432, "amqp": 5672, "http": 80}
#: Where backend/executions.py stages inputs inside a container (tempfile.gettempdir() there).
CONTAINER_STAGING = "/tmp/backend-executions"


def expected_worker_service(role: WorkerRole) -> str:
    """What ``worker-<role>`` must contain, as YAML to paste into the compose file."""
    return yaml.safe_dump(
        {
            role.service: {
                "command": role.command(),
                "expose": [str(role.health_port)],
                "stop_grace_period": f"{role.stop_grace_period:g}s",
                "healthcheck": {"test": ["CMD", "python", "-c", f"... {role.health_url} ..."]},
            }
        },
        sort_keys=False,
    )


def db_host(compose: Compose, service: str) -> str:
    return urlsplit(compose.services[service].environment["DATABASE_URL"]).hostname or ""


def flag_value(command: list[str], flag: str) -> str:
    values = [arg.split("=", 1)[1] for arg in command if arg.startswith(f"{flag}=")]
    assert len(values) == 1, f"{flag}=... must appear once in {command}"
    return values[0]


def test_the_worker_services_are_exactly_the_roles(compose: Compose) -> None:
    assert set(compose.running("run_pg_worker")) == {r.service for r in ROLES}, (
        "one run_pg_worker service per role of workers/roles.py, named worker-<role>"
    )
    for role in ROLES:
        service = compose.services[role.service]
        hint = f"\nexpected in docker/docker-compose.yml:\n{expected_worker_service(role)}"
        assert service.command == role.command(), hint
        assert service.expose == (role.health_port,), hint
        assert service.stop_grace_period == role.stop_grace_period, hint
        assert service.healthcheck[0] == "CMD", hint
        assert role.health_url in service.healthcheck[-1], hint
        assert service.depends_on == {"migrate": "service_completed_successfully"}
        assert service.spec.get("restart") == "unless-stopped"


def test_every_time_limited_role_stops_later_than_its_grace() -> None:
    for role in ROLES:
        assert role.stop_grace_period > role.shutdown_grace, role
    assert any(role.time_limit for role in ROLES), "a role with a time limit, as the design asks"


def test_every_queue_of_the_example_tasks_is_served_by_a_role() -> None:
    from backend import executions
    from workers import tasks

    task_queues = {
        obj.queue
        for obj in vars(tasks).values()
        if isinstance(getattr(obj, "queue", None), str)
        and isinstance(getattr(obj, "name", None), str)
    }
    assert task_queues, "workers.tasks defines no @task with a queue?"
    used = task_queues | {executions.DEFAULT_QUEUE, executions.DEFAULT_CALLBACK_QUEUE}
    served = {queue for role in ROLES for queue in role.queue_names}
    assert used <= served, f"queues no role drains: {sorted(used - served)}"


def test_the_celery_worker_consumes_every_role_queue_and_answers_its_own_ping(
    compose: Compose,
) -> None:
    command = compose.services["celery"].command
    assert command[:4] == ["celery", "-A", "backend.celery", "worker"]
    assert tuple(flag_value(command, "--queues").split(",")) == celery_queues(), (
        f"--queues={','.join(celery_queues())} (workers.roles.celery_queues())"
    )
    assert flag_value(command, "--hostname") == "celery@%h"
    check = compose.services["celery"].healthcheck
    assert check[0] == "CMD-SHELL"
    assert "celery -A backend.celery inspect ping --destination celery@$HOSTNAME" in check[1]


def test_the_web_app_and_celery_go_through_pgbouncer_in_transaction_mode(
    compose: Compose,
) -> None:
    bouncer = compose.services["pgbouncer"].environment
    assert bouncer["POOL_MODE"] == "transaction"
    assert urlsplit(bouncer["DATABASE_URL"]).hostname == "postgres"
    port = int(bouncer["LISTEN_PORT"])
    assert compose.services["pgbouncer"].expose == (port,)
    for name in ("web", "celery"):
        env = compose.services[name].environment
        url = urlsplit(env["DATABASE_URL"])
        assert (url.hostname, url.port) == ("pgbouncer", port), name
        # Django's advice for transaction pooling, and no LISTEN / prepared statements.
        assert parse_qs(url.query)["disable_server_side_cursors"] == ["True"], name
        assert env["PG_QUEUE_NOTIFY"] == env["PG_QUEUE_PREPARED_STATEMENTS"] == "false", name


def test_every_url_naming_a_service_names_a_port_that_service_listens_on(
    compose: Compose,
) -> None:
    for name, service in compose.services.items():
        for key, value in service.environment.items():
            url = urlsplit(value)
            host = url.hostname or ""
            if url.scheme and host in compose.services:
                port = url.port or DEFAULT_PORTS[url.scheme]
                target = compose.services[host]
                assert port in target.expose, (
                    f"{name}: {key}={value}, {target.name} {target.expose}"
                )


def test_migrate_and_the_workers_talk_to_postgres_directly(compose: Compose) -> None:
    for name in ["migrate", *(role.service for role in ROLES)]:
        assert db_host(compose, name) == "postgres", name
        env = compose.services[name].environment
        assert "PG_QUEUE_NOTIFY" not in env, f"{name}: LISTEN/NOTIFY stays on for direct workers"


def test_every_service_has_a_healthcheck_and_waits_for_what_it_needs(compose: Compose) -> None:
    services = compose.active()
    for name, service in services.items():
        if service.one_shot:
            assert not service.healthcheck, f"{name} is a one-shot: it is done, not healthy"
            continue
        assert service.healthcheck, f"{name} has no healthcheck"
        for dep, condition in service.depends_on.items():
            assert dep in services, f"{name} depends on unknown service {dep}"
            if condition == "service_healthy":
                assert services[dep].healthcheck, f"{name} waits for {dep}, which has no check"
            else:
                assert condition == "service_completed_successfully", f"{name} -> {dep}"
                assert services[dep].one_shot, f"{name} waits for {dep} to complete"
    assert services["migrate"].depends_on == {"postgres": "service_healthy"}
    assert services["migrate"].command == ["python", "manage.py", "migrate", "--noinput"]
    built = [name for name, s in services.items() if s.built and not s.one_shot]
    for name in built:
        assert services[name].depends_on.get("migrate") == "service_completed_successfully", name
    assert services["web"].depends_on["pgbouncer"] == "service_healthy"
    assert services["celery"].depends_on["pgbouncer"] == "service_healthy"
    assert services["celery"].depends_on["rabbitmq"] == "service_healthy"


def test_the_web_app_is_gunicorn_serving_the_admin(compose: Compose) -> None:
    web = compose.services["web"]
    assert web.command[:2] == ["gunicorn", "backend.wsgi:application"]
    bind = flag_value(web.command, "--bind")
    port = int(bind.rsplit(":", 1)[1])
    assert web.expose == (port,)
    assert f"http://127.0.0.1:{port}/admin/login/" in web.healthcheck[-1]
    assert "status != 200" in web.healthcheck[-1], "the check insists on 200, not any answer"
    graceful = float(flag_value(web.command, "--graceful-timeout"))
    assert web.stop_grace_period > graceful, "Docker must not SIGKILL gunicorn mid-request"


def test_every_service_configuration_passes_manage_py_check_without_warnings(
    compose: Compose,
) -> None:
    """E.g. pg_queue.W003: NOTIFY or prepared statements left on behind the transaction pooler.

    One ``manage.py check`` per distinct environment of the built services (the hostnames stay
    the compose ones: the checks read settings and connect to nothing).
    """
    environments: dict[str, list[str]] = {}
    for name, service in compose.services.items():
        if service.built:
            key = json.dumps(service.environment, sort_keys=True)
            environments.setdefault(key, []).append(name)
    for names in environments.values():
        done = subprocess.run(
            [sys.executable, "manage.py", "check", "--fail-level", "WARNING"],
            cwd=REPO_ROOT,
            env=container_env(compose.services[names[0]]),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=CHECK_TIMEOUT,
            check=False,
        )
        assert done.returncode == 0, f"{names}:\n{done.stdout}{done.stderr}"


def test_the_image_has_what_every_command_runs(compose: Compose) -> None:
    dockerfile = DOCKERFILE.read_text()
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    gunicorn = [d for d in pyproject["project"]["optional-dependencies"]["dev"] if "gunicorn" in d]
    assert len(gunicorn) == 1
    assert f'"{gunicorn[0]}"' in dockerfile, f"docker/Dockerfile must pip install {gunicorn[0]}"
    extras = pyproject["project"]["optional-dependencies"]
    assert any(d.startswith("celery") for d in extras["celery"])  # the celery role needs it
    assert 'pip install ".[all,binary]"' in dockerfile, "the image needs every extra"
    environ = [d for d in extras["dev"] if d.startswith("django-environ")]
    assert len(environ) == 1
    assert f'"{environ[0]}"' in dockerfile, "the example settings need django-environ"
    for folder in ("pg_queue", "backend", "workers"):
        assert re.search(rf"^COPY {folder} \./{folder}$", dockerfile, re.M), folder
    for name, service in compose.active().items():
        if service.built:
            assert service.command[0] in {"python", "gunicorn", "celery"}, name


def test_the_web_app_and_the_workers_share_the_execution_staging_folder(
    compose: Compose,
) -> None:
    from backend.executions import DEFAULT_STAGING_DIR

    assert DEFAULT_STAGING_DIR.name == CONTAINER_STAGING.rsplit("/", 1)[1]
    assert f"install -d -o app -g app {CONTAINER_STAGING}" in DOCKERFILE.read_text()
    for name in ["web", "celery", *(role.service for role in ROLES)]:
        assert f"staging:{CONTAINER_STAGING}" in compose.services[name].spec["volumes"], name


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("${SECRET_KEY:-insecure}", "insecure"),
        ("a$$b", "a$b"),
        ("celery@$$HOSTNAME", "celery@$HOSTNAME"),
        ("${UNSET}x", "x"),
    ],
)
def test_compose_interpolation_with_an_empty_environment(text: str, expected: str) -> None:
    assert interpolate(text) == expected


def test_compose_durations() -> None:
    assert [duration(d) for d in ("40s", "1m30s", "500ms", 5)] == [40.0, 90.0, 0.5, 5.0]
    with pytest.raises(ValueError, match="not a compose duration"):
        duration("forty")
