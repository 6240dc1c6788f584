"""``manage.py pg_queue_bench``: the throughput and latency workloads, and their tasks."""
