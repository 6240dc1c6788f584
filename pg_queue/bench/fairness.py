"""The ``fairness`` workload of ``manage.py pg_queue_bench``: tenant round-robin. Same
conventions as ``runner``: ratios within one run, never asserted."""

from __future__ import annotations

import statistics

from pg_queue.bench.runner import ECHO, Figures, Progress, _bulk, _drain, cleanup
from pg_queue.bench.workflows import _analyze, _rate
from pg_queue.models import TaskResult
from pg_queue.producer import enqueue_many, job

#: Jobs of the tenant that comes late, after the flood (the issue's figure).
LATE_JOBS = 100
#: Tenants the many-tenants variant spreads its jobs over (one org per tenant).
MANY_TENANTS = 1_000
#: The share of the flood that may run before the late tenant's last job starts, and the
#: drain rate the fair claim must keep against jobs without tenants (the issue's figures).
LATE_SHARE_REQUIRED, RATIO_REQUIRED = 0.05, 0.80


def _drain_rate(n: int, progress: Progress | None, label: str) -> float:
    _analyze()
    worker = _drain(n, progress, label, "--burst")
    if worker.stats["succeeded"] != n:
        raise RuntimeError(f"{label}: the worker ran {worker.stats['succeeded']:.0f} of {n}")
    return _rate(worker)


def _untenanted(n: int, progress: Progress | None, rep: int) -> float:
    cleanup()
    _bulk(ECHO, n)
    rate = _drain_rate(n, progress, f"fairness: no tenant keys ({rep})")
    cleanup()
    return rate


def _flood_then_late(n: int, progress: Progress | None, rep: int) -> tuple[float, int]:
    """Tenant A queues ``n - LATE_JOBS`` jobs, then tenant B ``LATE_JOBS``; returns the drain
    rate and how many of A's jobs started before B's last one did."""
    cleanup()
    _bulk(ECHO, n - LATE_JOBS, tenant=lambda _i: "tenant-a")
    late = {
        h.task_id
        for h in enqueue_many(job(ECHO, [i], tenant_key="tenant-b") for i in range(LATE_JOBS))
    }
    rate = _drain_rate(n, progress, f"fairness: A's flood, then B ({rep})")
    starts = TaskResult.objects.order_by("started_at").values_list("task_id", flat=True)
    last_late = max(i for i, task_id in enumerate(starts.iterator()) if task_id in late)
    cleanup()
    return rate, last_late + 1 - LATE_JOBS


def _many_tenants(n: int, progress: Progress | None, rep: int) -> float:
    cleanup()
    _bulk(ECHO, n, tenant=lambda i: f"org-{i % MANY_TENANTS}")
    rate = _drain_rate(n, progress, f"fairness: {MANY_TENANTS:,} tenants ({rep})")
    cleanup()
    return rate


def workload_fairness(n: int, reps: int = 3, progress: Progress | None = None) -> list[Figures]:
    """Drain ``n`` jobs that store results (``--burst``, default settings) three ways,
    interleaved, ``reps`` of each, medians: without tenant keys; tenant A's flood of
    ``n - 100`` then tenant B's 100; spread over 1,000 tenants."""
    plain: list[float] = []
    late: list[tuple[float, int]] = []
    many: list[float] = []
    for rep in range(1, reps + 1):
        plain.append(_untenanted(n, progress, rep))
        late.append(_flood_then_late(n, progress, rep))
        many.append(_many_tenants(n, progress, rep))
    base = statistics.median(plain)
    late_rate = statistics.median(r for r, _ in late)
    many_rate = statistics.median(many)
    flood = n - LATE_JOBS
    ahead = max(a for _, a in late)
    return [
        Figures(
            "fairness",
            "no tenant keys",
            n,
            jobs_per_s=base,
            extra={"reps": [round(r) for r in plain]},
        ),
        Figures(
            "fairness",
            f"tenant A: {flood:,} jobs, then tenant B: {LATE_JOBS}",
            n,
            jobs_per_s=late_rate,
            extra={
                "reps": [round(r) for r, _ in late],
                "ratio_to_no_tenants": round(late_rate / max(base, 1e-9), 3),
                "a_started_before_b_last_worst": ahead,
                "a_share_before_b_last_worst": round(ahead / flood, 4),
                "a_share_allowed": LATE_SHARE_REQUIRED,
                "ratio_required": RATIO_REQUIRED,
            },
        ),
        Figures(
            "fairness",
            f"{MANY_TENANTS:,} tenants",
            n,
            jobs_per_s=many_rate,
            extra={
                "reps": [round(r) for r in many],
                "ratio_to_no_tenants": round(many_rate / max(base, 1e-9), 3),
            },
        ),
    ]
