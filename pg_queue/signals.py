"""Django signals pg_queue sends. Receivers run in the worker process, after the commit, on
the worker's events thread (``pg-queue-events``): never on the claim loop, the heartbeat or the
finisher, so a slow receiver delays only the signals after it, never a lease or a finish.

``job_failed``: a job was dead-lettered (attempts exhausted, unknown task, undecodable payload,
lease expired on its last attempt). kwargs: ``task_id`` (UUID), ``task_name``, ``queue_name``,
``reason``, ``error``. A receiver that raises is logged and does not affect the worker.
"""

from django.dispatch import Signal

job_failed = Signal()
