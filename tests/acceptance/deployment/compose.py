"""Reading docker/docker-compose.yml and docker/Dockerfile the way Docker would, without Docker.

``load_compose()`` parses the compose file with PyYAML (anchors and ``<<`` merges included) and
applies compose's ``${VAR:-default}`` interpolation with an empty environment, i.e. what a plain
``docker compose up`` on a fresh checkout runs. ``Service`` gives typed access to the keys the
deployment tests look at. ``image_env()`` reads the Dockerfile's ``ENV`` lines, which every
container of the image starts with.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.harness import REPO_ROOT

COMPOSE_FILE = REPO_ROOT / "docker" / "docker-compose.yml"
DOCKERFILE = REPO_ROOT / "docker" / "Dockerfile"

_VARIABLE = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?P<op>:?[-?])?(?P<arg>[^}]*)\}"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(us|ms|s|m|h)")
_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def interpolate(text: str, environ: Mapping[str, str] | None = None) -> str:
    """Compose's variable substitution: ``$$`` is a literal ``$``; ``${A:-d}``, ``${A-d}``,
    ``${A:?msg}``, ``${A}`` and ``$A`` read ``environ`` (empty by default)."""
    env = environ or {}

    def substitute(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        name = match["braced"] or match["bare"]
        op, arg = match["op"] or "", match["arg"] or ""
        value = env.get(name)
        if op == ":-":
            return value if value else arg
        if op == "-":
            return value if value is not None else arg
        if op in (":?", "?"):
            if value is None or (op == ":?" and not value):
                raise ValueError(f"compose variable {name} is required: {arg}")
            return value
        return value or ""

    return _VARIABLE.sub(substitute, text)


def _interpolate_tree(node: Any) -> Any:
    if isinstance(node, str):
        return interpolate(node)
    if isinstance(node, list):
        return [_interpolate_tree(item) for item in node]
    if isinstance(node, dict):
        return {key: _interpolate_tree(value) for key, value in node.items()}
    return node


def duration(text: str | int | float) -> float:
    """Seconds of a compose duration: ``"1m30s"`` -> 90.0, ``"500ms"`` -> 0.5."""
    if isinstance(text, int | float):
        return float(text)
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text.replace(" ", ""):
        raise ValueError(f"not a compose duration: {text!r}")
    return sum(float(number) * _UNITS[unit] for number, unit in parts)


@dataclass(frozen=True)
class Service:
    """One entry of ``services:``, after merges and interpolation."""

    name: str
    spec: Mapping[str, Any]

    @property
    def built(self) -> bool:
        """Built from this repository's Dockerfile (its command runs our code)."""
        return "build" in self.spec

    @property
    def image(self) -> str:
        return str(self.spec.get("image", ""))

    @property
    def command(self) -> list[str]:
        command = self.spec.get("command")
        if command is None:
            return []
        return shlex.split(command) if isinstance(command, str) else [str(a) for a in command]

    @property
    def environment(self) -> dict[str, str]:
        env = self.spec.get("environment") or {}
        if isinstance(env, list):
            pairs = (item.split("=", 1) for item in env)
            return {pair[0]: (pair[1] if len(pair) > 1 else "") for pair in pairs}
        return {str(k): "" if v is None else str(v) for k, v in env.items()}

    @property
    def depends_on(self) -> dict[str, str]:
        """Dependency -> condition (a list form means ``service_started``)."""
        deps = self.spec.get("depends_on") or {}
        if isinstance(deps, list):
            return dict.fromkeys(deps, "service_started")
        return {
            name: str((d or {}).get("condition", "service_started")) for name, d in deps.items()
        }

    @property
    def healthcheck(self) -> list[str]:
        """The healthcheck ``test`` as compose runs it: ``["CMD", ...]`` or ``["CMD-SHELL", s]``."""
        check = self.spec.get("healthcheck") or {}
        if check.get("disable"):
            return []
        test = check.get("test")
        if test is None:
            return []
        if isinstance(test, str):
            return ["CMD-SHELL", test]
        return [str(part) for part in test]

    def healthcheck_seconds(self, key: str, default: float) -> float:
        value = (self.spec.get("healthcheck") or {}).get(key)
        return default if value is None else duration(value)

    @property
    def expose(self) -> tuple[int, ...]:
        """Ports the service listens on inside its container."""
        return tuple(int(str(port).split("/")[0]) for port in self.spec.get("expose") or ())

    @property
    def one_shot(self) -> bool:
        """Runs to completion (``restart: "no"``), like migrate."""
        return str(self.spec.get("restart", "no")) == "no" and self.built

    @property
    def profiles(self) -> tuple[str, ...]:
        return tuple(self.spec.get("profiles") or ())

    @property
    def stop_grace_period(self) -> float:
        """Seconds Docker waits after SIGTERM before SIGKILL (its default is 10 s)."""
        return duration(self.spec.get("stop_grace_period", "10s"))


@dataclass(frozen=True)
class Compose:
    path: Path
    raw: Mapping[str, Any]
    services: Mapping[str, Service]

    def active(self) -> dict[str, Service]:
        """The services ``docker compose up`` starts (no profile)."""
        return {name: s for name, s in self.services.items() if not s.profiles}

    def running(self, program: str) -> dict[str, Service]:
        """Active built services whose command runs ``program`` (``run_pg_worker``, ...)."""
        return {n: s for n, s in self.active().items() if s.built and program in s.command}


def load_compose(path: Path = COMPOSE_FILE) -> Compose:
    raw = _interpolate_tree(yaml.safe_load(path.read_text()))
    services = {name: Service(name, spec or {}) for name, spec in raw["services"].items()}
    return Compose(path=path, raw=raw, services=services)


def image_env(path: Path = DOCKERFILE) -> dict[str, str]:
    """The ``ENV`` of the Dockerfile (``ENV A=1 B=2`` form, line continuations joined)."""
    text = re.sub(r"\\\n", " ", path.read_text())
    env: dict[str, str] = {}
    for line in text.splitlines():
        words = line.strip().split(None, 1)
        if len(words) == 2 and words[0].upper() == "ENV":
            for item in shlex.split(words[1]):
                key, sep, value = item.partition("=")
                if not sep:
                    raise ValueError(f"Dockerfile ENV without '=' is not handled: {line!r}")
                env[key] = value
    return env
