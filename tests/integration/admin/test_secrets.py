"""Which payload keys are masked in the admin."""

from __future__ import annotations

import pytest
from django.conf import settings
from django.test import override_settings

from pg_queue.ops.masking import MASK, is_secret_key, mask_secrets


@pytest.mark.parametrize(
    "key",
    ["password", "PASSWORD", "db_password", "access_token", "X-Api-Key", "api-key", "Secret"],
)
def test_secret_keys_match_case_insensitively_as_whole_words(key):
    assert is_secret_key(key, ("password", "token", "api_key", "secret"))


@pytest.mark.parametrize("key", ["tokens_used", "passwords_checked", "secretary", "apikey", ""])
def test_other_keys_are_not_secrets(key):
    assert not is_secret_key(key, ("password", "token", "api_key", "secret"))


def test_masking_reaches_every_depth_and_leaves_the_input_alone():
    data = {"a": [{"b": ({"token": "t"},)}], "password": {"nested": "whole value"}, "n": 1}
    masked = mask_secrets(data, ("token", "password"))
    assert masked == {"a": [{"b": [{"token": MASK}]}], "password": MASK, "n": 1}
    assert data["password"] == {"nested": "whole value"}


def test_masking_follows_the_secret_keys_setting():
    with override_settings(PG_QUEUE={**settings.PG_QUEUE, "SECRET_KEYS": ["ssn"]}):
        assert mask_secrets({"SSN": "123", "password": "p"}) == {"SSN": MASK, "password": "p"}
