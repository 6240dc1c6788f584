from django.apps import AppConfig


class PgQueueConfig(AppConfig):
    name = "pg_queue"
    verbose_name = "PostgreSQL queue"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from pg_queue import checks  # noqa: F401  (registers system checks)
