"""Statements of the worker's own bookkeeping, off the hot path: its ``pg_worker`` row, the
result-retention sweep, and the vacuum check at start. Same conventions as ``sql``."""

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

WORKER_UNREGISTER = "DELETE FROM pg_worker WHERE worker_id = %(worker_id)s"

#: Rows of processes that died without unregistering (kill -9, OOM); run by every worker.
WORKER_PRUNE = """
DELETE FROM pg_worker WHERE heartbeat_at < now() - make_interval(secs => %(stale)s)
"""

# --- results ---------------------------------------------------------------------------------

#: Retention sweep; bounded so that no single sweep holds locks for long.
RESULT_SWEEP = """
DELETE FROM pg_task_result
WHERE task_id IN (
    SELECT task_id FROM pg_task_result WHERE expires_at < now() LIMIT %(limit)s
)
"""
