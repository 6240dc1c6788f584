"""Every statement of the cold paths: operator actions, the overview, status reads, metrics.

``pg_queue.db.sql`` holds the hot path (enqueue, claim, finish, leases, re-arm); this module the
rest of the queue's own SQL, so that no other module spells queue SQL. Names are noun-first
(``JOB_RUN_NOW``, ``QUEUE_OVERVIEW``); parameters are named; times come from ``now()``.
"""

# --- operator actions (pg_queue.ops.operations) -------------------------------------------

#: Due-now for delayed rows only: a row already due keeps its place in the claim order.
JOB_RUN_NOW = """
UPDATE pg_queue_message SET available_at = now(), scheduled = false
WHERE msg_id = ANY(%(ids)s::bigint[]) AND state = 'ready' AND available_at > now()
RETURNING msg_id, task_id, task_name, queue_name, state
"""

#: Priority matters to the claim of ready rows; a running row keeps it for its retries.
JOB_SET_PRIORITY = """
UPDATE pg_queue_message SET priority = %(priority)s
WHERE msg_id = ANY(%(ids)s::bigint[]) AND priority <> %(priority)s
RETURNING msg_id, task_id, task_name, queue_name, state
"""

#: Lock the rows to cancel, so that none changes state (claimed, retried, acked) between our
#: look and our change. In msg_id order, so two operators never deadlock each other.
JOB_LOCK_FOR_CANCEL = """
SELECT msg_id, state FROM pg_queue_message
WHERE msg_id = ANY(%(ids)s::bigint[]) OR task_id = ANY(%(task_ids)s::uuid[])
ORDER BY msg_id
FOR UPDATE
"""

#: Queued jobs: remove them and record a 'cancelled' outcome (first write wins), one statement.
JOB_CANCEL_QUEUED = """
WITH gone AS (
    DELETE FROM pg_queue_message
    WHERE msg_id = ANY(%(ids)s::bigint[]) AND state = 'ready'
    RETURNING *
), outcomes AS (
    INSERT INTO pg_task_result (
        task_id, status, result, error, traceback, task_name, queue_name, attempts,
        enqueued_at, started_at, finished_at, expires_at, group_id, group_index
    )
    SELECT g.task_id, 'cancelled', NULL, %(error)s, '', g.task_name, g.queue_name, g.attempts,
           g.enqueued_at, NULL, now(), now() + make_interval(secs => %(ttl)s),
           g.group_id, g.group_index
    FROM gone AS g
    ON CONFLICT (task_id) DO NOTHING
)
SELECT msg_id, task_id, task_name, queue_name, state, payload, group_id, group_index
FROM gone ORDER BY msg_id
"""

#: Running jobs: ask their worker to stop them at its next safe point.
JOB_REQUEST_CANCEL = """
UPDATE pg_queue_message SET cancel_requested = true
WHERE msg_id = ANY(%(ids)s::bigint[]) AND state = 'claimed'
RETURNING msg_id, task_id, task_name, queue_name, state
"""

#: Wake result waiters: one notification per payload (each under NOTIFY's 8000-byte limit),
#: all sent by one statement and delivered at commit.
RESULT_NOTIFY = "SELECT pg_notify(%(channel)s, p) FROM unnest(%(payloads)s::text[]) AS p"

DEAD_LETTER_REFS = """
SELECT id, task_id, task_name, queue_name, reason FROM pg_queue_dead_letter
WHERE id = ANY(%(ids)s::bigint[]) ORDER BY id
"""

DEAD_LETTER_DISCARD = """
DELETE FROM pg_queue_dead_letter WHERE id = ANY(%(ids)s::bigint[])
RETURNING id, task_id, task_name, queue_name, reason
"""

#: Put dead letters back as fresh jobs (attempts 0) under their original task ids, and drop
#: their failed outcomes so the next outcome can be written (results are first-write-wins).
#: One statement: the letter, the outcome and the new job change together or not at all.
DEAD_LETTER_REQUEUE = """
WITH letters AS (
    DELETE FROM pg_queue_dead_letter AS d
    WHERE d.id = ANY(%(ids)s)
      AND NOT EXISTS (SELECT 1 FROM pg_queue_message AS m WHERE m.task_id = d.task_id)
    RETURNING *
), old_outcomes AS (
    DELETE FROM pg_task_result AS r USING letters AS l WHERE r.task_id = l.task_id
), requeued AS (
    INSERT INTO pg_queue_message (
        task_id, queue_name, task_name, payload, priority, max_attempts, tenant_key,
        last_error, group_id, group_index, resource_key
    )
    SELECT l.task_id, l.queue_name, l.task_name, COALESCE(l.payload, '{}'::jsonb), l.priority,
           GREATEST(l.max_attempts, 1), l.tenant_key,
           'requeued from dead letter: ' || l.last_error, l.group_id, l.group_index,
           l.resource_key
    FROM letters AS l
    RETURNING task_id, group_id, group_index
)
SELECT task_id, group_id, group_index FROM requeued
"""

