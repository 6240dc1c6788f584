"""Next-run computation: a cron expression in a time zone, through croniter.

croniter is the optional ``pg-queue[schedule]`` extra; ``require_croniter()`` names it when it
is missing. Expressions have 5 fields (minute hour day month weekday) or 6, the last being
seconds (``"* * * * * */10"``: every ten seconds).

Daylight saving time, for a schedule in a zone that has it:

- a wall time skipped when clocks go forward (02:30 on the spring night in Europe/Berlin)
  fires once, at the first instant after the gap (03:00);
- a wall time that happens twice when clocks go back fires once, at its first occurrence, for
  a schedule whose hour field is fixed (``30 2 * * *``); a schedule over every hour
  (``0 * * * *``) fires in both hours, which are really two different hours.

Times in and out are timezone-aware; the scheduler passes the database's ``now()``.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

if TYPE_CHECKING:
    from croniter import croniter as Croniter

#: What to install for periodic tasks; named by every message about a missing croniter.
SCHEDULE_EXTRA = "pg-queue[schedule]"
#: Steps one computation may take past ambiguous (repeated) wall times before giving up.
_MAX_SKIPS = 10_000


class CronError(ValueError):
    """A cron expression or time zone that cannot be used (message names which and why)."""


def croniter_installed() -> bool:
    """Whether croniter can be imported; imports nothing."""
    try:
        return importlib.util.find_spec("croniter") is not None
    except (ImportError, ValueError):
        return False


def require_croniter() -> None:
    """Raise ``ImportError`` naming the extra when croniter is missing."""
    if not croniter_installed():
        raise ImportError(
            f"periodic tasks need croniter: pip install '{SCHEDULE_EXTRA}' (the schedule extra)"
        )


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise CronError(f"unknown time zone {name!r}") from exc


def validate(cron: str, timezone: str) -> None:
    """Raise ``CronError`` for an expression croniter refuses or an unknown zone."""
    require_croniter()
    from croniter import croniter

    zone(timezone)
    fields = cron.split()
    if len(fields) not in (5, 6) or not croniter.is_valid(cron):
        raise CronError(
            f"cron {cron!r} is not a valid expression of 5 fields (minute hour day month "
            "weekday) or 6 (the 6th: seconds)"
        )


def _iterator(cron: str, start: dt.datetime) -> Croniter:
    require_croniter()
    from croniter import croniter

    return croniter(cron, start)


def _repeated(candidate: dt.datetime, tz: ZoneInfo) -> bool:
    """Is ``candidate`` the second occurrence of a wall time clocks went back over?"""
    wall = candidate.astimezone(tz).replace(tzinfo=None)
    first = wall.replace(tzinfo=tz, fold=0)
    second = wall.replace(tzinfo=tz, fold=1)
    return first.utcoffset() != second.utcoffset() and candidate.timestamp() == second.timestamp()


def next_after(cron: str, timezone: str, after: dt.datetime) -> dt.datetime:
    """The first tick strictly after ``after`` (aware), as an aware UTC datetime."""
    if after.tzinfo is None:
        raise ValueError("next_after needs an aware datetime")
    tz = zone(timezone)
    hour_fixed = _hour_field(cron) != "*"
    it = _iterator(cron, after.astimezone(tz))
    for _ in range(_MAX_SKIPS):
        candidate: dt.datetime = it.get_next(dt.datetime)
        if hour_fixed and _repeated(candidate, tz):
            continue
        return candidate.astimezone(dt.UTC)
    raise CronError(f"cron {cron!r} found no tick after {after.isoformat()}")


def period(cron: str, timezone: str, at: dt.datetime) -> float:
    """Seconds between the two ticks after ``at``: the schedule's period around that time."""
    first = next_after(cron, timezone, at)
    return (next_after(cron, timezone, first) - first).total_seconds()


def _hour_field(cron: str) -> str:
    fields = cron.split()
    return fields[1] if len(fields) >= 2 else "*"
