"""Worker roles of the example deployment: which queues each kind of worker drains, and how.

A role is one kind of ``run_pg_worker`` process: its queues (with claim weights), its threads
and processes, its default time limit, how long running jobs get after SIGTERM, and the port of
its ``/healthz``. Each role is one service of ``docker/docker-compose.yml`` named
``worker-<name>``, whose ``command`` is exactly ``role.command()``;
``tests/acceptance/deployment`` checks the two against each other (the compose file stays hand-
written and readable; the test says what to change when they disagree). The Celery worker of the
same deployment consumes ``celery_queues()``, the union of every role's queues, so the
``pg_queue_enabled`` flag can send any call either way.

Roles of the example backend:

- ``default``: short jobs. ``workers.tasks`` (queue ``default``) and the execution callbacks
  (``execution-callbacks``), which only move an execution's status and must never wait behind a
  long run. Threads, no time limit beyond the tasks' own.
- ``executions``: ``workers.executions.run_execution`` (queue ``executions``), the long,
  tenant-driven work. Two processes under the supervisor and a 300 s default time limit: a run
  that overruns is failed and its process restarted, which frees the stuck thread. A longer
  shutdown grace lets a run in flight finish on a deploy.

This module imports nothing from Django, so settings, tests and tools can read it anywhere.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: Seconds the process manager waits after SIGTERM beyond ``shutdown_grace`` before SIGKILL:
#: time for the worker to hand back prefetched jobs and write the outcomes of finished ones.
STOP_MARGIN = 10.0
#: Address the health server listens on inside a container (reachable by Docker's healthcheck
#: and by a Prometheus scraper on the compose network).
HEALTH_HOST = "0.0.0.0"

_NAME = re.compile(r"^[a-z][a-z0-9-]*$")
_QUEUE = re.compile(r"^[A-Za-z0-9._-]+$")


def _seconds(value: float) -> str:
    """``30.0`` -> ``"30"``, ``2.5`` -> ``"2.5"``: how the command line and compose spell it."""
    return f"{value:g}"


@dataclass(frozen=True, kw_only=True)
class WorkerRole:
    """One kind of worker process; ``command()`` is its ``run_pg_worker`` command line.

    ``queues`` pairs each queue with its claim weight (weight 3 is tried first three times as
    often as weight 1). ``time_limit`` 0 means none beyond each task's own ``time_limit``.
    Invalid values raise ``ValueError`` when the role is defined, not when a worker starts.
    """

    name: str
    queues: tuple[tuple[str, int], ...]
    concurrency: int
    processes: int = 1
    time_limit: float = 0.0
    shutdown_grace: float = 30.0
    health_port: int
    description: str = ""

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(f"role name {self.name!r}: lowercase letters, digits and '-'")
        if not self.queues:
            raise ValueError(f"role {self.name!r} drains no queue")
        names = [queue for queue, _ in self.queues]
        if len(set(names)) != len(names):
            raise ValueError(f"role {self.name!r} names a queue twice: {names}")
        for queue, weight in self.queues:
            if not _QUEUE.match(queue):
                raise ValueError(f"role {self.name!r}: queue name {queue!r} is not allowed")
            if weight < 1:
                raise ValueError(f"role {self.name!r}: weight of {queue!r} must be >= 1")
        if self.concurrency < 1 or self.processes < 1:
            raise ValueError(f"role {self.name!r}: concurrency and processes must be >= 1")
        if self.time_limit < 0 or self.shutdown_grace < 0:
            raise ValueError(f"role {self.name!r}: time_limit and shutdown_grace must be >= 0")
        if not 1024 <= self.health_port <= 65535:
            raise ValueError(f"role {self.name!r}: health_port must be 1024..65535")

    @property
    def service(self) -> str:
        """Its service name in docker/docker-compose.yml."""
        return f"worker-{self.name}"

    @property
    def queue_names(self) -> tuple[str, ...]:
        return tuple(queue for queue, _ in self.queues)

    @property
    def queues_arg(self) -> str:
        """``--queues`` value: ``default=3,execution-callbacks=1``."""
        return ",".join(f"{queue}={weight}" for queue, weight in self.queues)

    @property
    def stop_grace_period(self) -> float:
        """Seconds between SIGTERM and SIGKILL the process manager must allow."""
        return self.shutdown_grace + STOP_MARGIN

    @property
    def health_url(self) -> str:
        """What the container's healthcheck fetches: 200 healthy, 503 with the problems."""
        return f"http://127.0.0.1:{self.health_port}/healthz"

    def command(self, python: str = "python") -> list[str]:
        """The ``run_pg_worker`` command line of this role, from the project root."""
        argv = [
            python,
            "manage.py",
            "run_pg_worker",
            f"--queues={self.queues_arg}",
            f"--concurrency={self.concurrency}",
            f"--processes={self.processes}",
        ]
        if self.time_limit:
            argv.append(f"--time-limit={_seconds(self.time_limit)}")
        argv += [
            f"--shutdown-grace={_seconds(self.shutdown_grace)}",
            f"--health-host={HEALTH_HOST}",
            f"--health-port={self.health_port}",
        ]
        return argv


ROLES: tuple[WorkerRole, ...] = (
    WorkerRole(
        name="default",
        queues=(("default", 3), ("execution-callbacks", 1)),
        concurrency=8,
        health_port=8001,
        description="short jobs: workers.tasks and the execution callbacks",
    ),
    WorkerRole(
        name="executions",
        queues=(("executions", 1),),
        concurrency=4,
        processes=2,
        time_limit=300.0,
        shutdown_grace=60.0,
        health_port=8002,
        description="long runs: workers.executions.run_execution, time-limited, two processes",
    ),
)


def _check_roles(roles: tuple[WorkerRole, ...]) -> None:
    names = [r.name for r in roles]
    ports = [r.health_port for r in roles]
    if len(set(names)) != len(names):
        raise ValueError(f"two roles share a name: {names}")
    if len(set(ports)) != len(ports):
        raise ValueError(f"two roles share a health port: {ports}")


_check_roles(ROLES)


def role(name: str) -> WorkerRole:
    """The role called ``name``; ``KeyError`` lists the known ones."""
    for candidate in ROLES:
        if candidate.name == name:
            return candidate
    raise KeyError(f"no worker role {name!r}; known: {', '.join(r.name for r in ROLES)}")


def celery_queues() -> tuple[str, ...]:
    """Every queue some role drains, in role order: what the Celery worker must consume."""
    seen: dict[str, None] = {}
    for candidate in ROLES:
        for queue in candidate.queue_names:
            seen.setdefault(queue)
    return tuple(seen)
