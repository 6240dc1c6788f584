"""Every statement the queue's hot path runs, named noun-first after what it does.

The operators' statements are in ``sql_ops``, the worker's bookkeeping in ``sql_worker``, and
locks, groups and chains in ``sql_workflows``. Times come from ``now()`` (the database clock).
Every write to a claimed row is gated on its ``lease_token`` so that a worker that lost its
lease (crashed, paused, partitioned) can never finish, fail or renew a job someone else now owns.
Parameters are named (``%(name)s``); arrays are passed as Python lists.
"""

from collections.abc import Mapping
from typing import Any

#: Seconds ahead of which a ready job is written ``scheduled`` (out of the claim index); the
#: maintenance pass promotes it once it is due within this (``sql_worker.JOB_PROMOTE``).
SCHEDULE_AHEAD = 60
#: SQL: is a job due at this time (an expression) scheduled?
_IS_SCHEDULED = f" > now() + interval '{SCHEDULE_AHEAD} seconds'"

# --- enqueue ---------------------------------------------------------------------------------

#: One row. ON CONFLICT covers only the partial unique dedup index; RETURNING nothing means a
#: live duplicate exists. pg_notify is transactional: it is delivered only if the caller commits.
#: ``waiters_only`` (an enqueue that is its own transaction): NOTIFY only when a worker waits on
#: the queue (a ``pg_queue_waiter`` mark; the ``pg_queue_wake`` function, migration 0013), and
#: take the marks a flooded worker made takeable, so that it gets one wake-up per idle spell
#: instead of one per job (a NOTIFY serialises commits on a database-wide lock). Inside a
#: longer transaction the NOTIFY is always sent (pg_queue/worker/coordinator.py, "wake-up
#: marks").
JOB_INSERT = (
    """
WITH ins AS (
    INSERT INTO pg_queue_message (
        task_id, queue_name, task_name, payload, priority, enqueued_at, available_at,
        max_attempts, tenant_key, resource_key, dedup_key, scheduled, parked
    ) VALUES (
        %(task_id)s, %(queue)s, %(task_name)s, %(payload)s::jsonb, %(priority)s, now(),
        COALESCE(%(eta)s::timestamptz, now() + make_interval(secs => %(delay)s)),
        %(max_attempts)s, %(tenant_key)s, %(resource_key)s, %(dedup_key)s,
        COALESCE(%(eta)s::timestamptz, now() + make_interval(secs => %(delay)s))"""
    + _IS_SCHEDULED
    + """,
        %(resource_key)s::text IS NOT NULL AND EXISTS (
            SELECT 1 FROM pg_queue_message AS o
            WHERE o.resource_key = %(resource_key)s AND NOT o.parked
              AND (o.state = 'claimed' OR o.available_at
                   <= COALESCE(%(eta)s::timestamptz, now() + make_interval(secs => %(delay)s)))
        )
    )
    ON CONFLICT (dedup_key) WHERE dedup_key IS NOT NULL DO NOTHING
    RETURNING task_id
)
SELECT task_id, CASE WHEN NOT %(notify)s THEN NULL
                     WHEN NOT %(waiters_only)s THEN pg_notify(%(channel)s, %(wake)s)::text
                     ELSE pg_queue_wake(%(queue)s, %(channel)s, %(wake)s)::text END
FROM ins
"""
)

JOB_BY_DEDUP_KEY = """
SELECT task_id, task_name, queue_name FROM pg_queue_message WHERE dedup_key = %(dedup_key)s
"""

#: Bulk path for immediate keyless jobs; the omitted columns take their database defaults
#: (now(), ...). Jobs with a resource key go through ``JOB_INSERT_MANY``, which parks them.
JOB_COPY = """
COPY pg_queue_message (
    task_id, queue_name, task_name, payload, priority, max_attempts, tenant_key, resource_key
) FROM STDIN
"""

