"""``manage.py pg_queue_locks [--json] [--release KEY --force [--by NAME]]``: resource locks.

Without ``--release``: every held key, oldest first, with its holder (kind and id), the job
holding it (a ``worker`` lock), its age, and when it expires (a job's lock lives as long as
its job; another holder's expires after its ttl unless renewed; an ``expired`` one is free to
take and the next maintenance sweep deletes it). Names from the database are printed as they
are (rich ``Text``, never markup).

``--release KEY --force`` deletes the lock whoever holds it (``force_release``, logged at
WARNING on ``pg_queue.locks`` with the holder thrown out) and prints who held it; exit 1 when
nobody did. Without ``--force`` it refuses (exit 2) and says why: the holder may still be
running, and the next holder of the key would then run alongside it.
"""

from __future__ import annotations

import getpass
import json
from typing import Any, NoReturn

from django.core.management.base import BaseCommand, CommandError, CommandParser

try:  # the optional pg-queue[cli] extra: handle() names it when rich is missing
    import rich  # noqa: F401  (only to learn whether the extra is installed)
except ImportError as exc:
    _RICH_MISSING: ImportError | None = exc
else:
    _RICH_MISSING = None

from pg_queue.management.commands._cli import lock_table, render_text, require_rich
from pg_queue.ops.overview import format_age
from pg_queue.ops.workflow_overview import format_expiry
from pg_queue.workflows.locks import KEY_MAX, LockInfo, force_release, locks

#: Exit status of a release refused for want of ``--force`` (argparse's status for misuse).
REFUSED = 2


def login_name() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name in a bare container
        return "unknown user"


def seconds_left(lock: LockInfo) -> float | None:
    """Seconds until a lock expires by the database clock (negative: expired); None for a job's
    lock. ``age_seconds`` is ``now() - acquired_at``, so no second clock is involved."""
    if lock.expires_at is None:
        return None
    return (lock.expires_at - lock.acquired_at).total_seconds() - lock.age_seconds


def holder_text(lock: LockInfo) -> str:
    """``worker w-1 (task <id>)`` / ``cli host-1-42-ab12``: who holds, in words."""
    text = f"{lock.holder_kind} {lock.holder_id}"
    return text if lock.task_id is None else f"{text} (task {lock.task_id})"


def lock_json(lock: LockInfo) -> dict[str, Any]:
    return {
        "resource_key": lock.resource_key,
        "holder_kind": lock.holder_kind,
        "holder_id": lock.holder_id,
        "task_id": None if lock.task_id is None else str(lock.task_id),
        "acquired_at": lock.acquired_at.isoformat() if lock.acquired_at else None,
        "expires_at": lock.expires_at.isoformat() if lock.expires_at else None,
        "age_seconds": lock.age_seconds,
        "expires_in_seconds": seconds_left(lock),
        "expired": lock.expired,
    }


class Command(BaseCommand):
    help = "List held resource locks, or force-release one (--release KEY --force)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
        parser.add_argument(
            "--release",
            metavar="KEY",
            default=None,
            help="delete the lock on KEY whoever holds it (needs --force)",
        )
        parser.add_argument(
            "--force",
            action="store_true",
            help="with --release: yes, the holder is gone (or may run alongside the next one)",
        )
        parser.add_argument(
            "--by",
            default=None,
            help="who releases, for the log (default: your login name); logged as cli:NAME",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        key: str | None = options["release"]
        if key is None:
            if options["force"]:
                raise CommandError("--force needs --release KEY")
            if not options["json"]:
                require_rich(_RICH_MISSING, "pg_queue_locks (use --json without it)")
            self._list(options["json"])
            return
        if not key or len(key) > KEY_MAX or "\x00" in key:
            raise CommandError(f"--release takes a resource key: 1 to {KEY_MAX} characters, no NUL")
        if not options["force"]:
            self._refuse(key)
        actor = f"cli:{(options['by'] or '').strip() or login_name()}"
        held = force_release(key, actor=actor)
        if options["json"]:
            self.stdout.write(
                json.dumps(
                    {
                        "resource_key": key,
                        "released": held is not None,
                        "by": actor,
                        "previous_holder": None
                        if held is None
                        else {
                            "holder_kind": held.holder_kind,
                            "holder_id": held.holder_id,
                            "task_id": None if held.task_id is None else str(held.task_id),
                            "acquired_at": held.acquired_at.isoformat(),
                        },
                    },
                    indent=2,
                )
            )
        elif held is not None:
            since = held.acquired_at.isoformat() if held.acquired_at else "-"
            self.stdout.write(
                f"released {key} (held by {holder_text(held)} since {since}); by {actor}"
            )
        if held is None:
            raise CommandError(f"nobody holds {key}: nothing was released")

    def _refuse(self, key: str) -> NoReturn:
        """Say why a release needs ``--force``, naming the holder when there is one; exit 2."""
        held = next((lock for lock in locks() if lock.resource_key == key), None)
        if held is None:
            holder = "nobody holds it now"
        else:
            expiry = format_expiry(seconds_left(held))
            holder = f"held by {holder_text(held)} for {format_age(held.age_seconds)}, " + (
                expiry if held.expired else f"expires {expiry}"
            )
        raise CommandError(
            f"not releasing {key} ({holder}) without --force: a force release lets the next "
            "holder of the key start while this one may still be running, so two holders would "
            "run together. Check that the holder is gone (its job finished, its process "
            "stopped), then run again with --force.",
            returncode=REFUSED,
        )

    def _list(self, as_json: bool) -> None:
        held = locks()
        if as_json:
            self.stdout.write(json.dumps([lock_json(lock) for lock in held], indent=2))
            return
        if not held:
            self.stdout.write("No resource lock is held.")
            return
        self.stdout.write(_render_table(held), ending="")


def _render_table(held: list[LockInfo]) -> str:
    table = lock_table(
        f"resource locks ({len(held)} held)",
        (
            (
                lock.resource_key,
                lock.holder_kind,
                lock.holder_id,
                lock.task_id,
                format_age(lock.age_seconds),
                format_expiry(seconds_left(lock)) + (" (free to take)" if lock.expired else ""),
                lock.expired,
            )
            for lock in held
        ),
    )
    return render_text([table])
