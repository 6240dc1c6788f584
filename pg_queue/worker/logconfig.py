"""A readable console log for ``run_pg_worker``, like ``celery worker`` prints, when the project
has not configured logging for pg_queue itself.

Django's default logging configures the ``django`` logger only, so in a fresh project every
pg_queue line (the start line, dead letters, lost leases) would vanish. If no handler would
receive the ``pg_queue`` loggers' records, one console handler is added to ``pg_queue`` at the
``--loglevel`` level; if the project configured handlers, they are left alone and only an
explicit ``--loglevel`` changes the level.
"""

from __future__ import annotations

import logging
import sys

#: The worker's own console format: time, level, logger, message (key=value pairs).
CONSOLE_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
LEVELS = ("debug", "info", "warning", "error", "critical")
DEFAULT_LEVEL = "info"


def configure_worker_logging(level: str | None) -> bool:
    """Make sure pg_queue's records reach the console; returns whether a handler was added.

    ``level`` is one of ``LEVELS`` (None: the default, applied only if we add the handler).
    """
    logger = logging.getLogger("pg_queue")
    number = logging.getLevelNamesMapping()[(level or DEFAULT_LEVEL).upper()]
    if _has_handler(logger):
        if level is not None:
            logger.setLevel(number)
        return False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(CONSOLE_FORMAT))
    logger.addHandler(handler)
    logger.setLevel(number)
    return True


def _has_handler(logger: logging.Logger) -> bool:
    """Does any handler receive this logger's records (its own or an ancestor's)?"""
    current: logging.Logger | None = logger
    while current is not None:
        if current.handlers:
            return True
        if not current.propagate:
            return False
        current = current.parent
    return False


def database_label(settings: dict[str, object]) -> str:
    """``user@host:port/name`` of a Django database entry, never its password."""
    host = str(settings.get("HOST") or "localhost")
    port = str(settings.get("PORT") or "")
    user = str(settings.get("USER") or "")
    where = f"{host}:{port}" if port else host
    return f"{user + '@' if user else ''}{where}/{settings.get('NAME')}"