#: What each ``pg_queue_purge --state`` means, as a condition on pg_queue_message. Only these
#: fixed conditions are ever formatted into the two statements below (never user input).
JOB_PURGE_WHERE = {
    "ready": "state = 'ready' AND available_at <= now()",
    "delayed": "state = 'ready' AND available_at > now()",
    "queued": "state = 'ready'",
    "claimed": "state = 'claimed'",
    "all": "TRUE",
}

JOB_PURGE_COUNT = """
SELECT count(*) FROM pg_queue_message WHERE queue_name = %(queue)s AND {where}
"""

#: One chunk of a purge (each its own short transaction), in msg_id order. A purged job's lock
#: goes with it; a purged member of a group or chain gets a 'cancelled' outcome, so its group
#: counts it failed and can end (other jobs get none: a purge throws them away).
JOB_PURGE_CHUNK = """
WITH done AS (
    DELETE FROM pg_queue_message WHERE msg_id IN (
        SELECT msg_id FROM pg_queue_message WHERE queue_name = %(queue)s AND {where}
        ORDER BY msg_id LIMIT %(limit)s FOR UPDATE
    )
    RETURNING task_id, task_name, queue_name, attempts, enqueued_at, resource_key, group_id,
              group_index
), unlocked AS (
    DELETE FROM pg_resource_lock AS l USING done AS d
    WHERE d.resource_key IS NOT NULL AND l.resource_key = d.resource_key
      AND l.task_id = d.task_id
), member_outcomes AS (
    INSERT INTO pg_task_result (
        task_id, status, result, error, traceback, task_name, queue_name, attempts,
        enqueued_at, started_at, finished_at, expires_at, group_id, group_index
    )
    SELECT d.task_id, 'cancelled', NULL, %(error)s, '', d.task_name, d.queue_name, d.attempts,
           d.enqueued_at, NULL, now(), now() + make_interval(secs => %(ttl)s),
           d.group_id, d.group_index
    FROM done AS d WHERE d.group_id IS NOT NULL
    ON CONFLICT (task_id) DO NOTHING
)
SELECT task_id, group_id, group_index FROM done
"""

# --- the overview (pg_queue.ops.overview) ---------------------------------------------------

#: Everything per queue in one statement: live jobs, recent outcomes, dead letters and live
#: workers, each aggregated once over its table and joined on the queue name.
QUEUE_OVERVIEW = """
WITH msg AS (
    SELECT queue_name,
           count(*) FILTER (WHERE state = 'ready' AND available_at <= now()) AS ready,
           count(*) FILTER (WHERE state = 'ready' AND available_at > now()) AS delayed,
           count(*) FILTER (WHERE state = 'claimed') AS running,
           count(*) FILTER (WHERE state = 'claimed' AND vt < now()) AS lease_expired,
           count(*) FILTER (WHERE cancel_requested) AS cancel_requested,
           EXTRACT(EPOCH FROM now() - min(available_at)
                   FILTER (WHERE state = 'ready' AND available_at <= now()))::float8
               AS oldest_ready_seconds
    FROM pg_queue_message
    GROUP BY queue_name
), res AS (
    SELECT queue_name,
           count(*) FILTER (WHERE finished_at > now() - make_interval(mins => %(short)s))
               AS finished_short,
           count(*) FILTER (WHERE finished_at > now() - make_interval(mins => %(short)s)
                            AND status = 'failed') AS failed_short,
           count(*) AS finished_long,
           count(*) FILTER (WHERE status = 'failed') AS failed_long
    FROM pg_task_result
    WHERE finished_at > now() - make_interval(mins => %(long)s)
    GROUP BY queue_name
), dead AS (
    SELECT queue_name, count(*) AS dead_letters FROM pg_queue_dead_letter GROUP BY queue_name
), wrk AS (
    SELECT q.queue_name, count(*) AS workers
    FROM pg_worker AS w
    CROSS JOIN LATERAL jsonb_array_elements_text(
        CASE WHEN jsonb_typeof(w.queues) = 'array' THEN w.queues ELSE '[]'::jsonb END
    ) AS q(queue_name)
    WHERE w.heartbeat_at > now() - make_interval(secs => %(stale)s)
    GROUP BY q.queue_name
), names AS (
    SELECT queue_name FROM msg UNION SELECT queue_name FROM res
    UNION SELECT queue_name FROM dead UNION SELECT queue_name FROM wrk
)
SELECT n.queue_name,
       COALESCE(msg.ready, 0), COALESCE(msg.delayed, 0), COALESCE(msg.running, 0),
       COALESCE(msg.lease_expired, 0), COALESCE(msg.cancel_requested, 0),
       msg.oldest_ready_seconds,
       COALESCE(res.finished_short, 0), COALESCE(res.failed_short, 0),
       COALESCE(res.finished_long, 0), COALESCE(res.failed_long, 0),
       COALESCE(dead.dead_letters, 0), COALESCE(wrk.workers, 0)
FROM names AS n
LEFT JOIN msg USING (queue_name)
LEFT JOIN res USING (queue_name)
LEFT JOIN dead USING (queue_name)
LEFT JOIN wrk USING (queue_name)
ORDER BY n.queue_name
"""

