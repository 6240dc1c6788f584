"""Run the services of docker/docker-compose.yml as local processes, the way compose would.

Each built service's ``command`` runs from the repository root (the image's WORKDIR) with the
image's ``ENV``, the service's ``environment`` and the virtualenv first on ``PATH`` (the image has
``python``, ``gunicorn`` and ``celery`` on its ``PATH``). What a container would reach by service
name is mapped onto this machine (``Endpoints``):

- ``postgres:5432/<db>`` -> the test database pytest-django created;
- ``pgbouncer:6432/<db>`` -> a real PgBouncer in transaction mode in front of that database;
- ``rabbitmq:5672/<vhost>`` -> the local RabbitMQ, on a vhost of the test's own.

A port a service listens on (its ``expose``) becomes a free loopback port, rewritten in its
command and in its healthcheck alike (``0.0.0.0`` becomes ``127.0.0.1``): that is Docker's port
mapping, and it lets two runs share one machine. Services start in ``depends_on`` order, each
when its conditions hold (``service_healthy``, ``service_completed_successfully``,
``service_started``), and count as healthy when their own compose healthcheck command exits 0.
The image-only services (postgres, pgbouncer, rabbitmq) are not started: their local stand-ins
already run, and their healthchecks run against those stand-ins.
Every wait has a deadline; ``down()`` stops everything (SIGTERM, then SIGKILL of the tree).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from tests.acceptance.deployment.compose import REPO_ROOT, Compose, Service, image_env
from tests.harness import descendants, free_port

#: Seconds between two healthcheck attempts of one service (compose's own interval is for
#: production; locally we want to know as soon as it passes).
PROBE_INTERVAL = 0.3
#: Seconds a service gets to exit after SIGTERM in ``down()`` before its tree is SIGKILLed.
STOP_TIMEOUT = 20.0
#: Environment of the test process that must not leak into a service (the compose file sets
#: what it wants; anything else would make the local run differ from the container).
_LEAKY_PREFIXES = ("PG_QUEUE_", "CELERY_", "DJANGO_")
_LEAKY_KEYS = {"DATABASE_URL", "SECRET_KEY", "ALLOWED_HOSTS", "DEBUG", "CONN_MAX_AGE"}


def container_env(service: Service, url: Callable[[str], str] = str) -> dict[str, str]:
    """A service's environment on this machine: the image's ``ENV``, then the service's
    ``environment`` (each value through ``url``, which maps compose hostnames), the virtualenv
    first on ``PATH``; nothing of the test process's own settings."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(_LEAKY_PREFIXES) and k not in _LEAKY_KEYS
    }
    if service.built:
        env.update(image_env())
    for key, value in service.environment.items():
        env[key] = url(value)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["HOSTNAME"] = socket.gethostname()  # Docker sets it; CMD-SHELL checks may use it
    return env


def _with_query(local_url: str, compose_url: str) -> str:
    """``local_url`` carrying the compose URL's query options too (local ones win)."""
    local = urlsplit(local_url)
    query = dict(parse_qsl(urlsplit(compose_url).query))
    query.update(parse_qsl(local.query))
    return urlunsplit(local._replace(query=urlencode(query)))


@dataclass(frozen=True)
class Endpoints:
    """Where the compose network's names lead on this machine."""

    database_url: str  # the test database, direct
    pooler_url: str  # the test PgBouncer (transaction mode) in front of it
    pooler_port: int
    broker_url: str  # amqp://...@127.0.0.1:5672/<the test's vhost>

    @property
    def database_host_port(self) -> tuple[str, int]:
        parts = urlsplit(self.database_url)
        return parts.hostname or "127.0.0.1", parts.port or 5432

    def url(self, value: str) -> str:
        """A compose URL with a service host, as this machine reaches it; others unchanged."""
        parts = urlsplit(value)
        if not parts.scheme or not parts.netloc:
            return value
        host = parts.hostname
        if host == "postgres":
            return _with_query(self.database_url, value)
        if host == "pgbouncer":
            return _with_query(self.pooler_url, value)
        if host == "rabbitmq":
            return self.broker_url
        return value

    def stand_in(self, service: str) -> tuple[str, int]:
        """(host, port) of the local stand-in of an image-only service."""
        if service == "postgres":
            return self.database_host_port
        if service == "pgbouncer":
            return "127.0.0.1", self.pooler_port
        if service == "rabbitmq":
            broker = urlsplit(self.broker_url)
            return broker.hostname or "127.0.0.1", broker.port or 5672
        raise AssertionError(f"image service {service!r} has no local stand-in in Endpoints")


