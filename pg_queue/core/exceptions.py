"""The small, named hierarchy of errors pg_queue raises."""


class PgQueueError(Exception):
    """Base of every error pg_queue raises on purpose."""


class PayloadError(PgQueueError, ValueError):
    """A value cannot travel to PostgreSQL and back unchanged; the message names the argument
    path (``kwargs['when']``) or the option (``queue``, ``tenant_key``)."""


class DuplicateTaskId(PgQueueError, ValueError):
    """A task id given to enqueue already names a live job or a stored result.

    Raised before anything is written (the caller's transaction stays usable): re-using the id
    would make ``wait()`` answer with the earlier job's outcome.
    """


class TaskNotFound(PgQueueError, LookupError):
    """No task is registered under that name (natively or in the configured Celery app)."""


class ConfigurationError(PgQueueError):
    """``PG_QUEUE`` settings or command flags do not make sense together."""


class WaitInTransactionError(PgQueueError, RuntimeError):
    """Waiting for a result inside an open transaction would wait for a job that cannot start."""


class Retry(PgQueueError):
    """Raised by a task to ask for another attempt, after ``delay`` seconds if given.

    The attempt still counts toward ``max_attempts``; when none remain the job is dead-lettered.
    """

    def __init__(
        self, delay: float | None = None, reason: str = "", *, bounded_by_task: bool = False
    ) -> None:
        self.delay = delay
        self.reason = reason
        # True when the task itself enforces its retry limit (Celery's max_retries): the
        # job's max_attempts must not cut it short.
        self.bounded_by_task = bounded_by_task
        super().__init__(reason or "retry requested")


class Reject(PgQueueError):
    """The job failed for good: dead-letter it now, whatever attempts remain.

    Raised for a Celery task's exception (Celery does not retry unless the task asks), or by a
    task that knows a retry cannot help. ``cause`` is the original exception.
    """

    def __init__(self, cause: BaseException | str) -> None:
        self.cause = cause
        super().__init__(str(cause))


class ResourceLocked(PgQueueError):
    """``resource_lock(key, wait=...)`` gave up: someone else holds ``key``.

    ``holder_kind`` (``worker``, ``cli``, ``web``...), ``holder_id`` and ``since`` name the
    current holder (empty when it let go between the try and the look).
    """

    def __init__(
        self, key: str, holder_kind: str = "", holder_id: str = "", since: object = None
    ) -> None:
        self.key = key
        self.holder_kind = holder_kind
        self.holder_id = holder_id
        self.since = since
        held = f"held by {holder_kind} {holder_id} since {since}" if holder_id else "held"
        super().__init__(f"resource {key!r} is {held}")
