"""The one flag, ``pg_queue_enabled``, evaluated through OpenFeature on every routed call.

``use_postgres()`` never raises: no provider, a provider error, a non-boolean value or the kill
switch all mean Celery (fail closed). Errors are logged at most once per ``LOG_BURST_SECONDS``
per kind and counted in ``pg_queue_flag_fallback``.

The default provider is OpenFeature's in-memory provider with one flag whose evaluator reads
``PG_QUEUE`` routing settings, so a team can roll out by percentage or tenant with no flag
service. Point ``PG_QUEUE['FLAG_PROVIDER']`` at a factory to use a real one (Flipt, LaunchDarkly,
flagd...), or at "global" to use the provider the application already registered.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from django.utils.module_loading import import_string
from openfeature import api
from openfeature.evaluation_context import EvaluationContext
from openfeature.flag_evaluation import FlagResolutionDetails, Reason
from openfeature.provider import FeatureProvider
from openfeature.provider.in_memory_provider import InMemoryFlag, InMemoryProvider
from prometheus_client import Counter

from pg_queue.core.conf import queue_settings

logger = logging.getLogger("pg_queue.routing")

FLAG_KEY = "pg_queue_enabled"
#: OpenFeature domain our provider is bound to, so the app's global provider is untouched.
DOMAIN = "pg_queue"
LOG_BURST_SECONDS = 60.0

FLAG_FALLBACK = Counter(
    "pg_queue_flag_fallback", "Routed calls sent to Celery because the flag failed", ["kind"]
)


@dataclass(frozen=True, kw_only=True, slots=True)
class FlagDecision:
    use_postgres: bool
    reason: str  # e.g. "flag", "kill_switch", "error:PROVIDER_NOT_READY"


def _bucket(key: str) -> int:
    """A stable 0-99 bucket for a targeting key (same tenant, same answer, every process)."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "big") % 100


def _evaluate_settings(flag: InMemoryFlag[Any], ctx: EvaluationContext) -> FlagResolutionDetails:
    conf = queue_settings()
    tenant = ctx.targeting_key or ""
    task_name = str((ctx.attributes or {}).get("task_name", ""))
    if tenant and tenant in conf.routing_exclude_tenants:
        value, why = False, "tenant excluded"
    elif conf.routing_tasks and task_name not in conf.routing_tasks:
        # Before the tenant list: ROUTING_TASKS limits what may ride Postgres at all, so a
        # canary tenant must not pull an unlisted task onto it.
        value, why = False, "task not in ROUTING_TASKS"
    elif tenant and tenant in conf.routing_tenants:
        value, why = True, "tenant included"
    elif not conf.routing_enabled:
        value, why = False, "routing disabled"
    elif conf.routing_percent >= 100:
        value, why = True, "enabled for all"
    else:
        value = _bucket(tenant) < conf.routing_percent if tenant else False
        why = f"percentage {conf.routing_percent}"
    return FlagResolutionDetails(
        value=value,
        reason=Reason.TARGETING_MATCH,
        variant="on" if value else "off",
        flag_metadata={"why": why},
    )


def settings_provider() -> FeatureProvider:
    """The default provider: in-memory, evaluated from ``PG_QUEUE`` routing settings."""
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
    try:
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


def reset_provider() -> None:
    """Forget the configured provider (tests, or after changing FLAG_PROVIDER at run time)."""
    global _configured_for
    with _setup_lock:
        _configured_for = None