#: The rows of a bulk INSERT, one array per column, as ``bulk_params`` makes them.
_BULK_ROWS = """unnest(
    %(task_ids)s::uuid[], %(queues)s::text[], %(task_names)s::text[], %(payloads)s::text[],
    %(priorities)s::smallint[], %(delays)s::float8[], %(etas)s::timestamptz[],
    %(max_attempts)s::int[], %(tenant_keys)s::text[], %(resource_keys)s::text[],
    %(group_ids)s::uuid[], %(group_indexes)s::int[]
) WITH ORDINALITY AS t(task_id, queue_name, task_name, payload, priority, delay, eta,
                       max_attempts, tenant_key, resource_key, group_id, group_index, ord)"""

#: Bulk path for delayed and grouped jobs without resource keys: one statement per chunk.
JOB_INSERT_MANY = (
    """
INSERT INTO pg_queue_message (
    task_id, queue_name, task_name, payload, priority, enqueued_at, available_at,
    max_attempts, tenant_key, resource_key, group_id, group_index, scheduled
)
SELECT t.task_id, t.queue_name, t.task_name, t.payload::jsonb, t.priority, now(), t.due,
       t.max_attempts, t.tenant_key, t.resource_key, t.group_id, t.group_index,
       t.due"""
    + _IS_SCHEDULED
    + """
FROM (SELECT *, COALESCE(eta, now() + make_interval(secs => delay)) AS due FROM """
    + _BULK_ROWS
    + ") AS t"
)

#: ``JOB_INSERT_MANY`` for a chunk with resource keys, rows in the order given. A keyed job is
#: parked (see ``_KEY_DONE``) behind a live job of its key that is claimed or due no later than
#: it, in the table or earlier in this chunk.
JOB_INSERT_MANY_KEYED = (
    """
INSERT INTO pg_queue_message (
    task_id, queue_name, task_name, payload, priority, enqueued_at, available_at,
    max_attempts, tenant_key, resource_key, group_id, group_index, scheduled, parked
)
SELECT k.task_id, k.queue_name, k.task_name, k.payload::jsonb, k.priority, now(), k.due,
       k.max_attempts, k.tenant_key, k.resource_key, k.group_id, k.group_index,
       k.due"""
    + _IS_SCHEDULED
    + """,
       k.resource_key IS NOT NULL AND (k.nth > 1 OR EXISTS (
           SELECT 1 FROM pg_queue_message AS o
           WHERE o.resource_key = k.resource_key AND NOT o.parked
             AND (o.state = 'claimed' OR o.available_at <= k.due)
       ))
FROM (
    SELECT d.*, row_number() OVER (PARTITION BY d.resource_key ORDER BY d.due, d.ord) AS nth
    FROM (
        SELECT t.*, COALESCE(t.eta, now() + make_interval(secs => t.delay)) AS due FROM """
    + _BULK_ROWS
    + """
    ) AS d
) AS k
ORDER BY k.ord
"""
)


def insert_many(params: Mapping[str, Any]) -> str:
    """The bulk INSERT for these ``bulk_params``: the keyed one only when a row has a key."""
    return JOB_INSERT_MANY_KEYED if any(params["resource_keys"]) else JOB_INSERT_MANY


#: Which of the task ids a caller gave are taken, and by what (enqueue refuses to reuse them).
TASK_IDS_TAKEN = """
SELECT task_id, 'a stored result (' || status || ')' FROM pg_task_result
WHERE task_id = ANY(%(ids)s::uuid[])
UNION ALL
SELECT task_id, 'a live job (' || state || ')' FROM pg_queue_message
WHERE task_id = ANY(%(ids)s::uuid[])
"""

NOTIFY = "SELECT pg_notify(%(channel)s, %(queue)s)"

# --- claim: see sql_claim ----------------------------------------------------------------------

# --- finish ----------------------------------------------------------------------------------

