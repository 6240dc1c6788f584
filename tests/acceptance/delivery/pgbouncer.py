"""A real PgBouncer in transaction pooling mode in front of the test database, for one test.

``pgbouncer_binary()`` finds the binary, installing the distribution package when it is missing
and we are root on an apt-based machine (CI runs the suite that way on a fresh machine), and
skips loudly otherwise. ``PgBouncer`` starts it on a free loopback port with a generated ini and
stops it again; it runs as an unprivileged user because PgBouncer refuses to run as root.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

import psycopg
import pytest

from tests.debian import apt_get, find_executable

#: Longest the package install may take (apt-get install, then update + install once more).
INSTALL_TIMEOUT = 300.0
#: Longest PgBouncer may take to accept a query after it was started.
START_TIMEOUT = 15.0
_SBIN_DIRS = ("/usr/sbin", "/usr/local/sbin", "/usr/bin", "/usr/local/bin")


def _which() -> str | None:
    return find_executable(("pgbouncer",), _SBIN_DIRS)


def pgbouncer_binary() -> str:
    """Path of the pgbouncer binary; installs it (root + apt-get) or skips with the reason."""
    found = _which()
    if found:
        return found
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip(
            "PGBOUNCER TEST SKIPPED: pgbouncer is not installed and cannot be installed here "
            "(needs root and apt-get); install the 'pgbouncer' package to run it"
        )
    deadline = time.monotonic() + INSTALL_TIMEOUT
    ok, log = apt_get("install", "-y", "-q", "pgbouncer", timeout=INSTALL_TIMEOUT)
    if not ok:  # a fresh machine may have empty package lists
        ok, log = apt_get("update", "-q", timeout=max(10.0, deadline - time.monotonic()))
        if ok:
            ok, log = apt_get(
                "install", "-y", "-q", "pgbouncer", timeout=max(10.0, deadline - time.monotonic())
            )
    found = _which()
    if not ok or not found:
        pytest.skip(f"PGBOUNCER TEST SKIPPED: 'apt-get install -y -q pgbouncer' failed:\n{log}")
    return found


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _unprivileged_user() -> str | None:
    """PgBouncer refuses to run as root: the user to switch to (None when not root)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    pytest.skip("PGBOUNCER TEST SKIPPED: running as root and no 'postgres'/'nobody' user exists")


class PgBouncer:
    """``with PgBouncer(dbname=..., host=..., port=..., user=...) as bouncer: bouncer.port``."""

    def __init__(self, *, dbname: str, host: str, port: int, user: str, password: str = "") -> None:
        self.binary = pgbouncer_binary()
        self.dbname = dbname
        self.server = (host, port, user, password)
        self.port = _free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="pg-queue-pgbouncer-"))
        self.dir.chmod(0o755)  # readable by the unprivileged user it runs as
        self.log_path = self.dir / "pgbouncer.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """A ``postgres://`` URL to the test database through PgBouncer."""
        user, password = quote(self.server[2], safe=""), quote(self.server[3], safe="")
        auth = user + (f":{password}" if password else "")
        return f"postgres://{auth}@127.0.0.1:{self.port}/{self.dbname}"

    def _write_config(self) -> Path:
        host, port, user, password = self.server
        conn = f"host={host} port={port} dbname={self.dbname} user={user}"
        if password:
            conn += f" password={password}"
        userlist = self.dir / "userlist.txt"
        userlist.write_text(f'"{user}" "{password}"\n')
        ini = self.dir / "pgbouncer.ini"
        ini.write_text(
            "\n".join(
                [
                    "[databases]",
                    f"{self.dbname} = {conn}",
                    "",
                    "[pgbouncer]",
                    "listen_addr = 127.0.0.1",
                    f"listen_port = {self.port}",
                    "unix_socket_dir =",
                    "auth_type = trust",
                    f"auth_file = {userlist}",
                    "pool_mode = transaction",
                    "max_client_conn = 500",
                    "default_pool_size = 20",
                    "ignore_startup_parameters = extra_float_digits",
                    f"admin_users = {user}",
                    f"stats_users = {user}",
                    "logfile =",
                    "pidfile =",
                    "",
                ]
            )
        )
        for path in (userlist, ini):
            path.chmod(0o644)
        return ini

    def start(self) -> PgBouncer:
        ini = self._write_config()
        cmd = [self.binary]
        user = _unprivileged_user()
        if user:
            cmd += ["-u", user]
        cmd.append(str(ini))
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + START_TIMEOUT
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                with psycopg.connect(self.url, connect_timeout=2, autocommit=True) as conn:
                    conn.execute("SELECT 1")
                return self
            except psycopg.OperationalError as exc:
                last_error = exc
                time.sleep(0.1)
        log = self.log()
        self.stop()
        pytest.fail(f"pgbouncer did not start (exit={self.proc.returncode}, {last_error}):\n{log}")

    def stats(self) -> dict[str, dict[str, int]]:
        """``SHOW STATS`` of the admin console: database -> counters (e.g. total_xact_count)."""
        url = self.url.rsplit("/", 1)[0] + "/pgbouncer"
        with psycopg.connect(
            url, autocommit=True, cursor_factory=psycopg.ClientCursor, connect_timeout=5
        ) as conn:
            cur = conn.execute("SHOW STATS")
            names = [d.name for d in cur.description or []]
            stats = {}
            for row in cur.fetchall():
                values = dict(zip(names, row, strict=True))
                stats[str(values.pop("database"))] = {
                    k: int(v) for k, v in values.items() if str(v).isdigit()
                }
            return stats

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> PgBouncer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
