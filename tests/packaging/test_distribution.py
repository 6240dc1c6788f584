"""The distribution as a new user gets it: the wheel, a bare install into a fresh Django project,
and what each missing extra does.

Every venv here is real and fresh (``python -m venv --without-pip``, filled by this process's pip
through ``pip --python``), so nothing of the repository's own venv leaks in: a bare install has
no Celery, OpenFeature, prometheus-client or rich, and the features that need them are exercised
there. Downloads go through pip's cache (``PIP_CACHE_DIR`` or pip's default), so a second run
installs from disk. Each project gets its own database on the test server; all are dropped.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from django.conf import settings

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]  # the repository root
#: Everything a bare ``pip install pg-queue`` may bring: the app, its three requirements and
#: theirs (typing-extensions: psycopg on Python < 3.13; tzdata: psycopg and Django on Windows).
RUNTIME = {"pg-queue", "django", "asgiref", "sqlparse", "psycopg", "orjson", "typing-extensions"}
RUNTIME_MAYBE = {"tzdata"}
#: What only extras or the example project may bring.
OPTIONAL = {
    "celery",
    "kombu",
    "openfeature-sdk",
    "prometheus-client",
    "rich",
    "pgserver",
    "django-environ",
    "croniter",
    "psycopg-binary",
    "psycopg-pool",
}
#: (Python, Django) of each install test: the oldest supported Django on the oldest Python, the
#: newest Django on the oldest and on a newer Python.
SCENARIOS = [("3.12", "5.2"), ("3.12", "6.1"), ("3.13", "6.1")]
#: Longest one pip or manage.py call may take (a cold pip cache downloads Django).
STEP_TIMEOUT = 300
#: Longest wait for the worker's health server to answer.
HEALTH_TIMEOUT = 30.0

TASKS_MODULE = """
from pg_queue import task


@task(queue="default")
def add(a, b):
    return a + b


@task(queue="default", max_attempts=1)
def doomed():
    raise RuntimeError("doomed on purpose")
"""

#: Appended to the settings.py that ``django-admin startproject`` wrote.
SETTINGS_TAIL = """
INSTALLED_APPS += ["pg_queue"]
DATABASES = {{"default": {{"ENGINE": "django.db.backends.postgresql", **{db!r}}}}}
PG_QUEUE = {{"IMPORTS": ["shop.tasks"]}}
"""

#: Enqueue a job that succeeds, one that fails and one due in an hour (a row for the job
#: pages); drain them with a real ``run_pg_worker --burst``; print what came out.
ENQUEUE_AND_WORK = """
import json, subprocess, sys
import django

django.setup()
from pg_queue import enqueue

ok = enqueue("shop.tasks.add", [2, 3])
bad = enqueue("shop.tasks.doomed")
enqueue("shop.tasks.add", [1, 1], delay=3600)
worker = subprocess.run(
    [sys.executable, "manage.py", "run_pg_worker", "--burst"],
    capture_output=True, text=True, timeout=120,
)
good, failed = ok.wait(timeout=30), bad.wait(timeout=30)
print(json.dumps({
    "worker": [worker.returncode, worker.stderr[-3000:]],
    "ok": [good.status, good.result],
    "bad": [failed.status, failed.error],
}))
"""

#: Every pg_queue admin page a logged-in superuser opens: the app index, the queues overview,
#: each model's list, and the detail page of its first row. A list drawn by pg_queue's own
#: template (shipped in the wheel) links to the overview.
RENDER_ADMIN = """
import json
import django
from django.test.utils import setup_test_environment

django.setup()
setup_test_environment()  # lets the test client's host in
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import reverse

user = get_user_model().objects.create_superuser("operator", "operator@example.com", "x")
client = Client()
client.force_login(user)
pages, templated = {}, {}


def get(kind, url):
    response = client.get(url)
    body = response.content.decode(errors="replace")
    pages[url] = [kind, response.status_code, body[-600:]]
    return body


