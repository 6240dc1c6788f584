"""Every statement of resource locks, groups and chains (``pg_queue.workflows``).

A lock row is the mutex for its key: the primary key serializes holders. A group's progress
and its end are one conditional UPDATE, run in the transaction of each child's finish, so
exactly one finish sees the group end however many workers race, and never before every child
has finished.
"""

# --- resource locks ---------------------------------------------------------------------------

#: Take ``key`` for a holder outside the worker (``resource_lock()``): a free key, or one whose
#: holder let it expire. Returns the key when taken; nothing when someone else holds it.
LOCK_ACQUIRE = """
INSERT INTO pg_resource_lock AS l (
    resource_key, holder_id, holder_kind, task_id, acquired_at, expires_at, holder_meta
) VALUES (
    %(key)s, %(holder_id)s, %(holder_kind)s, NULL, now(),
    now() + make_interval(secs => %(ttl)s), %(meta)s::jsonb
)
ON CONFLICT (resource_key) DO UPDATE
SET holder_id = EXCLUDED.holder_id, holder_kind = EXCLUDED.holder_kind, task_id = NULL,
    acquired_at = now(), expires_at = EXCLUDED.expires_at, holder_meta = EXCLUDED.holder_meta
WHERE l.expires_at IS NOT NULL AND l.expires_at <= now()
RETURNING resource_key
"""

#: Who holds ``key`` now (for the ``ResourceLocked`` message): kind, id, since, task id.
LOCK_HOLDER = """
SELECT holder_kind, holder_id, acquired_at, task_id FROM pg_resource_lock
WHERE resource_key = %(key)s
"""

#: Keep a non-worker lock while its block runs; gated on the holder (nothing if taken over).
LOCK_RENEW = """
UPDATE pg_resource_lock SET expires_at = now() + make_interval(secs => %(ttl)s)
WHERE resource_key = %(key)s AND holder_id = %(holder_id)s
RETURNING resource_key
"""

#: Give a lock back; gated on the holder.
LOCK_RELEASE = """
DELETE FROM pg_resource_lock WHERE resource_key = %(key)s AND holder_id = %(holder_id)s
"""

#: An operator's escape hatch: delete the lock whoever holds it; returns who did.
LOCK_FORCE_RELEASE = """
DELETE FROM pg_resource_lock WHERE resource_key = %(key)s
RETURNING holder_kind, holder_id, acquired_at, task_id
"""

#: Every lock, oldest first, with its age.
LOCK_LIST = """
SELECT resource_key, holder_kind, holder_id, task_id, acquired_at, expires_at,
       EXTRACT(EPOCH FROM now() - acquired_at), expires_at IS NOT NULL AND expires_at <= now()
FROM pg_resource_lock ORDER BY acquired_at, resource_key
"""

#: Run by every worker's maintenance: expired non-worker locks, and job locks whose job is no
#: longer claimed (a statement that ends a claim deletes its lock; this catches any other path,
#: e.g. a row deleted by hand). A lock and its claim commit together, so a lock whose claim is
#: not visible was never committed with one.
LOCK_SWEEP = """
DELETE FROM pg_resource_lock AS l
WHERE (l.expires_at IS NOT NULL AND l.expires_at <= now())
   OR (l.holder_kind = 'worker' AND NOT EXISTS (
        SELECT 1 FROM pg_queue_message AS m
        WHERE m.task_id = l.task_id AND m.state = 'claimed'
   ))
RETURNING resource_key, holder_kind, holder_id
"""

#: Run by every worker's maintenance: unpark the head of each key that has due parked jobs but
#: no unparked job claimed or due (its head was cancelled or purged, or a parked job committed
#: after its head's finish looked for it). Reads the parked index in key order.
KEY_UNPARK_SWEEP = """
UPDATE pg_queue_message AS p SET parked = false
FROM (
    SELECT DISTINCT ON (n.resource_key) n.msg_id, n.resource_key
    FROM pg_queue_message AS n
    WHERE n.parked AND n.available_at <= now()
    ORDER BY n.resource_key, n.priority DESC, n.available_at, n.msg_id
) AS head
WHERE p.msg_id = head.msg_id AND p.parked
  AND NOT EXISTS (
      SELECT 1 FROM pg_queue_message AS o
      WHERE o.resource_key = head.resource_key AND NOT o.parked
        AND (o.state = 'claimed' OR o.available_at <= now())
  )
RETURNING p.resource_key
"""

