"""Misconfiguration reported by ``manage.py check`` instead of at 3 a.m. in a worker log.

Every message has a stable id (``pg_queue.E0xx`` errors, ``pg_queue.W0xx`` warnings,
``pg_queue.I0xx`` notes) so a project can silence one on purpose (``SILENCED_SYSTEM_CHECKS``) and
docs can point at it.

The optional packages are reported here too: a setting that needs an extra which is not
installed (``CELERY_APP`` needs ``pg-queue[celery]``, ``FLAG_PROVIDER`` needs ``pg-queue[flags]``),
a missing psycopg 3, and admin features the installed Django is too old for.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import django
from django.apps import apps
from django.conf import settings
from django.core.checks import CheckMessage, Error, Info, Tags, Warning, register
from django.db import connections

from pg_queue.core.conf import QueueSettings, queue_settings, unknown_keys

#: Shortest default per-task time limit (seconds) that makes sense: the worker checks limits
#: from its loop, so a shorter one would fail tasks on scheduling noise. (0 = no limit.)
MIN_TIME_LIMIT_SECONDS = 1.0
#: Shortest result retention (seconds): a caller blocked in ``wait()``/``dispatch()`` polls at
#: most every second or so, and an outcome must outlive the poll that should find it.
MIN_RESULT_TTL_SECONDS = 60


@register()
def check_pg_queue(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    messages: list[CheckMessage] = []
    raw = getattr(settings, "PG_QUEUE", {}) or {}
    if not isinstance(raw, dict):
        return [Error("PG_QUEUE must be a dict", id="pg_queue.E001")]
    for key in unknown_keys(raw):
        messages.append(
            Warning(f"PG_QUEUE has an unknown key {key!r}; it is ignored", id="pg_queue.W001")
        )
    if connections["default"].vendor != "postgresql":
        messages.append(
            Error("pg_queue needs PostgreSQL as the default database", id="pg_queue.E002")
        )
    conf = queue_settings()
    not_numbers = _not_numbers(conf)
    if not_numbers:
        # Comparing a string with a number would crash the checks below: report that alone.
        return [*messages, *not_numbers]
    if conf.lease_seconds <= 0:
        messages.append(Error("PG_QUEUE['LEASE_SECONDS'] must be > 0", id="pg_queue.E003"))
    if conf.concurrency < 1 or conf.batch_size < 1:
        messages.append(
            Error("PG_QUEUE CONCURRENCY and BATCH_SIZE must be >= 1", id="pg_queue.E004")
        )
    if conf.max_attempts < 1:
        messages.append(Error("PG_QUEUE['MAX_ATTEMPTS'] must be >= 1", id="pg_queue.E005"))
    if conf.poll_interval_min <= 0 or conf.poll_interval_max < conf.poll_interval_min:
        messages.append(
            Error(
                "PG_QUEUE POLL_INTERVAL_MIN must be > 0 and <= POLL_INTERVAL_MAX",
                id="pg_queue.E006",
            )
        )
    messages += _check_timing(conf)
    messages += _check_worker_limits(conf)
    messages += _check_pooler(conf)
    messages += _check_routing_and_celery(conf)
    messages += _check_psycopg()
    messages += _check_schedule(conf)
    return messages


#: Numeric settings, so that a string from an environment variable is a clear error.
_NUMERIC = (
    "max_attempts",
    "lease_seconds",
    "retry_backoff",
    "retry_backoff_max",
    "result_ttl_seconds",
    "concurrency",
    "batch_size",
    "poll_interval_min",
    "poll_interval_max",
    "rearm_interval",
    "burst_lookahead",
    "time_limit",
    "routing_percent",
    "result_sweep_interval",
    "lock_timeout",
    "statement_timeout",
    "result_max_bytes",
    "unwritten_outcome_max_age",
    "unhealthy_restart_after",
)


def _not_numbers(conf: QueueSettings) -> list[CheckMessage]:
    bad = [
        name
        for name in _NUMERIC
        if isinstance(getattr(conf, name), bool) or not isinstance(getattr(conf, name), int | float)
    ]
    return [
        Error(
            f"PG_QUEUE['{name.upper()}'] must be a number, got {getattr(conf, name)!r}",
            id="pg_queue.E013",
        )
        for name in bad
    ]


def _check_timing(conf: QueueSettings) -> list[CheckMessage]:
    """Lease, re-arm sweep, time limit and result retention must fit together."""
    messages: list[CheckMessage] = []
    if not 0 < conf.rearm_interval < conf.lease_seconds:
        messages.append(
            Error(
                f"PG_QUEUE['REARM_INTERVAL'] ({conf.rearm_interval:g}) must be > 0 and shorter "
                f"than LEASE_SECONDS ({conf.lease_seconds:g})",
                hint="A sweep slower than a lease leaves dead workers' jobs stuck for longer "
                "than the lease promises.",
                id="pg_queue.E007",
            )
        )
    if conf.time_limit < 0 or 0 < conf.time_limit < MIN_TIME_LIMIT_SECONDS:
        messages.append(
            Error(
                f"PG_QUEUE['TIME_LIMIT'] ({conf.time_limit:g}) must be 0 (no limit) or at least "
                f"{MIN_TIME_LIMIT_SECONDS:g} s",
                hint="Give short tasks their own @task(time_limit=...).",
                id="pg_queue.E008",
            )
        )
    if conf.result_ttl_seconds < MIN_RESULT_TTL_SECONDS:
        messages.append(
            Error(
                f"PG_QUEUE['RESULT_TTL_SECONDS'] ({conf.result_ttl_seconds:g}) must be at least "
                f"{MIN_RESULT_TTL_SECONDS} s",
                hint="Outcomes that expire sooner vanish before waiting callers can read them.",
                id="pg_queue.E009",
            )
        )
    elif conf.lease_seconds > 0 and conf.result_ttl_seconds <= conf.lease_seconds:
        messages.append(
            Error(
                f"PG_QUEUE['RESULT_TTL_SECONDS'] ({conf.result_ttl_seconds:g}) must be longer "
                f"than LEASE_SECONDS ({conf.lease_seconds:g})",
                hint="A job redelivered after a lost lease may finish a whole lease later; its "
                "outcome must still be there.",
                id="pg_queue.E010",
            )
        )
    return messages


def _check_worker_limits(conf: QueueSettings) -> list[CheckMessage]:
    """The worker's own bounds: sweeps, timeouts, result size, health thresholds."""
    messages: list[CheckMessage] = []
    positive = (
        "result_sweep_interval",
        "result_max_bytes",
        "unwritten_outcome_max_age",
        "unhealthy_restart_after",
    )
    for name in positive:
        if getattr(conf, name) <= 0:
            messages.append(Error(f"PG_QUEUE['{name.upper()}'] must be > 0", id="pg_queue.E014"))
    for name in ("lock_timeout", "statement_timeout"):
        if getattr(conf, name) < 0:
            messages.append(
                Error(
                    f"PG_QUEUE['{name.upper()}'] must be >= 0 seconds (0 = no limit)",
                    id="pg_queue.E015",
                )
            )
    if conf.lock_timeout == 0:
        messages.append(
            Warning(
                "PG_QUEUE['LOCK_TIMEOUT'] is 0: worker statements may wait on a lock forever",
                hint="An operator's open transaction or a migration's table lock would then "
                "stall finishes and the worker row's heartbeat for as long as it lasts.",
                id="pg_queue.W002",
            )
        )
    return messages


