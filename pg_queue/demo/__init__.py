"""The demo of ``manage.py pg_queue_demo``: its tasks ship with the app, so the demo runs in any
project without touching the project's own modules."""
