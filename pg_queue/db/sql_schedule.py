"""Every statement of periodic tasks and the leader lease (``pg_queue.scheduling``).

The lease is one row per role: acquired by one conditional INSERT ... ON CONFLICT (the row is
free or expired), renewed by one conditional UPDATE (still ours and not expired), both on the
database clock. A leader that fails to renew stops acting at once; and every statement that
fires a schedule re-checks the lease itself, so a leader that lost it (paused process, clock
jump, partition) cannot fire even before it notices.

Firing is one transaction: ``SCHEDULE_ADVANCE`` (conditional on the tick the caller read, so
two firers of the same tick serialize on the row and only the first matches) and the job's
INSERT. A crash before the commit leaves the tick due; after it, both are done.
"""

# --- the leader lease -------------------------------------------------------------------------

#: Take the ``role`` lease: a free role, or one whose holder let it expire. Also renews a
#: lease we already hold. Returns the expiry when ours; nothing when someone else leads.
LEADER_ACQUIRE = """
INSERT INTO pg_leader_lease AS l (role, holder, acquired_at, renewed_at, expires_at)
VALUES (%(role)s, %(holder)s, now(), now(), now() + make_interval(secs => %(ttl)s))
ON CONFLICT (role) DO UPDATE
SET holder = EXCLUDED.holder,
    acquired_at = CASE WHEN l.holder = EXCLUDED.holder AND l.expires_at > now()
                       THEN l.acquired_at ELSE now() END,
    renewed_at = now(),
    expires_at = EXCLUDED.expires_at
WHERE l.holder = EXCLUDED.holder OR l.expires_at <= now()
RETURNING expires_at
"""

#: Keep the lease: only while still ours and not yet expired (an expired lease is re-acquired
#: through ``LEADER_ACQUIRE``, which lets anyone compete for it). Nothing back = lost.
LEADER_RENEW = """
UPDATE pg_leader_lease
SET renewed_at = now(), expires_at = now() + make_interval(secs => %(ttl)s)
WHERE role = %(role)s AND holder = %(holder)s AND expires_at > now()
RETURNING expires_at
"""

#: Give the lease up at shutdown, so that another worker takes over at its next attempt.
LEADER_RELEASE = """
DELETE FROM pg_leader_lease WHERE role = %(role)s AND holder = %(holder)s
"""

LEADER_GET = """
SELECT holder, acquired_at, renewed_at, expires_at, expires_at > now() FROM pg_leader_lease
WHERE role = %(role)s
"""

# --- schedules --------------------------------------------------------------------------------

#: Schedules to act on now: due ticks, and rows without a baseline (``next_run_at`` NULL).
#: Also the database's ``now()``, which every next-run computation starts from.
SCHEDULE_DUE = """
SELECT name, task_name, queue_name, args, kwargs, cron, timezone, next_run_at, now()
FROM pg_periodic_task
WHERE enabled AND (next_run_at IS NULL OR next_run_at <= now())
ORDER BY next_run_at NULLS FIRST, name
LIMIT %(limit)s
"""

#: Seconds until the next enabled tick (NULL: none scheduled).
SCHEDULE_NEXT_WAIT = """
SELECT EXTRACT(EPOCH FROM min(next_run_at) - now()) FROM pg_periodic_task WHERE enabled
"""

#: The firing condition of ``SCHEDULE_ADVANCE``, on the row as locked (so a beat claim that
#: committed while we waited for the lock is seen).
_FIRES = """(%(fire)s::boolean AND NOT COALESCE(
        p.last_fired_by = 'celery' AND p.last_run_at > now() - make_interval(secs => %(fence)s),
        false))"""

