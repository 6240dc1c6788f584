"""Masking secrets in payloads before an operator sees them (admin, status output)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

from pg_queue.core.conf import queue_settings

#: What a masked secret looks like in the admin.
MASK = "********"


# --- secrets ---------------------------------------------------------------------------------


def _normalise_key(key: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", key.lower()).strip("_")


def is_secret_key(key: str, secret_keys: Iterable[str]) -> bool:
    """Does a payload key name a secret? Case-insensitive; ``-`` and ``_`` are the same.

    A key matches an entry of ``SECRET_KEYS`` when it equals it or contains it as whole words:
    with ``token``, ``Token``, ``access_token`` and ``X-Token`` match, ``tokens_used`` does not.
    """
    name = f"_{_normalise_key(key)}_"
    return any(f"_{_normalise_key(s)}_" in name for s in secret_keys if _normalise_key(s))


def mask_secrets(value: Any, secret_keys: Iterable[str] | None = None) -> Any:
    """A copy of JSON data with the values of secret keys replaced by ``MASK``, at any depth.

    ``secret_keys`` defaults to ``PG_QUEUE['SECRET_KEYS']``. Positional arguments cannot be
    recognised as secrets: pass secrets as keyword arguments (or not at all).
    """
    keys = tuple(queue_settings().secret_keys if secret_keys is None else secret_keys)

    def walk(item: Any) -> Any:
        if isinstance(item, dict):
            return {
                k: MASK if isinstance(k, str) and is_secret_key(k, keys) else walk(v)
                for k, v in item.items()
            }
        if isinstance(item, list | tuple):
            return [walk(v) for v in item]
        return item

    return walk(value)


def pretty_json(value: Any) -> str:
    """Indented JSON of already-decoded data, secrets masked."""
    return json.dumps(mask_secrets(value), indent=2, sort_keys=True, ensure_ascii=False)