get("app index", reverse("admin:app_list", args=["pg_queue"]))
get("overview", reverse("admin:pg_queue_overview"))
for model in admin.site._registry:
    opts = model._meta
    if opts.app_label != "pg_queue":
        continue
    body = get("list " + opts.model_name, reverse(f"admin:pg_queue_{opts.model_name}_changelist"))
    templated[opts.model_name] = "Queues overview" in body
    row = model._default_manager.first()
    if row is not None:
        url = reverse(f"admin:pg_queue_{opts.model_name}_change", args=[row.pk])
        get("change " + opts.model_name, url)
print(json.dumps({"pages": pages, "templated": templated}))
"""

#: In a venv without extras: what routing and the metrics module do.
NO_EXTRAS = """
import importlib.util, json
import django

django.setup()
from pg_queue import metrics
from pg_queue.routing import RoutingDispatcher  # noqa: F401  (importable without Celery)
from pg_queue.routing.flags import use_postgres

decision = use_postgres(task_name="shop.tasks.add", queue="default", org_id="acme")
metrics.CLAIMED.labels("default").inc()  # a no-op, not an error
print(json.dumps({
    "missing": [m for m in ("celery", "openfeature", "prometheus_client", "rich")
                if importlib.util.find_spec(m) is None],
    "decision": [decision.use_postgres, decision.reason],
}))
"""


# --- environment -------------------------------------------------------------------------------


def _pypi_problem() -> str | None:
    try:
        urllib.request.urlopen(
            urllib.request.Request("https://pypi.org/simple/django/", method="HEAD"), timeout=10
        ).close()
    except (urllib.error.URLError, OSError) as exc:
        return f"PyPI is unreachable ({exc}): the packaging tests install Django from it"
    return None


def _python(version: str) -> str | None:
    """An interpreter of ``version`` (e.g. "3.13"): this one, one on PATH, or pyenv's."""
    if f"{sys.version_info.major}.{sys.version_info.minor}" == version:
        return sys.executable
    candidates = [shutil.which(f"python{version}")]
    if shutil.which("pyenv"):
        listed = subprocess.run(
            ["pyenv", "versions", "--bare"], capture_output=True, text=True, check=False
        ).stdout.split()
        for installed in listed:
            if installed == version or installed.startswith(version + "."):
                found = subprocess.run(
                    ["pyenv", "which", f"python{version}"],
                    capture_output=True,
                    text=True,
                    check=False,
                    env={**os.environ, "PYENV_VERSION": installed},
                ).stdout.strip()
                candidates.append(found)
    for candidate in filter(None, candidates):
        probe = subprocess.run(
            [candidate, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
            check=False,
        )
        if probe.returncode == 0 and probe.stdout.strip() == version:
            return candidate
    return None


def _run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    kwargs.setdefault("timeout", STEP_TIMEOUT)
    return subprocess.run(cmd, capture_output=True, text=True, check=False, **kwargs)


def _ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, (
        f"{done.args}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
    )
    return done.stdout


def _pip(python: Path, *args: str) -> str:
    """This process's pip, installing into the venv of ``python`` (which has no pip)."""
    return _ok(_run([sys.executable, "-m", "pip", "--python", str(python), *args]))


def _installed(python: Path) -> dict[str, str]:
    listed = json.loads(_pip(python, "list", "--format", "json"))
    return {p["name"].lower().replace("_", "-"): p["version"] for p in listed}


# --- databases ---------------------------------------------------------------------------------


def _server() -> dict[str, Any]:
    """How the test server is reached (the suite's own DATABASES entry)."""
    db = settings.DATABASES["default"]
    return {key: db.get(key) or "" for key in ("USER", "PASSWORD", "HOST", "PORT")}


def _admin_connection() -> psycopg.Connection[Any]:
    server = _server()
    return psycopg.connect(
        dbname="postgres",
        user=server["USER"],
        password=server["PASSWORD"] or None,
        host=server["HOST"] or None,
        port=server["PORT"] or None,
        autocommit=True,
    )


@pytest.fixture(scope="module")
def databases() -> Iterator[list[str]]:
    """Names of the databases this module created; every one is dropped at the end."""
    created: list[str] = []
    yield created
    with _admin_connection() as conn:
        for name in created:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _new_database(created: list[str]) -> dict[str, Any]:
    name = f"pgq_packaging_{uuid.uuid4().hex[:12]}"
    with _admin_connection() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    created.append(name)
    return {"NAME": name, **_server()}


# --- the project -------------------------------------------------------------------------------


@dataclass
class Site:
    """A fresh venv with a ``django-admin startproject`` site using pg_queue."""

    python: Path
    root: Path
    #: Installed distributions right after ``pip install <wheel>``: name -> version.
    installed: dict[str, str] = field(default_factory=dict)
    #: How long the Django install and then the wheel's install took.
    seconds: dict[str, float] = field(default_factory=dict)

    def env_for(self, settings_module: str = "pgq_site.settings") -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("DJANGO_SETTINGS_MODULE", "DATABASE_URL", "PYTHONPATH", "VIRTUAL_ENV")
        }
        env["PATH"] = f"{self.python.parent}{os.pathsep}{env.get('PATH', '')}"
        env["DJANGO_SETTINGS_MODULE"] = settings_module
        return env

    def manage(self, *args: str) -> subprocess.CompletedProcess[str]:
        return _run([str(self.python), "manage.py", *args], cwd=self.root, env=self.env_for())

    def script(self, code: str, settings_module: str = "pgq_site.settings") -> Any:
        """Run ``code`` with the venv's python in the project; its last line of output, as JSON."""
        path = self.root / f"script_{uuid.uuid4().hex[:8]}.py"
        path.write_text(code)
        env = self.env_for(settings_module)
        out = _ok(_run([str(self.python), path.name], cwd=self.root, env=env))
        return json.loads(out.strip().splitlines()[-1])

    def settings_variant(self, name: str, pg_queue: dict[str, Any]) -> str:
        """A settings module that changes ``PG_QUEUE`` only; returns its dotted name."""
        (self.root / "pgq_site" / f"{name}.py").write_text(
            f"from pgq_site.settings import *\n\nPG_QUEUE = {{**PG_QUEUE, **{pg_queue!r}}}\n"
        )
        return f"pgq_site.{name}"


