"""The claim: the statements that take due jobs for a worker (see ``sql`` for the conventions).

Two forms share the resource-lock step and the marking UPDATE:

- ``JOB_CLAIM`` takes the jobs without a tenant (``tenant_key = ''``) of one queue in claim
  order (priority, due time, msg_id). The worker uses it for a queue with no tenant's job.
- ``JOB_CLAIM_FAIR`` takes jobs round-robin across tenants (the jobs without one are the
  tenant ``''``): each tenant's first due jobs in claim order, the highest priority present
  only, then first jobs of every tenant before second ones. One tenant's flood of 50,000 jobs
  costs another tenant's job one turn, not the flood.

Both read ``pg_queue_msg_claim_idx`` (queue, tenant, priority, due time, msg_id) in order.
It holds ready rows neither parked (behind their resource key) nor scheduled (due more than
``sql.SCHEDULE_AHEAD`` from now): a claim never walks past jobs that are not due.
"""

#: What every claim returns per job (``ClaimedJob``'s fields, in order); extras follow.
_CLAIMED = """m.msg_id, m.task_id, m.task_name, m.queue_name, m.payload::text, m.attempts,
          m.max_attempts, m.lease_token, m.enqueued_at, m.available_at, now(),
          m.cancel_requested, m.group_id, m.group_index, m.resource_key"""

#: Every claim marks the rows it picked (a CTE named ``picked``) as ours.
_MARK = """UPDATE pg_queue_message AS m
SET state = 'claimed',
    lease_token = gen_random_uuid(),
    vt = now() + make_interval(secs => %(lease)s),
    attempts = m.attempts + 1,
    worker_id = %(worker_id)s
FROM picked AS p
WHERE m.msg_id = p.msg_id"""

#: Resource locks (both forms): a row whose ``resource_key`` is held is not a candidate at all,
#: so a held key never blocks the keyless and other-key rows behind it.
_KEY_FREE = """
      AND (m.resource_key IS NULL OR NOT EXISTS (
          SELECT 1 FROM pg_resource_lock AS l
          WHERE l.resource_key = m.resource_key
            AND (l.expires_at IS NULL OR l.expires_at > now())
      ))"""

#: Of the candidates sharing a free key only the first in claim order is taken, and its lock
#: row is inserted by the same statement; a lock another claim inserted first (the primary key
#: serializes them) makes that one row "not now", never an error and never an attempt. An
#: expired lock of a non-worker holder is taken over; a job's own lock (``expires_at`` NULL)
#: lives as long as the claim. Then the chosen rows are marked ours.
_LOCK_AND_MARK = (
    """
, locked AS (
    INSERT INTO pg_resource_lock AS l (
        resource_key, holder_id, holder_kind, task_id, acquired_at, expires_at, holder_meta
    )
    SELECT DISTINCT ON (p.resource_key) p.resource_key, %(worker_id)s, 'worker', p.task_id,
           now(), NULL, '{}'::jsonb
    FROM picked AS p
    WHERE p.resource_key IS NOT NULL
    ORDER BY p.resource_key, p.priority DESC, p.available_at, p.msg_id
    ON CONFLICT (resource_key) DO UPDATE
    SET holder_id = EXCLUDED.holder_id, holder_kind = EXCLUDED.holder_kind,
        task_id = EXCLUDED.task_id, acquired_at = now(), expires_at = NULL,
        holder_meta = EXCLUDED.holder_meta
    WHERE l.expires_at IS NOT NULL AND l.expires_at <= now()
    RETURNING l.task_id
)
"""
    + _MARK
    + """
  AND (p.resource_key IS NULL OR p.task_id IN (SELECT task_id FROM locked))
RETURNING """
    + _CLAIMED
)

#: ``JOB_CLAIM`` for a queue with no job that has a resource key (the worker knows, see
#: ``QUEUE_KINDS``): keyed rows are left alone, and there is no lock step to plan or run.
#: Measured (10 of 200 due rows, median of 30): planning + execution 0.18 + 0.21 ms with the
#: lock step, 0.11 + 0.19 ms without; a lone job's latency pays it whole.
JOB_CLAIM_KEYLESS = (
    """
WITH picked AS (
    SELECT m.msg_id
    FROM pg_queue_message AS m
    WHERE m.state = 'ready' AND NOT m.parked AND NOT m.scheduled AND m.queue_name = %(queue)s
      AND m.tenant_key = '' AND m.available_at <= now() AND m.resource_key IS NULL
    ORDER BY m.priority DESC, m.available_at, m.msg_id
    LIMIT %(limit)s
    FOR UPDATE OF m SKIP LOCKED
)
"""
    + _MARK
    + """
RETURNING """
    + _CLAIMED
    + """, m.priority
"""
)

#: Lock up to ``limit`` due rows of one queue's tenant "" in claim order, skipping rows other
#: claimers hold, then mark them ours in the same statement. The CTE-join form claims exactly
#: the rows the CTE locked (the ``WHERE id IN (SELECT ... LIMIT n)`` form may re-run the
#: subquery and over-claim). Extra column: the priority (the caller orders the batch).
JOB_CLAIM = (
    """
WITH picked AS (
    SELECT m.msg_id, m.task_id, m.resource_key, m.priority, m.available_at
    FROM pg_queue_message AS m
    WHERE m.state = 'ready' AND NOT m.parked AND NOT m.scheduled AND m.queue_name = %(queue)s
      AND m.tenant_key = '' AND m.available_at <= now()"""
    + _KEY_FREE
    + """
    ORDER BY m.priority DESC, m.available_at, m.msg_id
    LIMIT %(limit)s
    FOR UPDATE OF m SKIP LOCKED
)"""
    + _LOCK_AND_MARK
    + ", m.priority\n"
)

