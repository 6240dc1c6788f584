"""Operator actions on the dead-letter table (also used by the admin and the commands)."""

from __future__ import annotations

import uuid
from collections.abc import Iterable

from django.db import connections, transaction

from pg_queue.db import sql_ops
from pg_queue.workflows import groups


def requeue_dead_letters(ids: Iterable[int], *, using: str = "default") -> list[uuid.UUID]:
    """Put dead letters back on their queues with fresh attempts; returns the task ids requeued.

    The job keeps its task id, so a caller holding the handle sees it queued again. A letter
    whose task id is live in the queue again (requeued twice) is left where it is. A member of
    a group or chain rejoins it: the group runs again and ends once more when the job finishes
    (``pg_queue.workflows.groups.reopen``).
    """
    id_list = [int(i) for i in ids]
    if not id_list:
        return []
    with transaction.atomic(using=using), connections[using].cursor() as cursor:
        cursor.execute(sql_ops.DEAD_LETTER_REQUEUE, {"ids": id_list})
        rows = cursor.fetchall()
        groups.reopen(using, rows)
        return [row[0] for row in rows]


def requeue_dead_letter(letter_id: int, *, using: str = "default") -> uuid.UUID | None:
    """Requeue one dead letter; None if it no longer exists."""
    requeued = requeue_dead_letters([letter_id], using=using)
    return requeued[0] if requeued else None
