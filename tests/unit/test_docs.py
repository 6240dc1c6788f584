"""The docs say what the code does.

- The worker flags table in docs/getting-started.md lists exactly the options
  ``manage.py run_pg_worker --help`` lists (hidden ones are not in ``--help``), and it is the
  only worker-flags table: the README links to it instead of repeating it.
- Every repository path a doc names exists (``pg_queue/db/sql.py``,
  ``tests/acceptance/deployment``...), so a file that moves cannot leave a doc pointing at nothing.
- Every dotted ``pg_queue.`` name a doc gives resolves: a module or attribute, a system check id
  of ``pg_queue/checks.py``, or a task name registered by the app.
- Every relative link between the docs reaches an existing file and heading.
- The README and getting-started list the same extras.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from tests.harness import REPO_ROOT

README = REPO_ROOT / "README.md"
GETTING_STARTED = REPO_ROOT / "docs" / "getting-started.md"
DOCS = [README, *sorted((REPO_ROOT / "docs").glob("*.md"))]
#: The heading the worker flags table sits under, and the anchor the README links to.
FLAGS_HEADING = "Worker flags"
FLAGS_ANCHOR = "docs/getting-started.md#worker-flags"
#: A table naming this many run_pg_worker options is a copy of the flags table.
COPY_THRESHOLD = 3
HELP_TIMEOUT = 60.0

#: Top-level folders of the repository whose paths the docs name.
_REPO_DIRS = ("pg_queue", "backend", "workers", "tests", "scripts", "docker", "docs")
#: A repository path: not part of a URL path (``/admin/pg_queue/...``) or of a longer name.
_PATH = re.compile(rf"(?<![\w/.-])((?:{'|'.join(_REPO_DIRS)})/[\w./-]*\w/?)")
#: A dotted name under pg_queue, as docs write them in backticks or prose.
_DOTTED = re.compile(r"(?<![\w./-])(pg_queue(?:\.\w+)+)")
_CHECK_ID = re.compile(r"^pg_queue\.[EWI]\d{3}$")
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
_FENCE = re.compile(r"^\s*(```|~~~)")


def _prose_lines(path: Path) -> list[str]:
    """The lines of a Markdown file outside fenced code blocks."""
    lines, fenced = [], False
    for line in path.read_text().splitlines():
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(line)
    return lines


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def _tables(lines: list[str]) -> list[list[list[str]]]:
    """Markdown tables as rows of cells; the header is the first row, the separator dropped."""
    tables: list[list[list[str]]] = []
    current: list[list[str]] | None = None
    for line in lines:
        if not line.startswith("|"):
            current = None
            continue
        cells = _cells(line)
        if current is None:
            current = [cells]
            tables.append(current)
        elif not all(re.fullmatch(r":?-+:?", cell) for cell in cells):
            current.append(cells)
    return tables


def _options_in_cell(cell: str) -> list[str]:
    """Options a table cell names: the first word of each code span that starts with '-'."""
    return re.findall(r"`(--?[A-Za-z][\w-]*)", cell)


def _section(lines: list[str], heading: str) -> list[str]:
    """The lines under ``heading`` up to the next heading of any level."""
    start = next(
        (i for i, line in enumerate(lines) if re.fullmatch(rf"#+\s+{re.escape(heading)}", line)),
        None,
    )
    assert start is not None, f"no heading {heading!r} in {GETTING_STARTED.name}"
    end = next(
        (i for i in range(start + 1, len(lines)) if lines[i].startswith("#")),
        len(lines),
    )
    return lines[start + 1 : end]


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = heading.strip().lower().replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    seen: Counter[str] = Counter()
    anchors = set()
    for line in _prose_lines(path):
        match = re.match(r"#+\s+(.*)", line)
        if match:
            slug = _slug(match.group(1))
            anchors.add(slug if not seen[slug] else f"{slug}-{seen[slug]}")
            seen[slug] += 1
    return anchors


@pytest.fixture(scope="module")
def help_options() -> set[str]:
    """Every option string ``run_pg_worker --help`` prints, Django's own included."""
    env = {
        **os.environ,
        "COLUMNS": "200",  # one option per line, whatever the terminal
        "NO_COLOR": "1",  # Python 3.14's argparse colours help on a terminal
        "PYTHON_COLORS": "0",
    }
    proc = subprocess.run(
        [sys.executable, "manage.py", "run_pg_worker", "--help"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=HELP_TIMEOUT,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    options: set[str] = set()
    in_options = False
    for line in proc.stdout.splitlines():
        if re.fullmatch(r"(options|optional arguments):", line):
            in_options = True
        elif in_options and re.match(r"^ {2}-", line):
            invocation = re.split(r"\s{2,}", line.strip())[0]
            options.update(re.findall(r"(?:^|,\s)(--?[A-Za-z][\w-]*)", invocation))
    assert "--queues" in options, proc.stdout  # the parse found the options at all
    return options


def _flags_table() -> list[list[str]]:
    """The rows of the worker flags table, header included."""
    tables = _tables(_section(_prose_lines(GETTING_STARTED), FLAGS_HEADING))
    assert len(tables) == 1, f"expected one table under {FLAGS_HEADING!r}, found {len(tables)}"
    return tables[0]


def _django_options() -> set[str]:
    """Options every Django command has (the flags table's last row lists them together)."""
    from django.core.management.base import BaseCommand

    parser = BaseCommand().create_parser("manage.py", "any")
    return {s for action in parser._actions for s in action.option_strings}


def test_worker_flags_table_lists_exactly_the_options_of_help(help_options: set[str]) -> None:
    listed = [option for row in _flags_table()[1:] for option in _options_in_cell(row[0])]
    twice = sorted(o for o, n in Counter(listed).items() if n > 1)
    assert not twice, f"listed more than once in the worker flags table: {twice}"
    missing = sorted(help_options - set(listed))
    extra = sorted(set(listed) - help_options)
    assert not missing, f"run_pg_worker --help has options the table lacks: {missing}"
    assert not extra, f"the table lists options run_pg_worker --help does not: {extra}"


def test_worker_flags_table_gives_every_worker_option_its_default_and_meaning() -> None:
    header, *rows = _flags_table()
    assert header == ["flag", "default", "meaning"]
    django = _django_options()
    for flag, default, meaning in rows:
        assert meaning, f"no meaning for {flag}"
        if not set(_options_in_cell(flag)) <= django:
            assert default, f"no default for {flag} (write 'none' or 'off' when there is none)"


def test_readme_links_to_the_flags_table_instead_of_copying_it(help_options: set[str]) -> None:
    assert FLAGS_ANCHOR in README.read_text()
    assert FLAGS_ANCHOR.split("#")[1] in _anchors(GETTING_STARTED)
    flags_table = _flags_table()
    worker_options = help_options - _django_options()
    for doc in DOCS:
        for table in _tables(_prose_lines(doc)):
            if doc == GETTING_STARTED and table == flags_table:
                continue
            named = {o for row in table for o in _options_in_cell(row[0])} & worker_options
            assert len(named) < COPY_THRESHOLD, (
                f"{doc.relative_to(REPO_ROOT)} has another table of run_pg_worker options "
                f"{sorted(named)}: link to {FLAGS_ANCHOR} instead"
            )


def test_every_repository_path_in_the_docs_exists() -> None:
    missing = [
        f"{doc.relative_to(REPO_ROOT)}: {path}"
        for doc in DOCS
        for path in sorted(set(_PATH.findall(doc.read_text())))
        if not (REPO_ROOT / path).exists()
    ]
    assert not missing, "paths named in the docs that do not exist:\n" + "\n".join(missing)


def _registered_task_names() -> set[str]:
    """Task names the app itself registers (the benchmark's, for instance)."""
    import pg_queue
    from pg_queue.registry import native_tasks

    for module in pkgutil.walk_packages(pg_queue.__path__, "pg_queue."):
        if ".migrations" not in module.name:
            importlib.import_module(module.name)
    return set(native_tasks())


#: Names that exist only on a newer Django (the docs say so): name -> the Django it needs.
_NEEDS_DJANGO = {"pg_queue.tasks_backend.PgQueueBackend": (6, 0)}


def _resolves(name: str) -> bool:
    import django

    needs = _NEEDS_DJANGO.get(name)
    if needs is not None and tuple(django.VERSION[:2]) < needs:
        return _resolves(name.rsplit(".", 1)[0])  # its module, at least, must be there
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return False
        return True
    return False


def test_every_dotted_pg_queue_name_in_the_docs_resolves() -> None:
    checks_source = (REPO_ROOT / "pg_queue" / "checks.py").read_text()
    tasks = _registered_task_names()
    unresolved = []
    for doc in DOCS:
        for name in sorted(set(_DOTTED.findall(doc.read_text()))):
            if _CHECK_ID.match(name):
                ok = f'id="{name}"' in checks_source
            else:
                ok = name in tasks or _resolves(name)
            if not ok:
                unresolved.append(f"{doc.relative_to(REPO_ROOT)}: {name}")
    assert not unresolved, "names in the docs that do not exist:\n" + "\n".join(unresolved)


def test_every_relative_link_in_the_docs_reaches_a_file_and_heading() -> None:
    broken = []
    for doc in DOCS:
        for target in _LINK.findall("\n".join(_prose_lines(doc))):
            if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
                continue
            file_part, _, anchor = target.partition("#")
            linked = (doc.parent / file_part).resolve() if file_part else doc
            if not linked.exists():
                broken.append(f"{doc.relative_to(REPO_ROOT)}: {target} (no such file)")
            elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked):
                broken.append(f"{doc.relative_to(REPO_ROOT)}: {target} (no such heading)")
    assert not broken, "broken links:\n" + "\n".join(broken)


def _extras(doc: Path) -> list[str]:
    """The first column of the doc's table headed ``extra``."""
    for header, *rows in _tables(_prose_lines(doc)):
        if header[0] == "extra":
            return [row[0].strip("`") for row in rows]
    raise AssertionError(f"no extras table in {doc.relative_to(REPO_ROOT)}")


def test_readme_and_getting_started_list_the_same_extras() -> None:
    assert _extras(README) == _extras(GETTING_STARTED)