#: Round-robin across tenants. ``seen`` walks the claim index from tenant to tenant (one index
#: probe per tenant with a ready job, from ``%(start)s`` on), ``tenants`` keeps at most
#: ``limit`` of them (the caller passes the last one as the next ``start`` when the cap was
#: hit, so every tenant gets its turn), and each gives its first ``per_tenant`` due jobs
#: (``turn`` 1, 2, ...). The caller makes ``per_tenant`` ceil(limit / tenants listed last
#: time): a parameter, not a subquery, so that the planner's estimate stays the size of the
#: batch (an unknown LIMIT is costed as a tenth of the table, which once made the planner
#: JIT-compile every claim: 430 ms each). Only the highest priority among them is taken,
#: first turns first: a higher-priority job never waits behind a lower one that happens to be
#: another tenant's.
#: Rows read past the limit stay locked only until this statement commits.
#: Extra columns: the turn, the last tenant listed and how many were listed.
JOB_CLAIM_FAIR = (
    """
WITH RECURSIVE seen(tenant_key) AS (
    (SELECT m.tenant_key FROM pg_queue_message AS m
     WHERE m.state = 'ready' AND NOT m.parked AND NOT m.scheduled AND m.queue_name = %(queue)s
       AND m.tenant_key >= %(start)s
     ORDER BY m.tenant_key LIMIT 1)
    UNION ALL
    SELECT (SELECT m.tenant_key FROM pg_queue_message AS m
            WHERE m.state = 'ready' AND NOT m.parked AND NOT m.scheduled
              AND m.queue_name = %(queue)s AND m.tenant_key > s.tenant_key
            ORDER BY m.tenant_key LIMIT 1)
    FROM seen AS s WHERE s.tenant_key IS NOT NULL
), tenants AS (
    SELECT tenant_key FROM seen WHERE tenant_key IS NOT NULL LIMIT %(limit)s
), candidates AS (
    SELECT c.*, row_number() OVER (
        PARTITION BY c.tenant_key ORDER BY c.priority DESC, c.available_at, c.msg_id
    ) AS turn
    FROM tenants AS t CROSS JOIN LATERAL (
        SELECT m.msg_id, m.task_id, m.resource_key, m.priority, m.available_at, m.tenant_key
        FROM pg_queue_message AS m
        WHERE m.state = 'ready' AND NOT m.parked AND NOT m.scheduled AND m.queue_name = %(queue)s
          AND m.tenant_key = t.tenant_key AND m.available_at <= now()"""
    + _KEY_FREE
    + """
        ORDER BY m.priority DESC, m.available_at, m.msg_id
        LIMIT %(per_tenant)s
        FOR UPDATE OF m SKIP LOCKED
    ) AS c
), picked AS (
    SELECT c.* FROM candidates AS c
    WHERE c.priority = (SELECT max(priority) FROM candidates)
    ORDER BY c.turn, c.available_at, c.msg_id
    LIMIT %(limit)s
)"""
    + _LOCK_AND_MARK
    + """, p.turn, (SELECT max(tenant_key) FROM tenants), (SELECT count(*) FROM tenants)
"""
)

#: Per queue: does it hold a ready job of a tenant (one index probe: the worker claims it with
#: ``JOB_CLAIM_FAIR``), and a job with a resource key that is claimed or due unparked (the
#: worker claims it with a key-aware statement, else with ``JOB_CLAIM_KEYLESS``)? The second
#: walks ``pg_queue_msg_keyed_queue_idx`` from queue to queue (``keyed``: one probe per queue
#: that has keyed jobs, whatever their number); an EXISTS per queue would let the planner pick
#: a sequential scan that stops at the first match, which reads the whole table for a queue
#: with none.
QUEUE_KINDS = """
WITH RECURSIVE keyed(q) AS (
    (SELECT m.queue_name FROM pg_queue_message AS m
     WHERE m.resource_key IS NOT NULL AND NOT m.parked AND NOT m.scheduled
     ORDER BY m.queue_name LIMIT 1)
    UNION ALL
    SELECT (SELECT m.queue_name FROM pg_queue_message AS m
            WHERE m.resource_key IS NOT NULL AND NOT m.parked AND NOT m.scheduled
              AND m.queue_name > k.q
            ORDER BY m.queue_name LIMIT 1)
    FROM keyed AS k WHERE k.q IS NOT NULL
)
SELECT q,
       EXISTS (
           SELECT 1 FROM pg_queue_message AS m
           WHERE m.state = 'ready' AND NOT m.parked AND NOT m.scheduled
             AND m.queue_name = q AND m.tenant_key > ''
       ),
       q IN (SELECT k.q FROM keyed AS k WHERE k.q IS NOT NULL)
FROM unnest(%(queues)s::text[]) AS q
"""
