"""The ``delayed`` workload of ``manage.py pg_queue_bench``: a drain beside a million jobs that
are not due. Same conventions as ``runner``: ratios within one run, never asserted."""

from __future__ import annotations

import statistics

from pg_queue.bench.runner import NOOP, Figures, Progress, _bulk, _drain, cleanup
from pg_queue.bench.workflows import _analyze, _rate

#: Jobs delayed by a day per due job (1,000,000 beside the default 20,000: the issue's
#: figure), and their delay.
DELAYED_PER_DUE, DELAY_SECONDS = 50, 86_400.0
#: The drain rate the due jobs must keep against the same drain without the delayed rows.
RATIO_REQUIRED = 0.80


def _drain_due(n: int, start: int, progress: Progress | None, label: str) -> float:
    _bulk(NOOP, n, start=start)
    _analyze()
    worker = _drain(n, progress, label, "--max-tasks", str(n))
    if worker.stats["succeeded"] != n:
        raise RuntimeError(f"{label}: the worker ran {worker.stats['succeeded']:.0f} of {n}")
    return _rate(worker)


def workload_delayed(n: int, reps: int = 3, progress: Progress | None = None) -> list[Figures]:
    """Drain ``n`` due no-ops (``--max-tasks n``), ``reps`` times without delayed rows, then
    ``reps`` times beside ``50 n`` jobs due in a day (queued once, before the first of those
    drains); medians."""
    delayed = DELAYED_PER_DUE * n
    cleanup()
    alone = [
        _drain_due(n, 0, progress, f"delayed: {n:,} due alone ({rep + 1})") for rep in range(reps)
    ]
    seconds = _bulk(NOOP, delayed, start=n, delay=DELAY_SECONDS)
    beside = [
        _drain_due(n, 0, progress, f"delayed: {n:,} due beside {delayed:,} ({rep + 1})")
        for rep in range(reps)
    ]
    cleanup()
    base, deep = statistics.median(alone), statistics.median(beside)
    return [
        Figures(
            "delayed",
            f"{n:,} due, no delayed rows",
            n,
            jobs_per_s=base,
            extra={"reps": [round(r) for r in alone]},
        ),
        Figures(
            "delayed",
            f"{n:,} due beside {delayed:,} delayed by a day",
            n,
            jobs_per_s=deep,
            extra={
                "reps": [round(r) for r in beside],
                "ratio_to_no_delayed": round(deep / max(base, 1e-9), 3),
                "ratio_required": RATIO_REQUIRED,
                "delayed_enqueue_jobs_per_s": round(delayed / max(seconds, 1e-9)),
            },
        ),
    ]