#: The ``unlocked`` and ``unparked`` steps of every statement that ends a claim (ack, retry,
#: bury, cancel, release, re-arm) from a CTE named ``done``, in the same transaction: the
#: job's resource lock goes, and the next due job of its key is unparked.
#:
#: Parked rows (``parked``, always ``ready``) are a key's later jobs: out of the claim index,
#: so a key with a long backlog costs each claim one row (its unparked head), not its whole
#: backlog. The maintenance pass (``KEY_UNPARK_SWEEP``) unparks the head of any key whose
#: unparked job went another way (cancelled, purged, a parked row committed after its head's
#: finish looked).
_KEY_DONE = """
    DELETE FROM pg_resource_lock AS l USING done AS d
    WHERE d.resource_key IS NOT NULL AND l.resource_key = d.resource_key
      AND l.task_id = d.task_id
), unparked AS (
    UPDATE pg_queue_message AS p SET parked = false
    FROM (SELECT DISTINCT resource_key FROM done WHERE resource_key IS NOT NULL) AS k
    CROSS JOIN LATERAL (
        SELECT n.msg_id FROM pg_queue_message AS n
        WHERE n.resource_key = k.resource_key AND n.parked AND n.available_at <= now()
        ORDER BY n.priority DESC, n.available_at, n.msg_id
        LIMIT 1
    ) AS next_job
    WHERE p.msg_id = next_job.msg_id AND p.parked
"""

#: Ack a batch of successes: delete the rows we still own and store outcomes for those whose
#: task keeps results, all in one statement (so one transaction). First write wins on results.
#: Returns the msg_ids actually acked; a missing id means the lease was lost (no-op for us).
#: The batch travels as one JSON document ([{i: msg_id, t: token, s: started epoch, k: keep?,
#: r: result}, ...]): one parameter to send instead of five arrays dumped element by element.
_ACK_DONE = """
WITH a AS (
    SELECT * FROM jsonb_to_recordset(%(batch)s::jsonb)
        AS a(i bigint, t uuid, s double precision, k boolean, r jsonb)
), done AS (
    DELETE FROM pg_queue_message AS m
    USING a
    WHERE m.msg_id = a.i AND m.lease_token = a.t AND m.state = 'claimed'
    RETURNING m.msg_id, m.task_id, m.task_name, m.queue_name, m.attempts, m.enqueued_at,
              m.resource_key, m.group_id, m.group_index, a.k, a.r, a.s
"""

_ACK_STORED = """
    INSERT INTO pg_task_result (
        task_id, status, result, error, traceback, task_name, queue_name, attempts,
        enqueued_at, started_at, finished_at, expires_at, group_id, group_index
    )
    SELECT d.task_id, 'succeeded', d.r, '', '', d.task_name, d.queue_name,
           d.attempts, d.enqueued_at, to_timestamp(d.s), now(),
           now() + make_interval(secs => %(ttl)s), d.group_id, d.group_index
    FROM done AS d
    WHERE d.k
    ON CONFLICT (task_id) DO NOTHING
    RETURNING task_id, attempts, result
), woken AS (
    -- One NOTIFY per batch (delivered at commit) wakes callers waiting on these results. A
    -- small batch (request-reply traffic) carries the results themselves, as a JSON array of
    -- [task_id, attempts, result], so a waiting caller reads them without a query; otherwise
    -- the ids, comma-separated; over 200 just '*' (NOTIFY payloads must stay under 8000 B).
    SELECT CASE WHEN NOT %(notify)s OR count(*) = 0 THEN NULL
                WHEN count(*) > 200 THEN pg_notify(%(channel)s, '*')
                WHEN count(*) <= 8 THEN pg_notify(%(channel)s, (
                    SELECT CASE WHEN coalesce(sum(octet_length(result::text)), 0) <= 4000
                                THEN jsonb_agg(jsonb_build_array(task_id, attempts, result))::text
                                ELSE string_agg(task_id::text, ',') END
                    FROM stored))
                ELSE pg_notify(%(channel)s, string_agg(task_id::text, ',')) END AS n
    FROM stored
)
SELECT msg_id FROM done, woken
"""

