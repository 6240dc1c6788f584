"""The one flag, ``pg_queue_enabled``, evaluated through OpenFeature on every routed call.

``use_postgres()`` never raises: no provider, a provider error, a non-boolean value or the kill
switch all mean Celery (fail closed). Errors are logged at most once per ``LOG_BURST_SECONDS``
per kind and counted in ``pg_queue_flag_fallback``.

The default provider is OpenFeature's in-memory provider with one flag whose evaluator reads
``PG_QUEUE`` routing settings, so a team can roll out by percentage or tenant with no flag
service. Point ``PG_QUEUE['FLAG_PROVIDER']`` at a factory to use a real one (Flipt, LaunchDarkly,
flagd...), or at "global" to use the provider the application already registered.

OpenFeature is the optional ``pg-queue[flags]`` extra, needed only for ``FLAG_PROVIDER``.
Without it the default rules are evaluated directly (same answers, same reason); a configured
``FLAG_PROVIDER`` cannot be, so every call answers Celery and ``manage.py check`` reports
``pg_queue.E017`` naming the extra.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from django.utils.module_loading import import_string

from pg_queue import metrics
from pg_queue.core.conf import queue_settings

if TYPE_CHECKING:
    from openfeature.evaluation_context import EvaluationContext
    from openfeature.flag_evaluation import FlagResolutionDetails
    from openfeature.provider import FeatureProvider
    from openfeature.provider.in_memory_provider import InMemoryFlag

logger = logging.getLogger("pg_queue.routing")

FLAG_KEY = "pg_queue_enabled"
#: OpenFeature domain our provider is bound to, so the app's global provider is untouched.
DOMAIN = "pg_queue"
LOG_BURST_SECONDS = 60.0
#: What to install for ``FLAG_PROVIDER``; named by the log line and by ``manage.py check``.
FLAGS_EXTRA = "pg-queue[flags]"

FLAG_FALLBACK = metrics.counter(
    "pg_queue_flag_fallback", "Routed calls sent to Celery because the flag failed", ["kind"]
)


def openfeature_installed() -> bool:
    """Whether openfeature-sdk can be imported (the ``pg-queue[flags]`` extra); imports nothing."""
    try:
        return importlib.util.find_spec("openfeature") is not None
    except (ImportError, ValueError):  # a finder that refuses it says the same
        return False


@dataclass(frozen=True, kw_only=True, slots=True)
class FlagDecision:
    use_postgres: bool
    reason: str  # e.g. "flag", "kill_switch", "error:PROVIDER_NOT_READY"


def _bucket(key: str) -> int:
    """A stable 0-99 bucket for a targeting key (same tenant, same answer, every process)."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "big") % 100


def _settings_decision(tenant: str, task_name: str) -> tuple[bool, str]:
    """The default rules, read from ``PG_QUEUE`` routing settings: (value, why)."""
    conf = queue_settings()
    if tenant and tenant in conf.routing_exclude_tenants:
        return False, "tenant excluded"
    if conf.routing_tasks and task_name not in conf.routing_tasks:
        # Before the tenant list: ROUTING_TASKS limits what may ride Postgres at all, so a
        # canary tenant must not pull an unlisted task onto it.
        return False, "task not in ROUTING_TASKS"
    if tenant and tenant in conf.routing_tenants:
        return True, "tenant included"
    if not conf.routing_enabled:
        return False, "routing disabled"
    if conf.routing_percent >= 100:
        return True, "enabled for all"
    value = _bucket(tenant) < conf.routing_percent if tenant else False
    return value, f"percentage {conf.routing_percent}"


def _evaluate_settings(flag: InMemoryFlag[Any], ctx: EvaluationContext) -> FlagResolutionDetails:
    from openfeature.flag_evaluation import FlagResolutionDetails, Reason

    value, why = _settings_decision(
        ctx.targeting_key or "", str((ctx.attributes or {}).get("task_name", ""))
    )
    return FlagResolutionDetails(
        value=value,
        reason=Reason.TARGETING_MATCH,
        variant="on" if value else "off",
        flag_metadata={"why": why},
    )


