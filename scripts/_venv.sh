# Sourced by scripts/demo and scripts/test: make .venv (Python 3.12+) and install the project.
# Running it again is fast: it reinstalls only when pyproject.toml changed.
#
# Two variables select another venv (scripts/test's CI matrix uses them):
#   PG_QUEUE_VENV    the venv directory (default .venv)
#   PG_QUEUE_DJANGO  a Django series such as 5.2: install its newest release instead of the
#                    newest Django pyproject.toml allows
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="${PG_QUEUE_VENV:-.venv}"
case "$VENV" in /*) ;; *) VENV="$ROOT/$VENV" ;; esac
DJANGO_SERIES="${PG_QUEUE_DJANGO:-}"

usable() {  # a pyenv shim may exist for a version that is not installed: run it to be sure
    "$1" -c 'import sys, venv; sys.exit(sys.version_info < (3, 12))' >/dev/null 2>&1
}

find_python() {
    for candidate in python3.12 python3.13 python3.14 python3; do
        if command -v "$candidate" >/dev/null 2>&1 && usable "$candidate"; then
            command -v "$candidate"; return 0
        fi
    done
    if command -v pyenv >/dev/null 2>&1; then
        for v in 3.12.1 3.12 3.13.0 3.13; do
            p="$(PYENV_VERSION=$v pyenv which python3 2>/dev/null || true)"
            if [ -n "$p" ] && usable "$p"; then echo "$p"; return 0; fi
        done
    fi
    return 1
}

if [ ! -x "$VENV/bin/python" ]; then
    PY="$(find_python)" || { echo "error: Python 3.12+ not found (PATH or pyenv)" >&2; exit 1; }
    echo "creating $VENV with $PY" >&2
    "$PY" -m venv "$VENV"
    echo '*' >"$VENV/.gitignore"  # as Python 3.13's venv does: git never sees it, whatever its name
fi
STAMP="$VENV/.stamp-$({ cat pyproject.toml; echo "django=$DJANGO_SERIES"; } | sha256sum | cut -c1-16)"
if [ ! -f "$STAMP" ]; then
    echo "installing dependencies into $VENV${DJANGO_SERIES:+ (Django $DJANGO_SERIES)} (once per pyproject.toml change)" >&2
    LOG="$VENV/install.log"
    PIN=()
    if [ -n "$DJANGO_SERIES" ]; then PIN=("Django~=$DJANGO_SERIES.0"); fi
    if ! { "$VENV/bin/python" -m pip install --upgrade pip && "$VENV/bin/python" -m pip install -e ".[dev]" "${PIN[@]}"; } >"$LOG" 2>&1; then
        tail -n 40 "$LOG" >&2
        echo "error: dependency install failed (full log: $LOG)" >&2
        exit 1
    fi
    rm -f "$VENV"/.stamp-*
    touch "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
export PYTHONUNBUFFERED=1
