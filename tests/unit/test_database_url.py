"""Worker subprocesses find the test database through the URL conftest builds for them."""

from __future__ import annotations

import pytest

from backend.database import database_config
from tests.conftest import database_url


@pytest.mark.parametrize(
    "entry",
    [
        {"HOST": "127.0.0.1", "PORT": 5432, "USER": "postgres", "PASSWORD": ""},
        {"HOST": "db.internal", "PORT": "6432", "USER": "app", "PASSWORD": "p@ss:w/rd%"},
        {"HOST": "/work/main/.pgdata", "PORT": "", "USER": "postgres", "PASSWORD": ""},
        {"HOST": "/tmp/Some Dir", "PORT": "5433", "USER": "postgres", "PASSWORD": "x"},
    ],
)
def test_database_url_round_trips_through_database_config(entry):
    settings_dict = {"NAME": "test_postgres_123", "OPTIONS": {}, **entry}
    config = database_config(database_url(settings_dict))
    assert config["NAME"] == "test_postgres_123"
    assert config["HOST"] == entry["HOST"]
    assert str(config["PORT"] or "") == str(entry["PORT"])
    assert config["USER"] == entry["USER"]
    assert (config["PASSWORD"] or "") == entry["PASSWORD"]


def test_unix_socket_folder_is_percent_encoded_as_the_url_host():
    url = database_url({"NAME": "test_postgres", "HOST": "/path/to", "USER": "postgres"})
    assert url == "postgres://postgres@%2Fpath%2Fto/test_postgres"