JOB_ACK = _ACK_DONE + "), unlocked AS (" + _KEY_DONE + "), stored AS (" + _ACK_STORED

#: ``JOB_ACK`` for a batch in which no job holds a resource key: no lock or unpark step.
JOB_ACK_KEYLESS = _ACK_DONE + "), stored AS (" + _ACK_STORED

#: Put failed-but-retryable jobs back, due after their backoff. Gated on the lease.
JOB_RETRY = (
    """
WITH done AS (
UPDATE pg_queue_message AS m
SET state = 'ready',
    available_at = now() + make_interval(secs => a.delay),
    scheduled = a.delay > """
    + str(SCHEDULE_AHEAD)
    + """,
    lease_token = NULL,
    vt = NULL,
    worker_id = '',
    last_error = a.error,
    max_attempts = GREATEST(m.max_attempts, a.min_max)
FROM unnest(%(msg_ids)s::bigint[], %(tokens)s::uuid[], %(delays)s::float8[], %(errors)s::text[],
            %(min_max)s::int[])
     AS a(msg_id, lease_token, delay, error, min_max)
WHERE m.msg_id = a.msg_id AND m.lease_token = a.lease_token AND m.state = 'claimed'
RETURNING m.msg_id, m.task_id, m.resource_key
), unlocked AS ("""
    + _KEY_DONE
    + """)
SELECT msg_id FROM done
"""
)

#: The ``woken`` step of every statement that writes failed or cancelled outcomes from a CTE
#: named ``outcomes`` (RETURNING task_id): one NOTIFY per statement on the result channel,
#: delivered at commit, with the ids comma-separated, or '*' (everyone re-checks) past 200
#: ids, since NOTIFY payloads must stay under 8000 bytes.
_WAKE_WAITERS = """
    SELECT CASE WHEN NOT %(notify)s OR count(*) = 0 THEN NULL
                WHEN count(*) > 200 THEN pg_notify(%(channel)s, '*')
                ELSE pg_notify(%(channel)s, string_agg(task_id::text, ',')) END AS n
    FROM outcomes
"""

#: Move jobs that will not run again to the dead-letter table and record a failed outcome, in
#: one statement. Gated on the lease; returns the msg_ids actually moved.
JOB_BURY = (
    """
WITH gone AS (
    DELETE FROM pg_queue_message AS m
    USING unnest(%(msg_ids)s::bigint[], %(tokens)s::uuid[]) AS a(msg_id, lease_token)
    WHERE m.msg_id = a.msg_id AND m.lease_token = a.lease_token AND m.state = 'claimed'
    RETURNING m.*
), done AS (
    SELECT * FROM gone
), unlocked AS ("""
    + _KEY_DONE
    + """), why AS (
    SELECT * FROM unnest(
        %(msg_ids)s::bigint[], %(reasons)s::text[], %(errors)s::text[], %(tracebacks)s::text[],
        %(started)s::timestamptz[]
    ) AS e(msg_id, reason, error, traceback, started_at)
), letters AS (
    INSERT INTO pg_queue_dead_letter (
        task_id, queue_name, task_name, payload, reason, last_error, traceback, attempts,
        max_attempts, priority, tenant_key, enqueued_at, failed_at, group_id, group_index,
        resource_key
    )
    SELECT g.task_id, g.queue_name, g.task_name, g.payload, e.reason, e.error, e.traceback,
           g.attempts, g.max_attempts, g.priority, g.tenant_key, g.enqueued_at, now(),
           g.group_id, g.group_index, g.resource_key
    FROM gone AS g JOIN why AS e ON e.msg_id = g.msg_id
), outcomes AS (
    INSERT INTO pg_task_result (
        task_id, status, result, error, traceback, task_name, queue_name, attempts,
        enqueued_at, started_at, finished_at, expires_at, group_id, group_index
    )
    SELECT g.task_id, 'failed', NULL, e.error, e.traceback, g.task_name, g.queue_name,
           g.attempts, g.enqueued_at, e.started_at, now(),
           now() + make_interval(secs => %(ttl)s), g.group_id, g.group_index
    FROM gone AS g JOIN why AS e ON e.msg_id = g.msg_id
    ON CONFLICT (task_id) DO NOTHING
    RETURNING task_id
), woken AS ("""
    + _WAKE_WAITERS
    + """)
SELECT msg_id FROM gone, woken
"""
)

