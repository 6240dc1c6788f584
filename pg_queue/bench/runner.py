"""The benchmark workloads behind ``manage.py pg_queue_bench``.

Each workload starts its own worker processes (``run_pg_worker`` with production defaults unless
stated), measures from the database's point of view, and deletes its rows afterwards. Figures
are meant to be compared as ratios within one run on one machine, never asserted in tests.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from django.db import connection, transaction

from pg_queue.bench.tasks import BENCH_QUEUE
from pg_queue.db import sql_ops
from pg_queue.models import JobGroup, ResourceLock
from pg_queue.producer import call, enqueue, enqueue_many, job

NOOP, ECHO, STAMP = "pg_queue.bench.noop", "pg_queue.bench.echo", "pg_queue.bench.stamp"
#: Every resource key the bench takes starts with this (``cleanup`` drops their locks).
KEY_PREFIX = "pg_queue_bench:"
#: Longest any single workload may run before it is abandoned (every wait has a timeout).
WORKLOAD_TIMEOUT = 900.0

Progress = Callable[[str, float, float], None]  # (description, completed, total)


@dataclass
class Figures:
    """One workload's result line."""

    workload: str
    variant: str
    n: int
    jobs_per_s: float | None = None
    p50_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"workload": self.workload, "variant": self.variant, "n": self.n}
        for key in ("jobs_per_s", "p50_ms", "p95_ms", "p99_ms"):
            value = getattr(self, key)
            if value is not None:
                out[key] = round(value, 2)
        out.update(self.extra)
        return out


def _percentiles(values_ms: list[float]) -> tuple[float, float, float]:
    if not values_ms:
        return (float("nan"),) * 3
    ordered = sorted(values_ms)
    qs = statistics.quantiles(ordered, n=100, method="inclusive") if len(ordered) > 1 else None

    def pick(p: int) -> float:
        return ordered[0] if qs is None else qs[p - 1]

    return pick(50), pick(95), pick(99)


def _scalar(sql: str, params: Any = None) -> Any:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        row = cursor.fetchone()
    return None if row is None else row[0]


def cleanup() -> None:
    """Remove every row the benchmark created (its own queue, groups and keys only)."""
    with connection.cursor() as cursor:
        for statement in sql_ops.QUEUE_CLEAR:
            cursor.execute(statement, {"queue": BENCH_QUEUE})
    JobGroup.objects.filter(on_success__queue=BENCH_QUEUE).delete()
    ResourceLock.objects.filter(resource_key__startswith=KEY_PREFIX).delete()
    with connection.cursor() as cursor:
        for statement in sql_ops.BENCH_VACUUM:
            cursor.execute(statement)