#: Every worker row with its heartbeat age and in-flight count (one aggregate, not per row).
WORKER_OVERVIEW = """
SELECT w.worker_id, w.hostname, w.pid, w.queues, w.concurrency, w.state,
       EXTRACT(EPOCH FROM now() - w.started_at)::float8,
       EXTRACT(EPOCH FROM now() - w.heartbeat_at)::float8,
       COALESCE(m.in_flight, 0), now()
FROM pg_worker AS w
LEFT JOIN (
    SELECT worker_id, count(*) AS in_flight FROM pg_queue_message
    WHERE state = 'claimed' GROUP BY worker_id
) AS m USING (worker_id)
ORDER BY w.hostname, w.worker_id
"""

#: Held resource locks, oldest first, at most ``limit`` of them, each row carrying how many are
#: held in all. Ages and time left by the database clock; time left is NULL for a job's lock.
LOCK_OVERVIEW = """
SELECT resource_key, holder_kind, holder_id, task_id,
       EXTRACT(EPOCH FROM now() - acquired_at)::float8,
       EXTRACT(EPOCH FROM expires_at - now())::float8,
       count(*) OVER ()
FROM pg_resource_lock
ORDER BY acquired_at, resource_key
LIMIT %(limit)s
"""

#: Running groups and chains, oldest first (the partial index on running rows), at most
#: ``limit``, each row carrying how many are running in all.
GROUP_RUNNING_OVERVIEW = """
SELECT group_id, kind, finished, total, failed,
       EXTRACT(EPOCH FROM now() - created_at)::float8,
       count(*) OVER ()
FROM pg_queue_group
WHERE status = 'running'
ORDER BY created_at, group_id
LIMIT %(limit)s
"""

# --- status of one job (pg_queue.results) ---------------------------------------------------

#: One round trip: the finished outcome, or the live job's queued/running state.
JOB_STATUS = """
SELECT 'result' AS src, status, result, error, traceback, attempts
  FROM pg_task_result WHERE task_id = %(id)s
UNION ALL
SELECT 'message', state, NULL, last_error, '', attempts
  FROM pg_queue_message WHERE task_id = %(id)s
"""

# --- metrics (pg_queue.metrics) -------------------------------------------------------------

#: The queue-depth snapshot ``/metrics`` serves (``QUEUE_STATS_REFRESH`` below), with
#: its age: a scrape reads this small table, never the queue table.
QUEUE_STATS = """
SELECT queue_name, ready, delayed, running, oldest_ready_seconds,
       EXTRACT(EPOCH FROM now() - taken_at)::float8
FROM pg_queue_stats
"""

#: Queue depth by state and the oldest due job's age, per queue.
QUEUE_DEPTH = """
SELECT queue_name,
       count(*) FILTER (WHERE state = 'ready' AND available_at <= now()) AS ready,
       count(*) FILTER (WHERE state = 'ready' AND available_at > now()) AS delayed,
       count(*) FILTER (WHERE state = 'claimed') AS running,
       COALESCE(EXTRACT(EPOCH FROM now() - min(available_at)
                FILTER (WHERE state = 'ready' AND available_at <= now())), 0) AS oldest_ready
FROM pg_queue_message GROUP BY queue_name
"""

