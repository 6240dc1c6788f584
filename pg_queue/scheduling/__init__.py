"""Periodic tasks: cron schedules fired by one leader among the workers.

- ``cron``: next-run computation (croniter, time zones, DST), the ``schedule`` extra;
- ``specs``: a schedule as declared in ``PG_QUEUE["SCHEDULE"]``, validated;
- ``sync``: settings -> ``pg_periodic_task`` at worker start;
- ``leader``: the leader lease;
- ``firing``: one pass over due schedules, each fired in one transaction;
- ``beat``: the Celery beat scheduler class for the hand-over (imports Celery; only there).

The worker's thread is ``pg_queue.worker.scheduler``.
"""
