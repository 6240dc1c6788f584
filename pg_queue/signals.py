"""Django signals pg_queue sends. Receivers run in the worker process, after the commit, on
the worker's events thread (``pg-queue-events``): never on the claim loop, the heartbeat, a task
thread or the finisher, so a slow receiver delays only the signals after it, never a lease or a
finish. A receiver that raises is logged and swallowed. (An operator's cancel or purge of a
group's last child, done in the web process, sends ``group_finished``/``chain_finished`` there,
after its transaction commits.)

Every job signal has ``task_id`` (UUID), ``task_name`` and ``queue_name``:

- ``job_started``: a task thread starts the job; also ``attempt``.
- ``job_succeeded``: its success was written.
- ``job_retried``: it failed and will run again; also ``error``, ``delay`` (seconds).
- ``job_failed``: it was dead-lettered (attempts exhausted, unknown task, undecodable payload,
  outcome not storable, lease expired on its last attempt); also ``reason``, ``error``.

Group signals have ``group_id`` (UUID) and ``status`` (``succeeded`` or ``failed``):

- ``group_finished``: every child of a group finished (its callback was enqueued with it).
- ``chain_finished``: a chain's last step succeeded, or a step failed for good.
"""

from django.dispatch import Signal

job_started = Signal()
job_succeeded = Signal()
job_retried = Signal()
job_failed = Signal()
group_finished = Signal()
chain_finished = Signal()
