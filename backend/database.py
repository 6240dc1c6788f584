"""Which PostgreSQL the example project talks to, decided once at settings import.

Order: ``DATABASE_URL`` if set; else (tests only) the local server on 127.0.0.1:5432 if it
answers; else an embedded PostgreSQL from the ``pgserver`` package, with its data under the
project's ignored ``.pgdata/`` folder. The choice is exported as ``DATABASE_URL`` so that worker
processes started from here reuse it instead of deciding again.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

LOCAL_URL = "postgres://postgres@127.0.0.1:5432/postgres"
_embedded_server: Any = None  # keeps pgserver's handle alive; it stops the server at exit


def _local_server_answers(host: str = "127.0.0.1", port: int = 5432) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _embedded_url(data_dir: Path) -> str:
    global _embedded_server
    import warnings

    with warnings.catch_warnings():  # platformdirs warns about XDG_RUNTIME_DIR; harmless here
        warnings.simplefilter("ignore")
        import pgserver  # imported only when needed: it is a large package

    data_dir.mkdir(parents=True, exist_ok=True)
    _forget_dead_handles(data_dir)
    _embedded_server = pgserver.get_server(str(data_dir), cleanup_mode="stop")
    return f"postgres://postgres@{quote(str(data_dir), safe='')}/postgres"


def _forget_dead_handles(data_dir: Path) -> None:
    """Drop pids of exited processes from pgserver's handle list.

    pgserver stops its server when the last process holding a handle exits, but a process that
    died without running its exit hooks (killed, ``os._exit``) stays in the list forever, and
    then the server is never stopped. Pruning it here makes "last handle" mean what it says.
    """
    handles = data_dir / ".handle_pids.json"
    try:
        pids = json.loads(handles.read_text())
    except (OSError, ValueError):
        return
    alive = [pid for pid in pids if isinstance(pid, int) and _process_exists(pid)]
    if alive != pids:
        handles.write_text(json.dumps(alive))


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def resolve_database_url(base_dir: Path) -> tuple[str, str]:
    """Return (url, one-line description of where it came from)."""
    url = os.environ.get("DATABASE_URL", "").strip()
    if url:
        return url, "DATABASE_URL"
    if "pytest" in sys.modules and _local_server_answers():
        url = LOCAL_URL
        source = "local PostgreSQL at 127.0.0.1:5432 (DATABASE_URL not set)"
    else:
        url = _embedded_url(base_dir / ".pgdata")
        source = "embedded PostgreSQL (pgserver) in .pgdata/ because DATABASE_URL is not set"
    os.environ["DATABASE_URL"] = url
    os.environ["PG_QUEUE_DATABASE_SOURCE"] = source
    return url, source


def database_config(url: str) -> dict[str, Any]:
    """Django ``DATABASES`` entry for ``url``; a percent-encoded host is a Unix socket folder."""
    import environ

    config: dict[str, Any] = environ.Env.db_url_config(url)
    if str(config.get("HOST", "")).startswith("%2F"):
        config["HOST"] = unquote(config["HOST"])
    return config