@dataclass
class ServiceRun:
    """One service's local life: its process (built services), probe, timings."""

    service: Service
    env: dict[str, str]
    argv: list[str]
    probe_argv: list[str]
    log_path: Path
    state: str = "waiting"  # waiting -> started -> healthy | completed
    proc: subprocess.Popen[bytes] | None = None
    probe: subprocess.Popen[str] | None = None
    probe_started: float = 0.0
    next_probe: float = 0.0
    last_probe_output: str = ""
    started_at: float = 0.0
    ready_at: float = 0.0
    stopped: tuple[int | None, float, bool] | None = None  # (exit code, seconds, killed)
    tree: set[int] = field(default_factory=set)

    @property
    def name(self) -> str:
        return self.service.name

    def log(self, tail: int = 4000) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            text = ""
        return f"--- {self.name} (last {tail} chars of {self.log_path}) ---\n{text[-tail:]}"


class LocalStack:
    """``stack.up()`` brings the compose services up locally; ``stack.down()`` stops them."""

    def __init__(self, compose: Compose, endpoints: Endpoints, log_dir: Path) -> None:
        self.compose = compose
        self.endpoints = endpoints
        self.log_dir = log_dir
        self.t0 = time.monotonic()
        self.ports: dict[str, dict[int, int]] = {}
        self.runs: dict[str, ServiceRun] = {
            name: self._plan(service) for name, service in compose.active().items()
        }

    # --- mapping a service onto this machine ---------------------------------------------------

    def local_port(self, service: str, container_port: int) -> int:
        return self.ports[service][container_port]

    def _rewrite(self, text: str, ports: Mapping[int, int]) -> str:
        text = text.replace("0.0.0.0", "127.0.0.1")
        for inside, outside in ports.items():
            text = re.sub(rf"(?<!\d){inside}(?!\d)", str(outside), text)
        return text

    def service_env(self, service: Service) -> dict[str, str]:
        """The container's environment, as this machine reaches the compose network."""
        return container_env(service, self.endpoints.url)

    def _plan(self, service: Service) -> ServiceRun:
        if service.built:
            ports = {port: free_port() for port in service.expose}
            env = self.service_env(service)
        else:
            # Its healthcheck runs against the stand-in: the ports it listens on become the
            # stand-in's, and libpq tools without -h/-p (pg_isready) find it through PGHOST.
            host, port = self.endpoints.stand_in(service.name)
            ports = dict.fromkeys(service.expose, port)
            env = {**self.service_env(service), "PGHOST": host, "PGPORT": str(port)}
        self.ports[service.name] = ports
        argv = [self._rewrite(arg, ports) for arg in service.command] if service.built else []
        probe = service.healthcheck
        if probe and probe[0] == "CMD-SHELL":
            probe_argv = ["sh", "-c", self._rewrite(probe[1], ports)]
        elif probe and probe[0] == "CMD":
            probe_argv = [self._rewrite(arg, ports) for arg in probe[1:]]
        else:
            probe_argv = []
        return ServiceRun(service, env, argv, probe_argv, self.log_dir / f"{service.name}.log")

    # --- bringing it up ------------------------------------------------------------------------

    def _deps_met(self, run: ServiceRun) -> bool:
        for dep, condition in run.service.depends_on.items():
            state = self.runs[dep].state
            if condition == "service_healthy" and state != "healthy":
                return False
            if condition == "service_completed_successfully" and state != "completed":
                return False
            if condition == "service_started" and state == "waiting":
                return False
        return True

    def _start(self, run: ServiceRun) -> None:
        run.started_at = time.monotonic()
        run.state = "started"
        if not run.service.built:
            if run.probe_argv and shutil.which(run.probe_argv[0], path=run.env["PATH"]) is None:
                # The stand-in runs (the fixtures checked it); only its CLI is missing here.
                print(f"deployment: {run.name} healthcheck not run: {run.probe_argv[0]} missing")
                self._ready(run, "healthy")
            return
        with open(run.log_path, "wb") as log:
            run.proc = subprocess.Popen(
                run.argv,
                cwd=REPO_ROOT,
                env=run.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def _ready(self, run: ServiceRun, state: str) -> None:
        run.state = state
        run.ready_at = time.monotonic()

    def _poll_probe(self, run: ServiceRun, now: float) -> None:
        timeout = run.service.healthcheck_seconds("timeout", 30.0)
        if run.probe is None:
            if now < run.next_probe:
                return
            run.probe = subprocess.Popen(
                run.probe_argv,
                cwd=REPO_ROOT,
                env=run.env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,
            )
            run.probe_started = now
            return
        code = run.probe.poll()
        if code is None and now - run.probe_started < timeout:
            return
        if code is None:
            self._kill_probe(run)
            run.last_probe_output = f"healthcheck timed out after {timeout:g}s"
        else:
            run.last_probe_output = f"exit {code}: {(run.probe.communicate()[0] or '')[-1500:]}"
        run.probe = None
        run.next_probe = now + PROBE_INTERVAL
        if code == 0:
            self._ready(run, "healthy")

    def _kill_probe(self, run: ServiceRun) -> None:
        if run.probe is not None and run.probe.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(run.probe.pid, signal.SIGKILL)
            run.probe.communicate(timeout=10)

    def _step(self, run: ServiceRun, now: float) -> None:
        if run.state == "waiting":
            if self._deps_met(run):
                self._start(run)
            return
        if run.state != "started":
            return
        if run.proc is not None and run.proc.poll() is not None:
            code = run.proc.returncode
            if run.service.one_shot and code == 0:
                self._ready(run, "completed")
                return
            raise AssertionError(f"{run.name} exited with code {code}\n{run.log()}")
        if run.probe_argv:
            self._poll_probe(run, now)
        elif not run.service.one_shot:
            self._ready(run, "healthy")  # nothing to check: started is all compose knows

    def up(self, timeout: float) -> None:
        """Start every service in dependency order; return when all are healthy/completed."""
        unknown = {dep for run in self.runs.values() for dep in run.service.depends_on} - set(
            self.runs
        )
        assert not unknown, f"depends_on names services that do not exist: {unknown}"
        deadline = time.monotonic() + timeout
        while True:
            now = time.monotonic()
            for run in self.runs.values():
                self._step(run, now)
            if all(run.state in ("healthy", "completed") for run in self.runs.values()):
                return
            if now >= deadline:
                raise AssertionError(f"stack not up after {timeout:g}s:\n{self.describe()}")
            time.sleep(0.05)

    def describe(self) -> str:
        lines = []
        for run in self.runs.values():
            lines.append(f"{run.name}: {run.state}; last healthcheck: {run.last_probe_output}")
        lines += [run.log() for run in self.runs.values() if run.proc is not None]
        return "\n".join(lines)

    def timings(self) -> dict[str, float]:
        """Seconds from the start of the stack until each service was healthy/completed."""
        return {
            name: round(run.ready_at - self.t0, 1)
            for name, run in self.runs.items()
            if run.ready_at
        }

    # --- taking it down ------------------------------------------------------------------------

    def down(self) -> dict[str, tuple[int | None, float, bool]]:
        """SIGTERM every running service (as ``docker compose down`` does), wait up to
        ``STOP_TIMEOUT``, then SIGKILL whatever is left of each process tree.

        Returns service -> (exit code, seconds to exit, killed). Safe to call twice.
        """
        running = [r for r in self.runs.values() if r.proc is not None and r.stopped is None]
        for run in self.runs.values():
            self._kill_probe(run)
        started = time.monotonic()
        for run in running:
            assert run.proc is not None
            run.tree = set(descendants(run.proc.pid))
            if run.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    run.proc.send_signal(signal.SIGTERM)
        deadline = started + STOP_TIMEOUT
        for run in running:
            assert run.proc is not None
            killed = False
            try:
                run.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                killed = True
            seconds = time.monotonic() - started
            if killed:
                run.tree |= set(descendants(run.proc.pid))
                with contextlib.suppress(ProcessLookupError):
                    run.proc.kill()
            for pid in run.tree:  # children left behind by a parent that exited or was killed
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            run.proc.wait(timeout=10)
            run.stopped = (None if killed else run.proc.returncode, round(seconds, 1), killed)
        return {r.name: r.stopped for r in self.runs.values() if r.stopped is not None}