def _check_pooler(conf: QueueSettings) -> list[CheckMessage]:
    """Settings that contradict a transaction pooler the DATABASES entry points at.

    Django's own PgBouncer advice (``DISABLE_SERVER_SIDE_CURSORS``, or psycopg's
    ``prepare_threshold: None``) says a transaction pooler sits in front of the database.
    Workers find it at start and drop prepared statements, session SETs and LISTEN by
    themselves; these settings then say the opposite of what will happen.
    """
    db = connections["default"].settings_dict
    options = db.get("OPTIONS") or {}
    pooled = bool(db.get("DISABLE_SERVER_SIDE_CURSORS")) or (
        "prepare_threshold" in options and options["prepare_threshold"] is None
    )
    enabled = [name for name in ("notify", "prepared_statements") if getattr(conf, name)]
    if not pooled or not enabled:
        return []
    keys = " and ".join(f"PG_QUEUE['{name.upper()}']" for name in enabled)
    return [
        Warning(
            f"DATABASES['default'] looks like it goes through a transaction pooler "
            f"(PgBouncer), but {keys} {'is' if len(enabled) == 1 else 'are'} on",
            hint="Behind transaction pooling LISTEN and prepared statements cannot work: "
            "workers detect the pooler at start and turn them off (and set no session "
            "timeouts; set lock_timeout/statement_timeout on the database role). Set them "
            "False to say so, or point the workers at the database directly.",
            id="pg_queue.W003",
        )
    ]


