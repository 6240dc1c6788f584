import importlib.util
from typing import Any

from django.apps import AppConfig
from django.utils.html import format_html
from django.utils.safestring import SafeString


class PgQueueConfig(AppConfig):
    name = "pg_queue"
    verbose_name = "PostgreSQL queue"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from pg_queue import checks  # noqa: F401  (registers system checks)
        from pg_queue.registry import import_task_modules

        _backport_csp_nonce_attr()
        # Like Celery's ``imports``: every process (producers too) knows each task's defaults
        # (queue, max_attempts) when it enqueues by name. An import error surfaces at startup.
        import_task_modules()
        _enable_django_tasks()


def _enable_django_tasks() -> None:
    """On Django 6.0+, let workers run jobs of ``pg_queue.tasks_backend.PgQueueBackend``: the
    registry asks the backend about task names it wrote (imported by path on first sight).
    The backend module (and ``django.tasks``) is imported on the first such name, not here:
    every process pays for ``ready()``, a worker's start-up included."""
    if importlib.util.find_spec("django.tasks") is not None:
        from pg_queue.registry import add_fallback

        add_fallback(_resolve_django_task)


def _resolve_django_task(name: str) -> Any:
    from pg_queue.registry import DJANGO_TASK_PREFIX

    if not name.startswith(DJANGO_TASK_PREFIX):
        return None
    from pg_queue.tasks_backend import resolve_task

    return resolve_task(name)


def _csp_nonce_attr(context: Any) -> SafeString:
    """Django 6.1's ``{% csp_nonce_attr %}`` for older Django: ``nonce="..."`` when the request
    has a CSP nonce (Django 6.0's ``csp`` context processor), else nothing (Django 5.2)."""
    nonce = context.get("csp_nonce")
    return format_html('nonce="{}"', nonce) if nonce is not None else SafeString("")


def _backport_csp_nonce_attr() -> None:
    """Give Django < 6.1 the built-in tag the admin templates use, with 6.1's meaning.

    An addition only: where Django has the tag (6.1+) nothing changes.
    """
    from django.template import defaulttags

    if "csp_nonce_attr" not in defaulttags.register.tags:
        defaulttags.register.simple_tag(_csp_nonce_attr, takes_context=True, name="csp_nonce_attr")