def _new_venv(tmp: Path, python_version: str) -> Path:
    """A fresh venv without pip (this process's pip fills it); returns its python."""
    python = _python(python_version)
    if python is None:
        pytest.skip(f"Python {python_version} is not installed (PATH or pyenv)")
    venv = tmp / f"venv-py{python_version}"
    _ok(_run([python, "-m", "venv", "--without-pip", str(venv)]))
    return venv / "bin" / "python"


def _start_project(python: Path, root: Path, databases: list[str]) -> Site:
    """``django-admin startproject`` with pg_queue installed, a fresh database and a task module."""
    root.mkdir()
    _ok(_run([str(python.parent / "django-admin"), "startproject", "pgq_site", str(root)]))
    with (root / "pgq_site" / "settings.py").open("a") as f:
        f.write(SETTINGS_TAIL.format(db=_new_database(databases)))
    (root / "shop").mkdir()
    (root / "shop" / "__init__.py").write_text("")
    (root / "shop" / "tasks.py").write_text(TASKS_MODULE)
    return Site(python=python, root=root)


def _make_site(
    tmp: Path, python_version: str, django_series: str, wheel: Path, databases: list[str]
) -> Site:
    started = time.monotonic()
    python = _new_venv(tmp, python_version)
    # The user's project exists first, on its Django; installing pg_queue must keep that Django.
    _pip(python, "install", "--quiet", f"Django~={django_series}.0")
    django_done = time.monotonic()
    _pip(python, "install", "--quiet", str(wheel))
    installed = _installed(python)
    site = _start_project(python, tmp / "site", databases)
    site.installed = installed
    site.seconds = {"django": django_done - started, "wheel": time.monotonic() - django_done}
    return site


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    problem = _pypi_problem()
    if problem:
        pytest.skip(problem)
    # Built from a copy of the sources a release is built from: a build/ folder left in the
    # checkout by an earlier build (setuptools never prunes it) cannot slip stale files in.
    src = tmp_path_factory.mktemp("source")
    shutil.copytree(
        REPO / "pg_queue", src / "pg_queue", ignore=shutil.ignore_patterns("__pycache__")
    )
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(REPO / name, src / name)
    out = tmp_path_factory.mktemp("wheel")
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", str(src)]
    _ok(_run([*pip_wheel, "--wheel-dir", str(out)]))
    (built,) = out.glob("pg_queue-*.whl")
    return built


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory, wheel: Path, databases: list[str]) -> Any:
    """``sites(python, django)``: the project of that scenario, built once per module."""
    made: dict[tuple[str, str], Site] = {}

    def get(python_version: str, django_series: str) -> Site:
        key = (python_version, django_series)
        if key not in made:
            tmp = tmp_path_factory.mktemp(f"py{python_version}-django{django_series}")
            made[key] = _make_site(tmp, python_version, django_series, wheel, databases)
        return made[key]

    return get


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _http_get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


