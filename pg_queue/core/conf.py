"""The one place that reads ``settings.PG_QUEUE``.

Every default is a named constant here, next to the reason it has that value. Code elsewhere asks
``queue_settings()`` and never touches ``django.conf.settings.PG_QUEUE`` directly, so a typo in a
key is caught once (``manage.py check``) instead of being silently ignored in a worker.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from functools import cache
from typing import Any

from django.conf import settings
from django.core.signals import setting_changed

#: Queue a task lands on when neither the task nor the call names one (Celery's default too).
DEFAULT_QUEUE = "default"
#: Executions started before a job is dead-lettered. Three survives one bad deploy and one blip.
DEFAULT_MAX_ATTEMPTS = 3
#: Seconds a claim stays ours without renewal. The heartbeat renews every third of it, so two
#: missed beats are tolerated before any other worker may re-arm the job.
DEFAULT_LEASE_SECONDS = 30.0
#: Base of the exponential retry backoff (seconds): base * 2**(attempt-1), with equal jitter
#: (half to all of it), capped by RETRY_BACKOFF_MAX.
DEFAULT_RETRY_BACKOFF = 1.0
#: Ceiling of one retry delay, so a flapping dependency does not push a job out for hours.
DEFAULT_RETRY_BACKOFF_MAX = 600.0
#: How long an outcome row is kept. A day comfortably exceeds any sane blocking-call timeout.
DEFAULT_RESULT_TTL_SECONDS = 86_400
#: Threads per worker process. Tasks are mostly I/O bound (HTTP, SQL), so threads pay off.
DEFAULT_CONCURRENCY = 8
#: Most rows one claim statement locks; also the prefetch beyond busy threads.
DEFAULT_BATCH_SIZE = 100
#: Longest idle sleep between polls when no NOTIFY arrives (also bounds delayed-job lateness).
DEFAULT_POLL_INTERVAL_MAX = 0.5
#: First idle sleep; doubled after each empty poll up to the maximum.
DEFAULT_POLL_INTERVAL_MIN = 0.01
#: Wake idle workers with LISTEN/NOTIFY. Off behind PgBouncer transaction pooling.
DEFAULT_NOTIFY = True
#: Let psycopg prepare the worker's statements (planned per execution: plan_cache_mode is set
#: for the session). Off behind a transaction pooler, which would not keep that session setting.
DEFAULT_PREPARED_STATEMENTS = True
#: Seconds between the re-arm sweeps every worker runs (expired leases go back to ready).
DEFAULT_REARM_INTERVAL = 5.0
#: Seconds between result-retention sweeps; each sweep deletes in bounded batches until no
#: expired result is left, so retention keeps up with any drain rate.
DEFAULT_RESULT_SWEEP_INTERVAL = 60.0
#: Worker connections: longest wait for a row or table lock (seconds; capped at a quarter of
#: LEASE_SECONDS; 0 = no limit). An operator's open transaction holding one row must not stall
#: a finish: the write is retried later and the rest go on.
DEFAULT_LOCK_TIMEOUT = 2.0
#: Worker connections: longest any one statement may run (seconds; 0 = no limit). Every queue
#: statement is bounded (batches), so hitting this means something else is wrong.
DEFAULT_STATEMENT_TIMEOUT = 30.0
#: Largest result a task may return, as JSON bytes. jsonb stops at 255 MB; a result this big
#: belongs in object storage, and a finish batch holds its results in memory until written.
#: A larger result dead-letters the job ("result not storable") instead of failing every write.
DEFAULT_RESULT_MAX_BYTES = 64 * 1024 * 1024
#: Health: the oldest finished job not yet written may be this old (seconds) before /healthz
#: turns red (the database refuses writes, or the finisher is stuck).
DEFAULT_UNWRITTEN_OUTCOME_MAX_AGE = 60.0
#: Supervisor (--processes): a child unhealthy this long (seconds) is stopped and restarted,
#: even though it has not exited.
DEFAULT_UNHEALTHY_RESTART_AFTER = 60.0
#: Seconds a --burst worker still waits for delayed rows (e.g. retries) before it exits.
DEFAULT_BURST_LOOKAHEAD = 15.0
#: Per-task wall clock limit in seconds; 0 means none (the lease is still renewed).
DEFAULT_TIME_LIMIT = 0.0
#: Dotted path of the Celery app whose tasks the worker may run by name ("" = none).
DEFAULT_CELERY_APP = ""
#: Extra task modules imported by every worker (like Celery's ``imports``).
DEFAULT_IMPORTS: tuple[str, ...] = ()
#: Payload keys whose values are masked in logs and the admin.
DEFAULT_SECRET_KEYS: tuple[str, ...] = ("password", "secret", "token", "api_key", "authorization")
#: Kill switch: False sends every routed call to Celery, whatever the flag says.
DEFAULT_TRANSPORT_ENABLED = True
#: Default in-memory flag provider: is ``pg_queue_enabled`` on at all? Off = all Celery.
DEFAULT_ROUTING_ENABLED = False
#: ...for what share of targeting keys (stable hash of the org/tenant id), 0-100.
DEFAULT_ROUTING_PERCENT = 100
#: ...always on for these tenants / always off for these (both win over the percentage).
DEFAULT_ROUTING_TENANTS: tuple[str, ...] = ()
DEFAULT_ROUTING_EXCLUDE_TENANTS: tuple[str, ...] = ()
#: ...only for these task names (empty: every task).
DEFAULT_ROUTING_TASKS: tuple[str, ...] = ()
#: Dotted path of a zero-argument factory returning an OpenFeature provider for the flag;
#: "" = the in-memory provider above; "global" = whatever provider the app registered globally.
DEFAULT_FLAG_PROVIDER = ""
#: Run the scheduler in every worker (same as ``run_pg_worker --scheduler``); one leader fires.
DEFAULT_SCHEDULER = False
#: Seconds the scheduler's leader lease lasts without renewal; renewed every third of it. A
#: leader killed with ``kill -9`` is replaced within one lease.
DEFAULT_SCHEDULER_LEASE_SECONDS = 15.0
#: Longest sleep of the scheduler between looks at the table (seconds): bounds how late a
#: schedule added in the admin, or a follower's take-over, can be.
DEFAULT_SCHEDULER_POLL = 1.0
#: NOTIFY channel the producer signals and workers listen on (payload: queue name).
NOTIFY_CHANNEL = "pg_queue"
#: Appended to a queue's wake-up payload when the new jobs have a tenant, or a resource key: a
#: worker claiming that queue with a statement that leaves such jobs alone switches at once.
#: Starts each mark (a queue named with it gets no wake-ups, only the workers' polls).
WAKE_MARK = "\x1f"
TENANT_WAKE, KEY_WAKE = WAKE_MARK + "tenant", WAKE_MARK + "key"


def wake_payload(queue: str, tenant_key: str = "", resource_key: str | None = None) -> str:
    """The ``NOTIFY_CHANNEL`` payload announcing new due jobs in ``queue``."""
    return queue + (TENANT_WAKE if tenant_key else "") + (KEY_WAKE if resource_key else "")


#: NOTIFY channel workers signal after storing outcomes (payload: comma-joined task ids).
RESULT_CHANNEL = "pg_queue_result"


@dataclass(frozen=True, kw_only=True)
class QueueSettings:
    """Resolved ``PG_QUEUE`` settings; keys are the lower-case field names in upper case."""

    default_queue: str = DEFAULT_QUEUE
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    lease_seconds: float = DEFAULT_LEASE_SECONDS
    retry_backoff: float = DEFAULT_RETRY_BACKOFF
    retry_backoff_max: float = DEFAULT_RETRY_BACKOFF_MAX
    result_ttl_seconds: int = DEFAULT_RESULT_TTL_SECONDS
    concurrency: int = DEFAULT_CONCURRENCY
    batch_size: int = DEFAULT_BATCH_SIZE
    poll_interval_min: float = DEFAULT_POLL_INTERVAL_MIN
    poll_interval_max: float = DEFAULT_POLL_INTERVAL_MAX
    notify: bool = DEFAULT_NOTIFY
    prepared_statements: bool = DEFAULT_PREPARED_STATEMENTS
    rearm_interval: float = DEFAULT_REARM_INTERVAL
    result_sweep_interval: float = DEFAULT_RESULT_SWEEP_INTERVAL
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT
    statement_timeout: float = DEFAULT_STATEMENT_TIMEOUT
    result_max_bytes: int = DEFAULT_RESULT_MAX_BYTES
    unwritten_outcome_max_age: float = DEFAULT_UNWRITTEN_OUTCOME_MAX_AGE
    unhealthy_restart_after: float = DEFAULT_UNHEALTHY_RESTART_AFTER
    burst_lookahead: float = DEFAULT_BURST_LOOKAHEAD
    time_limit: float = DEFAULT_TIME_LIMIT
    celery_app: str = DEFAULT_CELERY_APP
    imports: tuple[str, ...] = DEFAULT_IMPORTS
    secret_keys: tuple[str, ...] = DEFAULT_SECRET_KEYS
    transport_enabled: bool = DEFAULT_TRANSPORT_ENABLED
    routing_enabled: bool = DEFAULT_ROUTING_ENABLED
    routing_percent: int = DEFAULT_ROUTING_PERCENT
    routing_tenants: tuple[str, ...] = DEFAULT_ROUTING_TENANTS
    routing_exclude_tenants: tuple[str, ...] = DEFAULT_ROUTING_EXCLUDE_TENANTS
    routing_tasks: tuple[str, ...] = DEFAULT_ROUTING_TASKS
    flag_provider: str = DEFAULT_FLAG_PROVIDER
    #: Periodic tasks: {name: {"task": ..., "cron": ..., "args": [...], "kwargs": {...},
    #: "queue": "", "timezone": "UTC", "enabled": True}}, synced at the start of every worker
    #: that runs the scheduler (``pg_queue.scheduling.sync``). Default: none.
    schedule: dict[str, dict[str, Any]] = field(default_factory=dict)
    scheduler: bool = DEFAULT_SCHEDULER
    scheduler_lease_seconds: float = DEFAULT_SCHEDULER_LEASE_SECONDS
    scheduler_poll: float = DEFAULT_SCHEDULER_POLL


_KNOWN_KEYS = {f.name.upper() for f in fields(QueueSettings)}


def unknown_keys(raw: dict[str, Any]) -> list[str]:
    """Keys of a ``PG_QUEUE`` dict this version does not know (reported by ``manage.py check``)."""
    return sorted(k for k in raw if k not in _KNOWN_KEYS)


@cache
def queue_settings() -> QueueSettings:
    """The resolved settings; cached, and reset when tests override ``PG_QUEUE``."""
    raw: dict[str, Any] = dict(getattr(settings, "PG_QUEUE", {}) or {})
    values: dict[str, Any] = {}
    for f in fields(QueueSettings):
        key = f.name.upper()
        if key in raw:
            value = raw[key]
            if isinstance(f.default, tuple):
                value = tuple(value)
            values[f.name] = value
    return QueueSettings(**values)


def _reset(*, setting: str, **_: Any) -> None:
    if setting == "PG_QUEUE":
        queue_settings.cache_clear()


setting_changed.connect(_reset)