#: Finish jobs an operator cancelled while they were claimed: delete the row (lease-gated) and
#: record a 'cancelled' outcome. No dead letter: nothing failed.
JOB_CANCEL = (
    """
WITH gone AS (
    DELETE FROM pg_queue_message AS m
    USING unnest(%(msg_ids)s::bigint[], %(tokens)s::uuid[]) AS a(msg_id, lease_token)
    WHERE m.msg_id = a.msg_id AND m.lease_token = a.lease_token AND m.state = 'claimed'
    RETURNING m.*
), done AS (
    SELECT * FROM gone
), unlocked AS ("""
    + _KEY_DONE
    + """), why AS (
    SELECT * FROM unnest(%(msg_ids)s::bigint[], %(errors)s::text[]) AS e(msg_id, error)
), outcomes AS (
    INSERT INTO pg_task_result (
        task_id, status, result, error, traceback, task_name, queue_name, attempts,
        enqueued_at, started_at, finished_at, expires_at, group_id, group_index
    )
    SELECT g.task_id, 'cancelled', NULL, e.error, '', g.task_name, g.queue_name, g.attempts,
           g.enqueued_at, NULL, now(), now() + make_interval(secs => %(ttl)s),
           g.group_id, g.group_index
    FROM gone AS g JOIN why AS e ON e.msg_id = g.msg_id
    ON CONFLICT (task_id) DO NOTHING
    RETURNING task_id
), woken AS ("""
    + _WAKE_WAITERS
    + """)
SELECT msg_id FROM gone, woken
"""
)

# --- leases ----------------------------------------------------------------------------------

#: Renew every in-flight lease of one worker in a single statement, skipping rows someone else
#: has locked right now (an operator's open transaction must not stall every other renewal).
#: One row per id asked: renewed (and cancel_requested), or not renewed but still ours (locked
#: elsewhere: try again next beat), or neither: taken from us (re-armed, maybe re-claimed).
LEASE_EXTEND = """
WITH held AS (
    SELECT * FROM unnest(%(msg_ids)s::bigint[], %(tokens)s::uuid[]) AS a(msg_id, lease_token)
), mine AS (
    SELECT m.msg_id FROM pg_queue_message AS m JOIN held AS a ON a.msg_id = m.msg_id
    WHERE m.lease_token = a.lease_token AND m.state = 'claimed'
    FOR UPDATE OF m SKIP LOCKED
), renewed AS (
    UPDATE pg_queue_message AS m
    SET vt = now() + make_interval(secs => %(lease)s)
    FROM mine
    WHERE m.msg_id = mine.msg_id
    RETURNING m.msg_id, m.cancel_requested
)
SELECT a.msg_id, r.msg_id IS NOT NULL, COALESCE(r.cancel_requested, false),
       EXISTS (
           SELECT 1 FROM pg_queue_message AS m
           WHERE m.msg_id = a.msg_id AND m.lease_token = a.lease_token AND m.state = 'claimed'
       )
FROM held AS a LEFT JOIN renewed AS r ON r.msg_id = a.msg_id
"""

