"""The example backend as a Django app: its execution tables, tasks and signal receivers."""

from django.apps import AppConfig


class BackendConfig(AppConfig):
    name = "backend"
    label = "backend"
    verbose_name = "Example backend"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # The signals module connects the job_failed receiver. (The execution tasks in
        # workers.executions are imported through settings: PG_QUEUE['IMPORTS'] in every
        # process, CELERY_IMPORTS in the Celery worker; this app never imports them.)
        from backend import signals  # noqa: F401
