"""Lease renewals: HOT updates or not, with and without an index on vt, at two fillfactors.

The figures in docs/performance.md ("Lease renewals and HOT updates"). Run it against a
scratch database whose queue may be emptied (it deletes every message, and changes then resets
the table's fillfactor):

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres \\
        .venv/bin/python scripts/hot_renewals.py
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

ROWS, CLAIMED, ROUNDS = 20_000, 300, 60
_COUNTS = (
    "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = 'pg_queue_message'"
)


def main() -> None:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "backend.settings")
    import django

    django.setup()
    for vt_index in (True, False):
        for fillfactor in (100, 90):
            updated, hot = renewals(vt_index, fillfactor)
            print(
                f"vt index={'yes' if vt_index else 'no '} fillfactor={fillfactor}: "
                f"n_tup_upd={updated} n_tup_hot_upd={hot} ({100 * hot / max(updated, 1):.0f}% HOT)"
            )


def counts(conn: Any) -> tuple[int, int]:
    conn.execute("SELECT pg_stat_force_next_flush()")
    time.sleep(1.5)  # the flush happens when this backend next goes idle
    row = conn.execute(_COUNTS).fetchone()
    return int(row[0]), int(row[1])


def renewals(vt_index: bool, fillfactor: int) -> tuple[int, int]:
    """Claim CLAIMED of ROWS fresh jobs, renew them ROUNDS times; (updates, HOT updates)."""
    from pg_queue.db import connection, queries
    from pg_queue.producer import enqueue_many, job

    with connection.worker_connection() as conn:
        conn.execute("DELETE FROM pg_queue_message")
        conn.execute("VACUUM pg_queue_message")
        conn.execute(f"ALTER TABLE pg_queue_message SET (fillfactor = {fillfactor})")
        if vt_index:  # what migration 0004 had
            conn.execute(
                "CREATE INDEX pg_queue_msg_vt_test ON pg_queue_message (vt) WHERE state = 'claimed'"
            )
        try:
            enqueue_many(job("workers.tasks.echo", [i]) for i in range(ROWS))
            msgs = queries.job_claim(conn, queue="default", limit=CLAIMED, lease=30, worker_id="w")
            held = {m.msg_id: m.lease_token for m in msgs}
            updated_before, hot_before = counts(conn)
            for i in range(ROUNDS):
                queries.lease_renew(conn, held, lease=30 + i)
            updated, hot = counts(conn)
            return updated - updated_before, hot - hot_before
        finally:
            conn.execute("DROP INDEX IF EXISTS pg_queue_msg_vt_test")
            conn.execute("DELETE FROM pg_queue_message")
            conn.execute("ALTER TABLE pg_queue_message RESET (fillfactor)")


if __name__ == "__main__":
    main()
