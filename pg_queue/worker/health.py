"""``--health-port``: ``/healthz`` (200 while fresh, 503 otherwise) and ``/metrics``.

Liveness is judged from two timestamps the worker keeps: the last pass of the claim loop and the
last successful heartbeat. The heartbeat runs in its own thread, so a long task does not make a
healthy worker look dead; a wedged claim loop or a database the heartbeat cannot reach does.

``/metrics`` needs prometheus-client (the ``pg-queue[metrics]`` extra). Without it ``/healthz``
works the same and ``/metrics`` answers 501 with a text that names the extra.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from pg_queue import metrics

logger = logging.getLogger("pg_queue.health")

#: A health probe returns (healthy, details).
Probe = Callable[[], tuple[bool, dict[str, Any]]]


class HealthServer:
    """A tiny HTTP server in one thread; ``stop()`` shuts it down and joins the thread."""

    def __init__(
        self,
        port: int,
        probe: Probe,
        *,
        host: str = "127.0.0.1",
        registry: Any = None,
    ) -> None:
        """``registry``: the prometheus-client registry ``/metrics`` serves (default: the
        process's own)."""
        self.probe = probe
        self.registry = registry
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.startswith("/healthz"):
                    healthy, details = server.probe()
                    body = json.dumps({"healthy": healthy, **details}).encode()
                    self._reply(200 if healthy else 503, "application/json", body)
                elif self.path.startswith("/metrics"):
                    self._reply(*server.metrics())
                else:
                    self._reply(404, "text/plain", b"not found\n")

            def _reply(self, status: int, content_type: str, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                logger.debug("health %s", format % args)

        self._httpd = ThreadingHTTPServer((host, port), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.25}, name="pg-queue-health"
        )

    def metrics(self) -> tuple[int, str, bytes]:
        """The ``/metrics`` reply: (status, content type, body)."""
        prometheus = metrics.prometheus
        if prometheus is None:
            return 501, "text/plain; charset=utf-8", metrics.METRICS_UNAVAILABLE.encode()
        registry = self.registry if self.registry is not None else prometheus.REGISTRY
        return 200, prometheus.CONTENT_TYPE_LATEST, prometheus.generate_latest(registry)

    def start(self) -> HealthServer:
        self._thread.start()
        logger.info("health server listening port=%d", self.port)
        if metrics.prometheus is None:
            logger.warning(
                "prometheus-client is not installed: /metrics answers 501 (pip install '%s')",
                metrics.METRICS_EXTRA,
            )
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)
