"""Finding and installing Debian packages the tests need (pgbouncer, chromium).

Tests that need a system binary install it themselves when they can (root with apt-get, as on
CI's machine) and otherwise skip with a loud reason: a green CI must not depend on what someone
installed by hand.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path


def find_executable(names: tuple[str, ...], folders: tuple[str, ...]) -> str | None:
    """The first of ``names`` on PATH or in ``folders`` that is an executable file."""
    for name in names:
        found = shutil.which(name)
        if found:
            return found
        for folder in folders:
            candidate = Path(folder) / name
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate)
    return None


def can_install() -> bool:
    return os.geteuid() == 0 and shutil.which("apt-get") is not None


def apt_get(*args: str, timeout: float) -> tuple[bool, str]:
    """Run ``apt-get *args`` non-interactively; (succeeded, tail of its output)."""
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    try:
        proc = subprocess.run(
            ["apt-get", *args],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return False, f"apt-get {' '.join(args)} timed out after {timeout:.0f}s"
    return proc.returncode == 0, proc.stdout[-2000:]
