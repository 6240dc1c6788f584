"""Smoke test of ``pg_queue_bench``: every workload runs end to end on tiny sizes.

No timing is asserted (the machine is shared); only that each workload produces its figures and
cleans up after itself. The A/B workloads (locks, group) run one repetition of each variant.
"""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from django.core.management import call_command

from pg_queue.bench import producers as producers_bench
from pg_queue.models import Job, JobGroup, QueueWaiter, ResourceLock, TaskResult, Worker


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("workload", "n", "variants"),
    [
        ("drain", 200, {"results off", "results stored"}),
        ("enqueue", 50, {"one call per job", "bulk (COPY)"}),
        ("latency", 20, {"wake-ups on", "wake-ups off (poll)"}),
        ("rpc", 20, {"wake-ups on", "wake-ups off (poll)"}),
        ("scale", 2000, None),
        (
            "locks",
            200,
            {
                "keyless drain, no key held",
                "keyless drain, 1 key held + 1,000 of its jobs ahead",
                "keyed drain over 8 keys (one job per key at a time)",
            },
        ),
        (
            "group",
            50,
            {
                "50 plain jobs: enqueue -> last finished",
                "group of 50: enqueue -> group ended",
                "group of 50: enqueue -> on_success started",
            },
        ),
        (
            "fairness",
            300,
            {"no tenant keys", "tenant A: 200 jobs, then tenant B: 100", "1,000 tenants"},
        ),
        ("delayed", 100, {"100 due, no delayed rows", "100 due beside 5,000 delayed by a day"}),
        (
            "producers",
            2,
            {
                f"2 producers, {where}, wake-ups {on}"
                for where in ("no worker", "one worker draining")
                for on in ("on", "off")
            },
        ),
    ],
)
def test_bench_workload_reports_figures_and_cleans_up(
    workload: str, n: int, variants: set[str] | None, worker_env: dict[str, str], monkeypatch: Any
) -> None:
    for key, value in worker_env.items():  # the bench's workers must use the test database
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(producers_bench, "RUN_SECONDS", 1.0)
    out = io.StringIO()
    call_command("pg_queue_bench", workload=workload, n=n, reps=1, json=True, stdout=out)
    lines = [json.loads(line) for line in out.getvalue().splitlines() if line.strip()]
    assert lines, out.getvalue()
    assert {line["workload"] for line in lines} == {workload}
    if variants is not None:
        assert {line["variant"] for line in lines} == variants
    for line in lines:
        assert line["n"] > 0
        figures = [line.get(k) for k in ("jobs_per_s", "p50_ms", "p95_ms", "p99_ms")]
        assert any(isinstance(f, int | float) and f > 0 for f in figures), line
    if workload == "drain":
        assert all(0 < line["worker_rss_mb"] < 1000 for line in lines)
    if workload == "scale":
        assert any("ratio_to_shallow" in line for line in lines)
    if workload == "locks":
        assert any("ratio_to_free" in line for line in lines)
    if workload == "group":
        assert any("ratio_to_plain" in line for line in lines)
    if workload == "fairness":
        late = next(line for line in lines if "a_started_before_b_last_worst" in line)
        # Without fairness all 200 of A would start first; B takes turns with A.
        assert late["a_started_before_b_last_worst"] <= 150, late
    if workload == "delayed":
        assert any("ratio_to_no_delayed" in line for line in lines)
    if workload == "producers":
        assert sum("ratio_on_to_off" in line for line in lines) == 2
    assert not Job.objects.filter(queue_name="pg_queue_bench").exists()
    assert not TaskResult.objects.filter(queue_name="pg_queue_bench").exists()
    assert not Worker.objects.exists()
    assert not QueueWaiter.objects.exists()
    assert not JobGroup.objects.exists()
    assert not ResourceLock.objects.exists()
