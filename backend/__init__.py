"""An example Django project playing "the existing backend" that runs Celery today."""

from backend.celery import app as celery_app

__all__ = ["celery_app"]
