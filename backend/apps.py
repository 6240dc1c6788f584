"""The example backend as a Django app: its execution tables, tasks and signal receivers."""

from django.apps import AppConfig


class BackendConfig(AppConfig):
    name = "backend"
    label = "backend"
    verbose_name = "Example backend"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # The execution tasks are part of this app: every process that loads it (web, the
        # Celery worker, the Postgres worker) knows them by name without extra flags. The
        # signals module connects the job_failed receiver.
        import workers.executions  # noqa: F401
        from backend import signals  # noqa: F401
