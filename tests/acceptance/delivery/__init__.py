"""Delivery-guarantee tests: crashes, lost connections, leases, retries, shutdown, supervisor."""
