"""The layout rules of the app (issue 11): queue SQL is spelled only in the database layer, and
no module grows past the size one can read and review in one sitting."""

from __future__ import annotations

import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "pg_queue"
#: Where statements may be spelled: the database layer, and migrations (Django's own).
SQL_HOMES = ("db", "migrations")
#: The bound on a module's length (lines).
MODULE_MAX_LINES = 500
#: A statement written inline: execute() / copy() given a string literal.
INLINE_SQL = re.compile(r"\.(execute|executemany|copy)\(\s*[rfb]?[\"']")


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_queue_sql_is_spelled_only_in_the_database_layer() -> None:
    inline = [
        f"{path.relative_to(PACKAGE)}:{number}: {line.strip()}"
        for path in modules()
        if path.relative_to(PACKAGE).parts[0] not in SQL_HOMES
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if INLINE_SQL.search(line)
    ]
    assert inline == [], "statements outside pg_queue/db:\n" + "\n".join(inline)


def test_no_module_is_longer_than_the_bound() -> None:
    long = {
        str(path.relative_to(PACKAGE)): n
        for path in modules()
        if path.relative_to(PACKAGE).parts[0] != "migrations"
        and (n := len(path.read_text().splitlines())) > MODULE_MAX_LINES
    }
    assert long == {}, f"modules over {MODULE_MAX_LINES} lines: {long}"
