from django.apps import AppConfig


class PgQueueConfig(AppConfig):
    name = "pg_queue"
    verbose_name = "PostgreSQL queue"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from pg_queue import checks  # noqa: F401  (registers system checks)
        from pg_queue.registry import import_task_modules

        # Like Celery's ``imports``: every process (producers too) knows each task's defaults
        # (queue, max_attempts) when it enqueues by name. An import error surfaces at startup.
        import_task_modules()
