"""The example settings with Django's Tasks framework on pg_queue (Django 6.0+): what worker
subprocesses of tests/acceptance/test_django_tasks.py run with."""

from backend.settings import *  # noqa: F403

TASKS = {
    "default": {
        "BACKEND": "pg_queue.tasks_backend.PgQueueBackend",
        "QUEUES": ["default", "django"],
    },
    # The same queues, with pg_queue's retries: a task that raises runs again after a backoff.
    "retrying": {
        "BACKEND": "pg_queue.tasks_backend.PgQueueBackend",
        "QUEUES": ["default"],
        "OPTIONS": {"MAX_ATTEMPTS": 2},
    },
}
