"""The example settings as a fresh project has them: no LOGGING for pg_queue (Django's default
logging configures the ``django`` logger only). Used by the worker-logging test."""

from backend.settings import *  # noqa: F403

LOGGING = {"version": 1, "disable_existing_loggers": False}
