"""Task modules run by workers: the same functions Celery and the Postgres worker both run."""
