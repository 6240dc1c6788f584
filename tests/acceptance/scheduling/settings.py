"""The example settings plus what the scheduling tests set through the environment: the
declared schedules, the scheduler's lease and poll, the flag provider, the beat schedule."""

import json
import os

from backend.settings import *  # noqa: F403
from backend.settings import PG_QUEUE

PG_QUEUE = {
    **PG_QUEUE,
    "SCHEDULE": json.loads(os.environ.get("PGQ_TEST_SCHEDULE", "{}")),
    "SCHEDULER_LEASE_SECONDS": float(os.environ.get("PGQ_TEST_SCHEDULER_LEASE", "2")),
    "SCHEDULER_POLL": float(os.environ.get("PGQ_TEST_SCHEDULER_POLL", "0.5")),
    "FLAG_PROVIDER": os.environ.get("PGQ_TEST_FLAG_PROVIDER", ""),
}
CELERY_BEAT_SCHEDULE = json.loads(os.environ.get("PGQ_TEST_BEAT_SCHEDULE", "{}"))
CELERY_BEAT_MAX_LOOP_INTERVAL = 1