#: Move one schedule past the tick the caller read (``due``), and fire it when ``fire`` is
#: true, unless Celery beat fired it less than ``fence`` seconds ago (the hand-over fence: a
#: tick is fired on one side only). Gated on the leader lease and on ``due``: a second firer of
#: the same tick waits for the first's row lock, then finds ``next_run_at`` moved and matches
#: nothing. Returns whether this call fired: the caller inserts the job in the same
#: transaction only then.
SCHEDULE_ADVANCE = f"""
UPDATE pg_periodic_task AS p
SET next_run_at = %(next_run_at)s,
    last_run_at = CASE WHEN {_FIRES} THEN now() ELSE p.last_run_at END,
    last_task_id = CASE WHEN {_FIRES} THEN %(task_id)s::uuid ELSE p.last_task_id END,
    last_fired_by = CASE WHEN {_FIRES} THEN 'postgres' ELSE p.last_fired_by END
WHERE p.name = %(name)s AND p.enabled
  AND p.next_run_at IS NOT DISTINCT FROM %(due)s::timestamptz
  AND EXISTS (
      SELECT 1 FROM pg_leader_lease AS l
      WHERE l.role = %(role)s AND l.holder = %(holder)s AND l.expires_at > now()
  )
RETURNING p.last_task_id IS NOT DISTINCT FROM %(task_id)s::uuid
"""

#: The Celery beat hand-over scheduler claims a tick for Celery: it fires only if this returns
#: a row, i.e. pg_queue did not fire the schedule less than ``fence`` seconds ago. Serialized
#: with ``SCHEDULE_ADVANCE`` on the row lock.
SCHEDULE_CLAIM_FOR_CELERY = """
UPDATE pg_periodic_task
SET last_run_at = now(), last_fired_by = 'celery'
WHERE name = %(name)s
  AND NOT COALESCE(
      last_fired_by = 'postgres' AND last_run_at > now() - make_interval(secs => %(fence)s),
      false)
RETURNING name
"""

#: One schedule's cron and time zone (the beat scheduler computes its fence from them).
SCHEDULE_GET = """
SELECT cron, timezone, enabled FROM pg_periodic_task WHERE name = %(name)s
"""

#: Settings sync, one row: insert a new schedule (no baseline yet) or update a declared one.
#: A changed cron or time zone drops the baseline so that the next tick is recomputed; an
#: existing row keeps the operator's ``enabled`` unless it comes back into the settings.
SCHEDULE_UPSERT = """
INSERT INTO pg_periodic_task AS p (
    name, task_name, queue_name, args, kwargs, cron, timezone, enabled, in_settings,
    last_run_at, next_run_at, last_task_id, last_fired_by, updated_at
) VALUES (
    %(name)s, %(task_name)s, %(queue_name)s, %(args)s::jsonb, %(kwargs)s::jsonb, %(cron)s,
    %(timezone)s, %(enabled)s, true, NULL, NULL, NULL, '', now()
)
ON CONFLICT (name) DO UPDATE
SET task_name = EXCLUDED.task_name, queue_name = EXCLUDED.queue_name, args = EXCLUDED.args,
    kwargs = EXCLUDED.kwargs, cron = EXCLUDED.cron, timezone = EXCLUDED.timezone,
    enabled = CASE WHEN p.in_settings THEN p.enabled ELSE EXCLUDED.enabled END,
    next_run_at = CASE WHEN p.cron = EXCLUDED.cron AND p.timezone = EXCLUDED.timezone
                       THEN p.next_run_at END,
    in_settings = true, updated_at = now()
WHERE (p.task_name, p.queue_name, p.args, p.kwargs, p.cron, p.timezone, p.in_settings)
      IS DISTINCT FROM (EXCLUDED.task_name, EXCLUDED.queue_name, EXCLUDED.args,
                        EXCLUDED.kwargs, EXCLUDED.cron, EXCLUDED.timezone, true)
RETURNING name, (xmax = 0) AS inserted
"""

#: Settings sync: schedules no longer declared are disabled and kept (their history stays in
#: the admin; putting them back re-enables them). Schedules created in the admin are untouched.
SCHEDULE_RETIRE = """
UPDATE pg_periodic_task
SET enabled = false, in_settings = false, updated_at = now()
WHERE in_settings AND NOT (name = ANY(%(names)s))
RETURNING name
"""

#: The admin's "run now": the job's id is recorded; ``last_run_at`` and ``last_fired_by`` are
#: not, since they are the ticks' record (the hand-over fence reads them): an extra run must not
#: make the next tick be passed over.
SCHEDULE_RAN_NOW = """
UPDATE pg_periodic_task SET last_task_id = %(task_id)s WHERE name = %(name)s
"""