class WorkerProcess:
    """A ``run_pg_worker`` subprocess on the bench queue; always stopped by ``stop()``."""

    def __init__(self, *args: str, notify: bool = True) -> None:
        cmd = [
            sys.executable,
            "-m",
            "django",
            "run_pg_worker",
            "--queues",
            BENCH_QUEUE,
            "--include",
            "pg_queue.bench.tasks",
            *([] if notify else ["--no-notify"]),
            *args,
        ]
        env = {**os.environ, "PG_QUEUE_LOG_LEVEL": "WARNING"}
        self.popen_at = time.time()  # start-up is measured from here, as the peers' harness does
        self.proc = subprocess.Popen(
            cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self.peak_rss_kb = 0
        self.stats: dict[str, float] = {}

    def sample_rss(self) -> None:
        try:
            with open(f"/proc/{self.proc.pid}/status") as fh:
                for line in fh:
                    if line.startswith("VmRSS:"):
                        self.peak_rss_kb = max(self.peak_rss_kb, int(line.split()[1]))
        except OSError:
            pass

    def wait_registered(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited early: {self.stderr_tail()}")
            found = _scalar(sql_ops.BENCH_WORKER_UP, [self.proc.pid])
            if found:
                time.sleep(0.5)  # let its listener finish the self-probe
                return
            time.sleep(0.05)
        raise RuntimeError("worker did not register within 30s")

    def done_stats(self, timeout: float) -> dict[str, float]:
        """Wait for exit and parse the worker's closing ``key=value`` line."""
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise RuntimeError(f"worker did not exit within {timeout}s") from None
        for line in out.splitlines():
            if line.startswith("pg_queue worker done:"):
                pairs = (p.split("=", 1) for p in line.split(":", 1)[1].split())
                return {k: float(v) for k, v in pairs}
        raise RuntimeError(f"worker exited {self.proc.returncode}: {err[-2000:]}")

    def stderr_tail(self) -> str:
        try:
            _, err = self.proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            return ""
        return (err or "")[-2000:]

    def wait_exit(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise RuntimeError(f"worker did not exit within {timeout}s") from None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if self.proc.stderr is not None:
            self.proc.stderr.close()


def _bulk(
    task_name: str,
    n: int,
    start: int = 0,
    delay: float | None = None,
    key: Callable[[int], str] | None = None,
    tenant: Callable[[int], str] | None = None,
) -> float:
    """Enqueue ``n`` jobs with the bulk path in 10k chunks (job ``i`` under resource key
    ``key(i)`` and tenant ``tenant(i)`` if given); returns seconds taken."""
    t0 = time.perf_counter()
    chunk = 10_000
    for lo in range(start, start + n, chunk):
        hi = min(start + n, lo + chunk)
        with transaction.atomic():
            enqueue_many(
                job(
                    task_name,
                    [i],
                    delay=delay,
                    resource_key=None if key is None else key(i),
                    tenant_key="" if tenant is None else tenant(i),
                )
                for i in range(lo, hi)
            )
    return time.perf_counter() - t0


def _deleted_rows() -> int:
    """Rows deleted from the message table so far (cumulative statistics; for progress)."""
    value = _scalar(sql_ops.BENCH_JOBS_DELETED)
    return int(value or 0)


def _drain(n: int, progress: Progress | None, label: str, *args: str) -> WorkerProcess:
    """Run a worker with ``args`` until it exits; the progress bar follows deleted rows."""
    base = _deleted_rows()
    worker = WorkerProcess(*args)
    deadline = time.monotonic() + WORKLOAD_TIMEOUT
    try:
        while worker.proc.poll() is None and time.monotonic() < deadline:
            worker.sample_rss()
            if progress is not None:
                progress(label, float(min(n, _deleted_rows() - base)), float(n))
            time.sleep(0.25)
        worker.stats = worker.done_stats(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        worker.stop()
    return worker


def workload_drain(n: int, store_results: bool, progress: Progress | None = None) -> Figures:
    """W1: drain ``n`` pre-enqueued no-op jobs with one worker command (default settings).

    On the peers' basis (``bench-peers``): the rate is jobs / the time from starting the worker
    process to its last ack, start-up included; beside it the steady rate, jobs / the worker's
    own busy time (first claim to last ack), and the start-up time (process start to first
    claim).
    """
    cleanup()
    _bulk(ECHO if store_results else NOOP, n)
    worker = _drain(n, progress, "drain", "--burst")
    cleanup()
    stats = worker.stats
    startup = max(0.0, stats["first_claim_at"] - worker.popen_at)
    return Figures(
        "drain",
        "results stored" if store_results else "results off",
        n,
        jobs_per_s=stats["succeeded"] / max(startup + stats["busy_s"], 1e-9),
        extra={
            "steady_jobs_per_s": round(stats["succeeded"] / max(stats["busy_s"], 1e-9)),
            "startup_s": round(startup, 3),
            "worker_rss_mb": round(worker.peak_rss_kb / 1024, 1),
            "mean_claim_batch": round(stats["claimed"] / max(stats["claim_queries"], 1), 1),
            "mean_ack_batch": round(stats["claimed"] / max(stats["finish_batches"], 1), 1),
        },
    )


def workload_enqueue(n: int, progress: Progress | None = None) -> list[Figures]:
    """W2: one durable call per job (autocommit), then the bulk path."""
    cleanup()
    t0 = time.perf_counter()
    for i in range(n):
        enqueue(NOOP, [i])
        if progress is not None and i % 100 == 0:
            progress("enqueue one by one", float(i), float(n))
    single = n / (time.perf_counter() - t0)
    cleanup()
    bulk_n = n * 20  # 100,000 with the default n
    seconds = _bulk(NOOP, bulk_n)
    cleanup()
    return [
        Figures("enqueue", "one call per job", n, jobs_per_s=single),
        Figures("enqueue", "bulk (COPY)", bulk_n, jobs_per_s=bulk_n / seconds),
    ]


def _task_starts(task_ids: list[str]) -> list[tuple[str, float, float]]:
    """(task id, its ``stamp`` result: the task's first line as epoch seconds, ms from the
    row's insert to the start the worker recorded) per job."""
    with connection.cursor() as cursor:
        cursor.execute(sql_ops.BENCH_STARTS, [task_ids])
        return [(str(r[0]), float(r[1]), float(r[2])) for r in cursor.fetchall()]


def workload_latency(
    n: int, notify: bool, gap: float = 0.02, progress: Progress | None = None
) -> Figures:
    """W3: enqueue-to-start latency, ``n`` jobs ``gap`` seconds apart, idle worker.

    On the peers' basis: from just before the ``enqueue()`` call to the task's first line
    (``time.time()`` in both processes, one machine). Beside it, from the row's insert time
    (the database's ``now()`` in the enqueuing transaction) to the start the worker recorded.
    """
    cleanup()
    worker = WorkerProcess(notify=notify)
    try:
        worker.wait_registered()
        ids = []
        called: dict[str, float] = {}
        next_at = time.perf_counter()
        for i in range(n):
            t_call = time.time()
            ids.append(str(enqueue(STAMP, [i]).task_id))
            called[ids[-1]] = t_call
            if progress is not None and i % 20 == 0:
                progress("latency", float(i), float(n))
            next_at += gap
            time.sleep(max(0.0, next_at - time.perf_counter()))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and _scalar(sql_ops.BENCH_FINISHED, [ids]) < n:
            time.sleep(0.05)
        starts = _task_starts(ids)
    finally:
        worker.stop()
    cleanup()
    p50, p95, p99 = _percentiles([(entered - called[t]) * 1000 for t, entered, _ in starts])
    i50, i95, i99 = _percentiles([from_insert for _, _, from_insert in starts])
    return Figures(
        "latency",
        "wake-ups on" if notify else "wake-ups off (poll)",
        n,
        None,
        p50,
        p95,
        p99,
        extra={
            "from_insert_p50_ms": round(i50, 2),
            "from_insert_p95_ms": round(i95, 2),
            "from_insert_p99_ms": round(i99, 2),
        },
    )


def workload_rpc(n: int, notify: bool, progress: Progress | None = None) -> Figures:
    """W4: blocking call-and-wait round trips (``pg_queue.call``), sequential."""
    from django.conf import settings
    from django.test import override_settings

    cleanup()
    worker = WorkerProcess(notify=notify)
    try:
        worker.wait_registered()
        overridden = {**getattr(settings, "PG_QUEUE", {}), "NOTIFY": notify}
        samples = []
        with override_settings(PG_QUEUE=overridden):
            for i in range(n):
                t0 = time.perf_counter()
                outcome = call(ECHO, [i], timeout=30)
                samples.append((time.perf_counter() - t0) * 1000)
                if not outcome.ok or outcome.result != i:
                    raise RuntimeError(f"rpc call {i} failed: {outcome}")
                if progress is not None and i % 20 == 0:
                    progress("rpc", float(i), float(n))
    finally:
        worker.stop()
    cleanup()
    p50, p95, p99 = _percentiles(samples)
    variant = "wake-ups on" if notify else "wake-ups off (poll)"
    return Figures("rpc", variant, n, None, p50, p95, p99)


def workload_scale(n_deep: int, n_sample: int, progress: Progress | None = None) -> list[Figures]:
    """Drain rate of ``n_sample`` jobs from a queue ``n_deep`` deep (+10% future-dated rows),
    against the rate from a queue only ``n_sample`` deep; and the bulk enqueue of the deep one."""
    shallow = workload_drain(n_sample, store_results=False, progress=progress)
    cleanup()
    seconds = _bulk(NOOP, n_deep)
    _bulk(NOOP, n_deep // 10, start=n_deep, delay=3600.0)
    with connection.cursor() as cursor:
        cursor.execute(sql_ops.BENCH_ANALYZE)
    worker = _drain(n_sample, progress, "deep drain", "--max-tasks", str(n_sample))
    cleanup()
    deep_rate = worker.stats["succeeded"] / max(worker.stats["busy_s"], 1e-9)
    return [
        Figures("scale", f"bulk enqueue of {n_deep:,}", n_deep, jobs_per_s=n_deep / seconds),
        Figures(
            "scale",
            f"drain {n_sample:,} from {n_deep:,} deep (+{n_deep // 10:,} future)",
            n_sample,
            jobs_per_s=deep_rate,
            extra={"ratio_to_shallow": round(deep_rate / (shallow.jobs_per_s or 1), 3)},
        ),
        Figures(
            "scale",
            f"drain {n_sample:,} from {n_sample:,} deep",
            n_sample,
            jobs_per_s=shallow.jobs_per_s,
        ),
    ]