#: Hand back jobs we claimed (graceful shutdown). Those that never started get their attempt
#: back (``refund``); those that ran past the grace keep it: attempts count executions started.
JOB_RELEASE = (
    """
WITH done AS (
UPDATE pg_queue_message AS m
SET state = 'ready', lease_token = NULL, vt = NULL, worker_id = '',
    attempts = CASE WHEN a.refund THEN GREATEST(m.attempts - 1, 0) ELSE m.attempts END
FROM unnest(%(msg_ids)s::bigint[], %(tokens)s::uuid[], %(refund)s::boolean[])
     AS a(msg_id, lease_token, refund)
WHERE m.msg_id = a.msg_id AND m.lease_token = a.lease_token AND m.state = 'claimed'
RETURNING m.msg_id, m.task_id, m.resource_key
), unlocked AS ("""
    + _KEY_DONE
    + """)
SELECT msg_id FROM done
"""
)

#: Any worker may run this: expired claims with attempts left go back to ready. The state and
#: vt are re-checked on the locked row, so a job acked a moment ago is never resurrected.
JOB_REARM = (
    """
WITH expired AS (
    SELECT msg_id FROM pg_queue_message
    WHERE state = 'claimed' AND vt < now() AND attempts < max_attempts
    ORDER BY vt
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), done AS (
UPDATE pg_queue_message AS m
SET state = 'ready', lease_token = NULL, vt = NULL, worker_id = '', available_at = now(),
    last_error = 'lease expired: worker ' || m.worker_id || ' stopped renewing'
FROM expired
WHERE m.msg_id = expired.msg_id AND m.state = 'claimed' AND m.vt < now()
RETURNING m.msg_id, m.task_id, m.queue_name, m.resource_key
), unlocked AS ("""
    + _KEY_DONE
    + """)
SELECT msg_id, task_id, queue_name FROM done
"""
)

#: Expired claims on their last attempt are dead-lettered (with a failed outcome) instead, and
#: callers waiting on them are woken like for any other outcome. Payloads come back as text:
#: the caller decodes each one inside its own guard (one undecodable payload must not fail the
#: sweep for every row, on every worker, forever).
JOB_REARM_EXHAUSTED = (
    """
WITH expired AS (
    SELECT msg_id FROM pg_queue_message
    WHERE state = 'claimed' AND vt < now() AND attempts >= max_attempts
    ORDER BY vt
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), gone AS (
    DELETE FROM pg_queue_message AS m
    USING expired
    WHERE m.msg_id = expired.msg_id AND m.state = 'claimed' AND m.vt < now()
    RETURNING m.*
), done AS (
    SELECT * FROM gone
), unlocked AS ("""
    + _KEY_DONE
    + """), letters AS (
    INSERT INTO pg_queue_dead_letter (
        task_id, queue_name, task_name, payload, reason, last_error, traceback, attempts,
        max_attempts, priority, tenant_key, enqueued_at, failed_at, group_id, group_index,
        resource_key
    )
    SELECT g.task_id, g.queue_name, g.task_name, g.payload, 'lease_expired',
           'lease expired on the last attempt: worker ' || g.worker_id || ' stopped renewing',
           '', g.attempts, g.max_attempts, g.priority, g.tenant_key, g.enqueued_at, now(),
           g.group_id, g.group_index, g.resource_key
    FROM gone AS g
), outcomes AS (
    INSERT INTO pg_task_result (
        task_id, status, result, error, traceback, task_name, queue_name, attempts,
        enqueued_at, started_at, finished_at, expires_at, group_id, group_index
    )
    SELECT g.task_id, 'failed', NULL,
           'lease expired on the last attempt: worker ' || g.worker_id || ' stopped renewing',
           '', g.task_name, g.queue_name, g.attempts, g.enqueued_at, NULL, now(),
           now() + make_interval(secs => %(ttl)s), g.group_id, g.group_index
    FROM gone AS g
    ON CONFLICT (task_id) DO NOTHING
    RETURNING task_id
), woken AS ("""
    + _WAKE_WAITERS
    + """)
SELECT g.task_id, g.task_name, g.queue_name, g.payload::text,
       'lease expired on the last attempt: worker ' || g.worker_id || ' stopped renewing',
       g.group_id, g.group_index
FROM gone AS g, woken
"""
)
