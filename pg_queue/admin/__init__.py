"""The operator surface in the Django admin: queues overview, jobs, dead letters, results,
workers, groups and chains, resource locks, periodic tasks.

Raw rows are never edited here: a saved form would write stale copies of columns a worker owns
(``vt``, ``lease_token``). Every change is an action from ``pg_queue.ops.operations`` (set-based,
whatever the number of rows), checked against Django's model permissions (``change`` for run
now / priority / cancel / requeue, ``delete`` for discard) and recorded as ``LogEntry`` rows in
one batch: who did what to which job. List pages run a fixed number of queries, however many
rows they show (no per-row lookups: the database clock and in-flight counts are annotations).
"""

from pg_queue.admin import jobs, records, schedules, workflows  # noqa: F401  (registers the ModelAdmins)
from pg_queue.admin.base import MAX_CONFIRM_ROWS, OperatorAdmin
from pg_queue.admin.jobs import JobAdmin
from pg_queue.admin.records import DeadLetterAdmin, TaskResultAdmin, WorkerAdmin
from pg_queue.admin.schedules import PeriodicTaskAdmin
from pg_queue.admin.workflows import JobGroupAdmin, ResourceLockAdmin

__all__ = [
    "MAX_CONFIRM_ROWS",
    "DeadLetterAdmin",
    "JobAdmin",
    "JobGroupAdmin",
    "OperatorAdmin",
    "PeriodicTaskAdmin",
    "ResourceLockAdmin",
    "TaskResultAdmin",
    "WorkerAdmin",
]