# --- tests -------------------------------------------------------------------------------------


def test_the_wheel_holds_the_app_alone_with_its_templates_migrations_and_marker(wheel: Path):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names}
    dist_info = f"{wheel.name.split('-')[0]}-{wheel.name.split('-')[1]}.dist-info"

    assert tops == {"pg_queue", dist_info}, tops  # no backend/, workers/, tests/
    assert "pg_queue/py.typed" in names
    templates = {Path(n).name for n in names if n.startswith("pg_queue/templates/admin/pg_queue/")}
    shipped = {p.name for p in (REPO / "pg_queue/templates/admin/pg_queue").glob("*.html")}
    assert templates == shipped
    migrations = {Path(n).name for n in names if n.startswith("pg_queue/migrations/")}
    assert {p.name for p in (REPO / "pg_queue/migrations").glob("*.py")} <= migrations
    assert f"{dist_info}/licenses/LICENSE" in names
    metadata = zipfile.ZipFile(wheel).read(f"{dist_info}/METADATA").decode()
    assert "License-Expression: MIT" in metadata
    assert "Requires-Dist: Django<6.2,>=5.2" in metadata


@pytest.mark.parametrize(
    ("python_version", "django_series"), SCENARIOS, ids=[f"py{p}-django{d}" for p, d in SCENARIOS]
)
def test_a_new_django_project_installs_the_wheel_runs_a_job_and_renders_the_admin(
    sites: Any, python_version: str, django_series: str
):
    started = time.monotonic()
    site = sites(python_version, django_series)
    installed = set(site.installed)
    print(
        f"\npy{python_version} Django {django_series}: {len(installed)} packages after "
        f"pip install <wheel>: {sorted(site.installed.items())}"
    )

    assert site.installed["django"].startswith(django_series + "."), site.installed["django"]
    assert RUNTIME - {"typing-extensions"} <= installed
    assert installed <= RUNTIME | RUNTIME_MAYBE, installed - RUNTIME - RUNTIME_MAYBE
    assert not installed & OPTIONAL
    site_packages = _ok(
        _run([str(site.python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"])
    ).strip()
    assert not {"backend", "workers"} & {p.name for p in Path(site_packages).iterdir()}

    check = site.manage("check")
    assert check.returncode == 0, check.stderr
    if django_series in ("5.2", "6.0"):  # no admin actions on detail pages: said, not a crash
        assert "pg_queue.I001" in check.stdout + check.stderr
    _ok(site.manage("migrate", "--verbosity", "0"))
    version = site.script(
        "import json, pg_queue, importlib.metadata as m\n"
        "print(json.dumps([pg_queue.__version__, m.version('pg-queue')]))"
    )
    assert version[0] == version[1]

    ran = site.script(ENQUEUE_AND_WORK)
    assert ran["worker"][0] == 0, ran["worker"][1]
    assert ran["ok"] == ["succeeded", 5]
    assert ran["bad"][0] == "failed"
    assert "doomed on purpose" in ran["bad"][1]

    admin = site.script(RENDER_ADMIN)
    pages = admin["pages"]
    broken = {url: page for url, page in pages.items() if page[1] != 200}
    assert not broken, broken
    kinds = [page[0] for page in pages.values()]
    assert {"app index", "overview"} <= set(kinds)
    assert len(admin["templated"]) >= 4, admin["templated"]  # jobs, dead letters, results, workers
    assert all(admin["templated"].values()), admin["templated"]
    assert sum(kind.startswith("change ") for kind in kinds) >= 3  # a job, a dead letter, a result
    print(
        f"py{python_version} Django {django_series}: {len(pages)} admin pages rendered; "
        f"Django install {site.seconds['django']:.1f} s, wheel install "
        f"{site.seconds['wheel']:.1f} s; the whole test {time.monotonic() - started:.1f} s"
    )


def test_without_extras_each_feature_names_the_extra_to_install(sites: Any):
    site = sites("3.12", "6.1")
    _ok(site.manage("migrate", "--verbosity", "0"))

    with_celery = site.settings_variant("with_celery", {"CELERY_APP": "shop.celery:app"})
    celery = site.manage("check", "--settings", with_celery)
    assert celery.returncode != 0
    assert "pg_queue.E016" in celery.stderr, celery.stderr
    assert "pip install 'pg-queue[celery]'" in celery.stderr
    assert "Traceback" not in celery.stderr

    with_flags = site.settings_variant("with_flags", {"FLAG_PROVIDER": "shop.flags.provider"})
    flags = site.manage("check", "--settings", with_flags)
    assert flags.returncode != 0
    assert "pg_queue.E017" in flags.stderr, flags.stderr
    assert "pip install 'pg-queue[flags]'" in flags.stderr

    status = site.manage("pg_queue_status")
    assert status.returncode == 1
    assert "CommandError" in status.stderr, status.stderr
    assert "pip install 'pg-queue[cli]'" in status.stderr
    assert "Traceback" not in status.stderr
    assert "queues" in json.loads(_ok(site.manage("pg_queue_status", "--json")))

    routing = site.settings_variant("with_routing", {"ROUTING_ENABLED": True})
    routed = site.script(NO_EXTRAS, settings_module=routing)
    assert routed["missing"] == ["celery", "openfeature", "prometheus_client", "rich"]
    assert routed["decision"] == [True, "flag"]  # the ROUTING_* rules need no OpenFeature

    port = _free_port()
    worker = subprocess.Popen(
        [str(site.python), "manage.py", "run_pg_worker", "--health-port", str(port)],
        cwd=site.root,
        env=site.env_for(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + HEALTH_TIMEOUT
        health: tuple[int, str] = (0, "")
        while time.monotonic() < deadline and worker.poll() is None:
            try:
                health = _http_get(port, "/healthz")
            except OSError:
                time.sleep(0.2)
                continue
            if health[0] == 200:
                break
            time.sleep(0.2)
        assert health[0] == 200, health
        metrics = _http_get(port, "/metrics")
        assert metrics[0] == 501, metrics
        assert "pip install 'pg-queue[metrics]'" in metrics[1]
    finally:
        worker.send_signal(signal.SIGTERM)
        log = worker.communicate(timeout=60)[0]
    assert worker.returncode == 0, log


def test_a_psycopg2_project_is_told_by_check_to_install_psycopg_3(
    tmp_path: Path, wheel: Path, databases: list[str]
):
    """Django runs on psycopg2; pg_queue's own SQL needs psycopg 3, and check says so."""
    python = _new_venv(tmp_path, "3.12")
    _pip(python, "install", "--quiet", "Django~=6.1.0", "psycopg2-binary", "orjson")
    _pip(python, "install", "--quiet", "--no-deps", str(wheel))
    assert "psycopg" not in _installed(python)
    site = _start_project(python, tmp_path / "site", databases)

    check = site.manage("check")

    assert check.returncode != 0
    assert "pg_queue.E018" in check.stderr, check.stderr
    assert 'pip install "psycopg[binary]"' in check.stderr
    assert "Traceback" not in check.stderr, check.stderr