# --- groups and chains ---------------------------------------------------------------------

GROUP_INSERT = """
INSERT INTO pg_queue_group (
    group_id, kind, total, finished, failed, status, on_success, on_error, steps, created_at,
    finished_at
) VALUES (
    %(group_id)s, %(kind)s, %(total)s, 0, 0, %(status)s, %(on_success)s::jsonb,
    %(on_error)s::jsonb, %(steps)s::jsonb, now(), CASE WHEN %(status)s = 'running' THEN NULL
    ELSE now() END
)
"""

#: Count finished children (``n``, of which ``f`` failed) into their groups, and end a group in
#: the same statement: a group once every child finished (failed if any failed), a chain at its
#: first failure or its last step. Only running groups change; a row returned with a status
#: other than 'running' has just ended, and this is the only statement that sees it end.
GROUP_PROGRESS = """
UPDATE pg_queue_group AS g
SET finished = g.finished + c.n,
    failed = g.failed + c.f,
    status = CASE
        WHEN g.kind = 'chain' AND c.f > 0 THEN 'failed'
        WHEN g.finished + c.n >= g.total
            THEN CASE WHEN g.failed + c.f > 0 THEN 'failed' ELSE 'succeeded' END
        ELSE g.status END,
    finished_at = CASE
        WHEN (g.kind = 'chain' AND c.f > 0) OR g.finished + c.n >= g.total THEN now()
        ELSE g.finished_at END
FROM unnest(%(group_ids)s::uuid[], %(n)s::int[], %(f)s::int[]) AS c(group_id, n, f)
WHERE g.group_id = c.group_id AND g.status = 'running'
RETURNING g.group_id, g.kind, g.status, g.finished, g.total, g.on_success::text,
          g.on_error::text, g.steps::text
"""

#: A group's results in job order (its children all store results).
GROUP_RESULTS = """
SELECT group_index, result::text FROM pg_task_result
WHERE group_id = %(group_id)s ORDER BY group_index
"""

#: A group's failed or cancelled children, in job order.
GROUP_FAILURES = """
SELECT task_id, error FROM pg_task_result
WHERE group_id = %(group_id)s AND status <> 'succeeded' ORDER BY group_index
"""

#: A failed child put back by an operator (dead-letter requeue): it no longer counts as
#: finished; a group that had ended failed runs again and will end once more, normally.
GROUP_REOPEN = """
UPDATE pg_queue_group AS g
SET finished = GREATEST(g.finished - c.n, 0), failed = GREATEST(g.failed - c.n, 0),
    status = 'running', finished_at = NULL
FROM unnest(%(group_ids)s::uuid[], %(n)s::int[]) AS c(group_id, n)
WHERE g.group_id = c.group_id
RETURNING g.group_id, g.kind
"""

#: The steps of a failed chain that will never run end 'cancelled' (first write wins).
CHAIN_CANCEL_REST = """
INSERT INTO pg_task_result (
    task_id, status, result, error, traceback, task_name, queue_name, attempts, enqueued_at,
    started_at, finished_at, expires_at, group_id, group_index
)
SELECT s.task_id, 'cancelled', NULL, %(error)s, '', s.task_name, s.queue_name, 0, NULL, NULL,
       now(), now() + make_interval(secs => %(ttl)s), %(group_id)s, s.group_index
FROM unnest(%(task_ids)s::uuid[], %(task_names)s::text[], %(queues)s::text[],
            %(indexes)s::int[]) AS s(task_id, task_name, queue_name, group_index)
ON CONFLICT (task_id) DO NOTHING
"""

#: A requeued chain step: the later steps' 'cancelled' outcomes go, so they can run after all.
CHAIN_UNCANCEL = """
DELETE FROM pg_task_result
WHERE group_id = %(group_id)s AND group_index > %(index)s AND status = 'cancelled'
"""

#: Wake callers waiting on these groups (``GroupHandle.wait``): ids on the result channel.
GROUP_NOTIFY = "SELECT pg_notify(%(channel)s, %(ids)s)"

#: One group, for a handle's ``status()`` / ``wait()``.
GROUP_STATE = """
SELECT kind, status, total, finished, failed, steps::text FROM pg_queue_group
WHERE group_id = %(group_id)s
"""