def _check_routing_and_celery(conf: QueueSettings) -> list[CheckMessage]:
    messages: list[CheckMessage] = []
    if isinstance(conf.routing_percent, bool) or not 0 <= conf.routing_percent <= 100:
        messages.append(
            Error(
                f"PG_QUEUE['ROUTING_PERCENT'] must be between 0 and 100, got "
                f"{conf.routing_percent!r}",
                id="pg_queue.E012",
            )
        )
    if conf.celery_app:
        from pg_queue.registry import CELERY_EXTRA, celery_app, celery_installed

        if not celery_installed():
            messages.append(
                Error(
                    f"PG_QUEUE['CELERY_APP'] is {conf.celery_app!r} but Celery is not installed",
                    hint=f"pip install '{CELERY_EXTRA}', or remove CELERY_APP.",
                    id="pg_queue.E016",
                )
            )
        else:
            try:
                celery_app()
            except Exception as exc:  # an app module may fail in any way while importing
                messages.append(
                    Error(
                        f"PG_QUEUE['CELERY_APP'] = {conf.celery_app!r} cannot be imported: "
                        f"{type(exc).__name__}: {exc}",
                        hint="Use 'package.module:app' (or 'package.module.app').",
                        id="pg_queue.E011",
                    )
                )
    if conf.flag_provider and not _installed("openfeature"):
        messages.append(
            Error(
                f"PG_QUEUE['FLAG_PROVIDER'] is {conf.flag_provider!r} but openfeature-sdk is "
                "not installed: every routed call would go to Celery",
                # The extra pg_queue.routing.flags names too (not imported here: the routing
                # package loads the producer, which needs psycopg 3, checked below).
                hint="pip install 'pg-queue[flags]'. Without FLAG_PROVIDER the ROUTING_* "
                "settings route calls with no OpenFeature at all.",
                id="pg_queue.E017",
            )
        )
    return messages


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


#: Two ways to get psycopg 3, for the hint of ``pg_queue.E018``.
PSYCOPG_HINT = (
    'pip install "psycopg[binary]" (libpq included), or pip install psycopg to use the '
    "system's libpq. Django itself may keep using psycopg2; pg_queue's worker and producer "
    "speak psycopg 3."
)


def _check_psycopg() -> list[CheckMessage]:
    """pg_queue's own SQL runs on psycopg 3 even when Django runs on psycopg2."""
    try:
        import psycopg  # noqa: F401  (imported here, never at app-registry time)
    except ImportError as exc:
        missing = isinstance(exc, ModuleNotFoundError) and exc.name == "psycopg"
        problem = "is not installed" if missing else f"cannot be imported: {exc}"
        return [
            Error(
                f"pg_queue needs psycopg 3, which {problem}", hint=PSYCOPG_HINT, id="pg_queue.E018"
            )
        ]
    return []


