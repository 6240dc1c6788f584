"""Settings of the example backend. Environment reaches them through django-environ only."""

from pathlib import Path

import environ

from backend.database import database_config, resolve_database_url

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

SECRET_KEY = env.str("SECRET_KEY", default="insecure-example-key-change-me")
DEBUG = env.bool("DEBUG", default=False)
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1"])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "pg_queue",
    "backend.apps.BackendConfig",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]

ROOT_URLCONF = "backend.urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]
WSGI_APPLICATION = "backend.wsgi.application"

DATABASE_URL, DATABASE_SOURCE = resolve_database_url(BASE_DIR)
DATABASES = {"default": database_config(DATABASE_URL)}
# Persistent connections: a blocking dispatch() polls/reads results on this connection, and
# reconnecting costs more than the whole round trip.
DATABASES["default"]["CONN_MAX_AGE"] = env.int("CONN_MAX_AGE", default=60)
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True

USE_TZ = True
TIME_ZONE = "UTC"
STATIC_URL = "static/"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default="amqp://guest:guest@127.0.0.1:5672//")
CELERY_RESULT_BACKEND = env.str("CELERY_RESULT_BACKEND", default="rpc://")
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_IMPORTS = ["workers.executions"]

PG_QUEUE = {
    "CELERY_APP": "backend.celery:app",
    "IMPORTS": ["workers.tasks", "workers.executions"],
    "CONCURRENCY": env.int("PG_QUEUE_CONCURRENCY", default=8),
    "NOTIFY": env.bool("PG_QUEUE_NOTIFY", default=True),
    "PREPARED_STATEMENTS": env.bool("PG_QUEUE_PREPARED_STATEMENTS", default=True),
    "LEASE_SECONDS": env.float("PG_QUEUE_LEASE_SECONDS", default=30.0),
    "REARM_INTERVAL": env.float("PG_QUEUE_REARM_INTERVAL", default=5.0),
    # Set only when the environment names them; otherwise pg_queue's own defaults apply.
    **{
        key: parse(f"PG_QUEUE_{key}")
        for key, parse in (
            ("RESULT_TTL_SECONDS", env.int),
            ("RESULT_SWEEP_INTERVAL", env.float),
            ("LOCK_TIMEOUT", env.float),
            ("STATEMENT_TIMEOUT", env.float),
            ("RESULT_MAX_BYTES", env.int),
            ("UNWRITTEN_OUTCOME_MAX_AGE", env.float),
            ("UNHEALTHY_RESTART_AFTER", env.float),
            ("POLL_INTERVAL_MIN", env.float),
            ("POLL_INTERVAL_MAX", env.float),
        )
        if f"PG_QUEUE_{key}" in env
    },
    # Routing (the pg_queue_enabled flag's default in-memory provider) and the kill switch.
    "TRANSPORT_ENABLED": env.bool("PG_QUEUE_TRANSPORT_ENABLED", default=True),
    "ROUTING_ENABLED": env.bool("PG_QUEUE_ROUTING_ENABLED", default=False),
    "ROUTING_PERCENT": env.int("PG_QUEUE_ROUTING_PERCENT", default=100),
    "ROUTING_TENANTS": env.list("PG_QUEUE_ROUTING_TENANTS", default=[]),
    "ROUTING_EXCLUDE_TENANTS": env.list("PG_QUEUE_ROUTING_EXCLUDE_TENANTS", default=[]),
    "FLAG_PROVIDER": env.str("PG_QUEUE_FLAG_PROVIDER", default=""),
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "loggers": {
        "pg_queue": {
            "handlers": ["console"],
            "level": env.str("PG_QUEUE_LOG_LEVEL", default="INFO"),
        }
    },
}