def settings_provider() -> FeatureProvider:
    """The default provider: in-memory, evaluated from ``PG_QUEUE`` routing settings."""
    from openfeature.provider.in_memory_provider import InMemoryFlag, InMemoryProvider

    flag = InMemoryFlag(
        default_variant="off",
        variants={"on": True, "off": False},
        context_evaluator=_evaluate_settings,
    )
    return InMemoryProvider({FLAG_KEY: flag})


_setup_lock = threading.Lock()
_configured_for: str | None = None
_last_logged: dict[str, float] = {}


def _ensure_provider() -> None:
    global _configured_for
    path = queue_settings().flag_provider
    if _configured_for == path:
        return
    from openfeature import api

    with _setup_lock:
        if _configured_for == path:
            return
        if path == "global":
            pass  # evaluate with the app's default provider
        elif path:
            api.set_provider(import_string(path)(), domain=DOMAIN)
        else:
            api.set_provider(settings_provider(), domain=DOMAIN)
        _configured_for = path


def _log_burst(kind: str, message: str, *args: Any) -> None:
    now = time.monotonic()
    if now - _last_logged.get(kind, -LOG_BURST_SECONDS) >= LOG_BURST_SECONDS:
        _last_logged[kind] = now
        logger.warning(message, *args)


def use_postgres(*, task_name: str, queue: str, org_id: str = "") -> FlagDecision:
    """Should this call ride Postgres? Never raises; any doubt answers Celery."""
    if not queue_settings().transport_enabled:
        return FlagDecision(use_postgres=False, reason="kill_switch")
    if not openfeature_installed():
        return _decide_without_openfeature(task_name, org_id)
    try:
        from openfeature import api
        from openfeature.evaluation_context import EvaluationContext

        _ensure_provider()
        client = api.get_client(DOMAIN if queue_settings().flag_provider != "global" else None)
        details = client.get_boolean_details(
            FLAG_KEY,
            False,
            EvaluationContext(
                targeting_key=org_id or None,
                attributes={"task_name": task_name, "queue": queue, "org_id": org_id},
            ),
        )
    except Exception as exc:  # a provider may raise anything; the answer is still Celery
        FLAG_FALLBACK.labels("exception").inc()
        _log_burst("exception", "flag %s evaluation raised %r; routing to Celery", FLAG_KEY, exc)
        return FlagDecision(use_postgres=False, reason=f"error:{type(exc).__name__}")
    if details.error_code is not None:
        kind = str(details.error_code)
        FLAG_FALLBACK.labels(kind).inc()
        _log_burst(
            kind,
            "flag %s evaluation failed (%s: %s); routing to Celery",
            FLAG_KEY,
            kind,
            details.error_message,
        )
        return FlagDecision(use_postgres=False, reason=f"error:{kind}")
    if not isinstance(details.value, bool):
        FLAG_FALLBACK.labels("type").inc()
        _log_burst(
            "type", "flag %s returned %r, not a bool; routing to Celery", FLAG_KEY, details.value
        )
        return FlagDecision(use_postgres=False, reason="error:TYPE_MISMATCH")
    return FlagDecision(use_postgres=details.value, reason="flag")


def _decide_without_openfeature(task_name: str, org_id: str) -> FlagDecision:
    """No ``flags`` extra: the default rules still apply; a configured provider cannot."""
    if not queue_settings().flag_provider:
        value, _why = _settings_decision(org_id, task_name)
        return FlagDecision(use_postgres=value, reason="flag")
    kind = "FLAGS_EXTRA_MISSING"
    FLAG_FALLBACK.labels(kind).inc()
    _log_burst(
        kind,
        "PG_QUEUE['FLAG_PROVIDER'] is set but openfeature-sdk is not installed "
        "(pip install '%s'); routing to Celery",
        FLAGS_EXTRA,
    )
    return FlagDecision(use_postgres=False, reason=f"error:{kind}")


def reset_provider() -> None:
    """Forget the configured provider (tests, or after changing FLAG_PROVIDER at run time)."""
    global _configured_for
    with _setup_lock:
        _configured_for = None