@register(Tags.admin)
def check_admin_features(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Admin features that need a newer Django than the installed one, said once."""
    if not apps.is_installed("django.contrib.admin"):
        return []
    from django.contrib import admin

    if hasattr(admin, "ActionLocation"):
        return []
    return [
        Info(
            f"Django {django.get_version()} has no actions on admin detail pages: pg_queue's "
            "run now / cancel / change priority / requeue / discard are offered on the list "
            "pages only",
            hint="Django 6.1 or newer adds them to each row's page.",
            id="pg_queue.I001",
        )
    ]


#: What ``TASKS[alias]["BACKEND"]`` names for Django's Tasks framework on pg_queue.
TASKS_BACKEND_PATH = "pg_queue.tasks_backend.PgQueueBackend"


@register()
def check_django_tasks(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """``TASKS`` naming pg_queue's backend on a Django without the Tasks framework (5.2).

    On Django 6.0+ the backend's own ``check()`` (run by Django's ``check_tasks``) reports its
    ``OPTIONS`` and ``QUEUES`` through ``tasks_backend_messages``.
    """
    return django_tasks_messages(getattr(settings, "TASKS", None), django.VERSION)


def django_tasks_messages(tasks: object, version: tuple[Any, ...]) -> list[CheckMessage]:
    """``check_django_tasks`` for given ``TASKS`` and Django version (testable on any Django)."""
    if tuple(version[:2]) >= (6, 0) or not isinstance(tasks, dict):
        return []
    aliases = sorted(
        str(alias)
        for alias, params in tasks.items()
        if isinstance(params, dict) and params.get("BACKEND") == TASKS_BACKEND_PATH
    )
    if not aliases:
        return []
    return [
        Warning(
            f"TASKS {', '.join(map(repr, aliases))} names {TASKS_BACKEND_PATH}, but Django "
            f"{'.'.join(map(str, version[:2]))} has no Tasks framework (django.tasks): the "
            "backend is absent and TASKS is ignored",
            hint="Django 6.0 or newer brings django.tasks; on this Django use pg_queue's own "
            "@pg_queue.task.",
            id="pg_queue.W004",
        )
    ]


def tasks_backend_messages(
    alias: str, options: object, queues: set[str] | frozenset[str]
) -> list[CheckMessage]:
    """Problems with one ``TASKS`` entry of pg_queue's backend: unknown or invalid ``OPTIONS``
    (``pg_queue.E019``), a queue name no worker could serve (``pg_queue.E020``)."""
    from pg_queue.core.options import check_max_attempts, check_queue_name

    messages: list[CheckMessage] = []
    where = f"TASKS[{alias!r}]"
    if not isinstance(options, dict):
        return [Error(f"{where}['OPTIONS'] must be a dict", id="pg_queue.E019")]
    for key in sorted(set(options) - {"MAX_ATTEMPTS"}, key=str):
        messages.append(
            Error(
                f"{where}['OPTIONS'] has an unknown key {key!r}",
                hint="pg_queue's backend reads MAX_ATTEMPTS only.",
                id="pg_queue.E019",
            )
        )
    if "MAX_ATTEMPTS" in options:
        try:
            check_max_attempts(options["MAX_ATTEMPTS"])
        except ValueError as exc:
            messages.append(Error(f"{where}['OPTIONS']: {exc}", id="pg_queue.E019"))
    for queue in sorted(queues, key=str):
        try:
            check_queue_name(queue, f"{where}['QUEUES'] entry")
        except ValueError as exc:
            messages.append(Error(str(exc), id="pg_queue.E020"))
    return messages


def _check_schedule(conf: Any) -> list[CheckMessage]:
    """Periodic tasks need croniter (the ``schedule`` extra) and a valid ``SCHEDULE``."""
    if not (conf.schedule or conf.scheduler):
        return []
    from pg_queue.scheduling.cron import SCHEDULE_EXTRA, croniter_installed
    from pg_queue.scheduling.sync import parse_schedule

    if not croniter_installed():
        return [
            Error(
                "PG_QUEUE['SCHEDULE'] / PG_QUEUE['SCHEDULER'] need croniter, which is not "
                "installed",
                hint=f"pip install '{SCHEDULE_EXTRA}'.",
                id="pg_queue.E021",
            )
        ]
    try:
        parse_schedule(conf.schedule)
    except ValueError as exc:
        return [Error(str(exc), id="pg_queue.E022")]
    return []
