"""Statements of the worker's own bookkeeping, off the hot path: its ``pg_worker`` row, the
result-retention sweep, the vacuum check at start and the --burst check for work still due.
Same conventions as ``sql``."""

# --- workers ---------------------------------------------------------------------------------

#: Is anything keeping the queue table from being vacuumed? Every job leaves two dead row
#: versions (claim, ack); without VACUUM the table and its indexes grow without bound.
QUEUE_VACUUM_STATE = """
SELECT NOT current_setting('autovacuum')::boolean AS server_off,
       EXISTS (
           SELECT 1 FROM pg_options_to_table(c.reloptions)
           WHERE option_name = 'autovacuum_enabled' AND NOT option_value::boolean
       ) AS table_off
FROM pg_class AS c
WHERE c.oid = 'pg_queue_message'::regclass
"""

WORKER_REGISTER = """
INSERT INTO pg_worker (worker_id, hostname, pid, queues, concurrency, started_at, heartbeat_at,
                       state)
VALUES (%(worker_id)s, %(hostname)s, %(pid)s, %(queues)s::jsonb, %(concurrency)s, now(), now(),
        'running')
ON CONFLICT (worker_id) DO UPDATE
SET hostname = EXCLUDED.hostname, pid = EXCLUDED.pid, queues = EXCLUDED.queues,
    concurrency = EXCLUDED.concurrency, started_at = now(), heartbeat_at = now(),
    state = 'running'
"""

WORKER_HEARTBEAT = """
UPDATE pg_worker SET heartbeat_at = now(), state = %(state)s WHERE worker_id = %(worker_id)s
"""

WORKER_UNREGISTER = """
WITH gone AS (DELETE FROM pg_worker WHERE worker_id = %(worker_id)s RETURNING worker_id)
DELETE FROM pg_queue_waiter WHERE worker_id = %(worker_id)s
"""

#: Rows of processes that died without unregistering (kill -9, OOM), and their wake-up marks;
#: run by every worker.
WORKER_PRUNE = """
WITH gone AS (
    DELETE FROM pg_worker WHERE heartbeat_at < now() - make_interval(secs => %(stale)s)
    RETURNING worker_id
)
DELETE FROM pg_queue_waiter WHERE worker_id IN (SELECT worker_id FROM gone)
"""

#: "This worker waits on these queues": one mark per queue (``models.QueueWaiter``), standing
#: or ``takeable`` (then the first enqueue that NOTIFYs for it sets it false). A mark a
#: producer is taking is skipped, not waited for: that producer's NOTIFY is on its way.
#: Marks are rewritten in place (a HOT update of an unlogged table with room on its pages); a
#: queue's first mark is inserted. Returns the queues now marked as asked (the others were
#: locked: mark them next time) and whether one of the queues holds a claimable job committed
#: before the marks (one index probe each): it sent no NOTIFY, so the worker claims at once.
#: pg_queue/worker/coordinator.py ("wake-up marks") says when a worker runs it.
WAITER_MARK = """
WITH up AS (
    UPDATE pg_queue_waiter SET waiting = true, takeable = %(takeable)s
    WHERE (queue_name, worker_id) IN (
        SELECT queue_name, worker_id FROM pg_queue_waiter
        WHERE worker_id = %(worker_id)s AND queue_name = ANY(%(queues)s::text[])
          AND (NOT waiting OR takeable <> %(takeable)s)
        FOR UPDATE SKIP LOCKED
    )
    RETURNING queue_name
), ins AS (
    INSERT INTO pg_queue_waiter (queue_name, worker_id, waiting, takeable)
    SELECT q, %(worker_id)s, true, %(takeable)s FROM unnest(%(queues)s::text[]) AS q
    WHERE NOT EXISTS (
        SELECT 1 FROM pg_queue_waiter AS w WHERE w.queue_name = q AND w.worker_id = %(worker_id)s
    )
    ON CONFLICT DO NOTHING
    RETURNING queue_name
)
SELECT ARRAY(
    SELECT queue_name FROM up
    UNION SELECT queue_name FROM ins
    UNION SELECT queue_name FROM pg_queue_waiter
    WHERE worker_id = %(worker_id)s AND queue_name = ANY(%(queues)s::text[])
      AND waiting AND takeable = %(takeable)s
), EXISTS (
    SELECT 1 FROM unnest(%(queues)s::text[]) AS q
    WHERE EXISTS (
        SELECT 1 FROM pg_queue_message AS m
        WHERE m.queue_name = q AND m.state = 'ready' AND NOT m.parked AND NOT m.scheduled
          AND m.available_at <= now()
    )
)
"""

# --- results ---------------------------------------------------------------------------------

#: Retention sweep; bounded so that no single sweep holds locks for long.
RESULT_SWEEP = """
DELETE FROM pg_task_result
WHERE task_id IN (
    SELECT task_id FROM pg_task_result WHERE expires_at < now() LIMIT %(limit)s
)
"""

#: Does a --burst worker still have anything to wait for: a row due within the lookahead, or a
#: claim of a dead worker (no heartbeat for a lease) that re-arm will hand back within it?
JOB_DUE_SOON = """
SELECT EXISTS (
    SELECT 1 FROM pg_queue_message
    WHERE state = 'ready' AND queue_name = ANY(%(queues)s)
      AND available_at <= now() + make_interval(secs => %(lookahead)s)
) OR EXISTS (
    SELECT 1 FROM pg_queue_message AS m
    WHERE m.state = 'claimed' AND m.queue_name = ANY(%(queues)s)
      AND m.vt <= now() + make_interval(secs => %(lookahead)s)
      AND NOT EXISTS (
          SELECT 1 FROM pg_worker AS w
          WHERE w.worker_id = m.worker_id
            AND w.heartbeat_at > now() - make_interval(secs => %(lease)s)
      )
)
"""

# --- scheduled jobs --------------------------------------------------------------------------

#: Promote scheduled jobs due within ``ahead`` seconds into the claim index (clear
#: ``scheduled``), earliest first, at most ``limit``; rows another promoter holds are skipped.
JOB_PROMOTE = """
UPDATE pg_queue_message AS m SET scheduled = false
FROM (
    SELECT msg_id FROM pg_queue_message
    WHERE scheduled AND available_at <= now() + make_interval(secs => %(ahead)s)
    ORDER BY available_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
) AS due
WHERE m.msg_id = due.msg_id
"""