#: Replace the snapshot with the current counts, in one statement; run by the holder of the
#: ``queue_stats`` lease only: one count of the queue table per interval for the whole
#: deployment, instead of one per scrape of every process.
QUEUE_STATS_REFRESH = (
    "WITH snap AS ("
    + QUEUE_DEPTH
    + """), gone AS (
    DELETE FROM pg_queue_stats AS s
    WHERE NOT EXISTS (SELECT 1 FROM snap WHERE snap.queue_name = s.queue_name)
)
INSERT INTO pg_queue_stats (queue_name, ready, delayed, running, oldest_ready_seconds, taken_at)
SELECT queue_name, ready, delayed, running, oldest_ready, now() FROM snap
ON CONFLICT (queue_name) DO UPDATE
SET ready = EXCLUDED.ready, delayed = EXCLUDED.delayed, running = EXCLUDED.running,
    oldest_ready_seconds = EXCLUDED.oldest_ready_seconds, taken_at = EXCLUDED.taken_at
"""
)

# --- transaction settings and the clock ------------------------------------------------------

#: An operator action's lock wait, for its transaction only (``SET LOCAL``, parametrised).
ACTION_LOCK_TIMEOUT_SET = "SELECT set_config('lock_timeout', %(timeout)s, true)"

#: The overview reads every table from one snapshot, without writing.
OVERVIEW_SNAPSHOT = "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"

#: The database clock (what every age on the operator surfaces is measured against).
DB_NOW = "SELECT now()"

# --- the demo and the benchmark ----------------------------------------------------------------

#: Everything one queue left behind (the demo's and the benchmark's own queues only).
QUEUE_CLEAR = (
    "DELETE FROM pg_queue_message WHERE queue_name = %(queue)s",
    "DELETE FROM pg_task_result WHERE queue_name = %(queue)s",
    "DELETE FROM pg_queue_dead_letter WHERE queue_name = %(queue)s",
)

#: Fresh statistics and no dead rows before a benchmark drain (the queue and the lock table:
#: every keyed job inserts and deletes a lock row).
BENCH_VACUUM = ("VACUUM ANALYZE pg_queue_message", "VACUUM ANALYZE pg_resource_lock")
#: Fresh statistics after a bulk enqueue, so the claim is planned for the table's size.
BENCH_ANALYZE = "ANALYZE pg_queue_message"

DEMO_FINISHED_COUNT = """
SELECT
    (SELECT count(*) FROM (
        SELECT task_id FROM pg_task_result WHERE queue_name = %(queue)s
        UNION
        SELECT task_id FROM pg_queue_dead_letter WHERE queue_name = %(queue)s
    ) AS finished),
    (SELECT count(*) FROM pg_queue_dead_letter WHERE queue_name = %(queue)s)
"""

DEMO_SUMMARY = """
SELECT
    count(*),
    count(*) FILTER (WHERE status = 'succeeded'),
    count(*) FILTER (WHERE status = 'failed'),
    COALESCE(sum(attempts - 1), 0),
    percentile_cont(0.5) WITHIN GROUP (
        ORDER BY extract(epoch FROM started_at - enqueued_at)::float8) * 1000,
    percentile_cont(0.99) WITHIN GROUP (
        ORDER BY extract(epoch FROM started_at - enqueued_at)::float8) * 1000,
    extract(epoch FROM max(finished_at) - min(started_at))::float8,
    extract(epoch FROM min(started_at) - min(enqueued_at))::float8 * 1000,
    (SELECT count(*) FROM pg_queue_dead_letter WHERE queue_name = %(queue)s),
    (SELECT count(*) FROM pg_queue_message WHERE queue_name = %(queue)s)
FROM pg_task_result
WHERE queue_name = %(queue)s
"""

DEMO_PER_TASK = """
SELECT task_name,
       count(*),
       count(*) FILTER (WHERE status = 'succeeded'),
       count(*) FILTER (WHERE status = 'failed'),
       COALESCE(sum(attempts - 1), 0)
FROM pg_task_result
WHERE queue_name = %(queue)s
GROUP BY task_name
ORDER BY task_name
"""

#: Has the benchmark's worker process registered (its pg_worker row, by pid)?
BENCH_WORKER_UP = "SELECT count(*) FROM pg_worker WHERE pid = %s"
#: Rows deleted from the queue table so far (acks), from the cumulative statistics.
BENCH_JOBS_DELETED = "SELECT n_tup_del FROM pg_stat_user_tables WHERE relname = 'pg_queue_message'"
#: How many of these jobs have an outcome.
BENCH_FINISHED = "SELECT count(*) FROM pg_task_result WHERE task_id = ANY(%s::uuid[])"
#: What these ``stamp`` jobs returned (their start, epoch seconds), and ms from their insert to
#: their recorded start.
BENCH_STARTS = """
SELECT task_id, (result #>> '{}')::float8,
       (EXTRACT(EPOCH FROM started_at - enqueued_at) * 1000)::float8
FROM pg_task_result WHERE task_id = ANY(%s::uuid[])
"""
