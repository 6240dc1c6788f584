"""Fixtures for the admin and operator-command tests: staff users with chosen permissions."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest
from django.contrib.auth.models import Permission
from django.test import Client

_names = itertools.count(1)

StaffClient = Callable[..., Client]


@pytest.fixture
def staff_client(django_user_model) -> StaffClient:
    """``staff_client("view_job", ..., staff=True)``: a logged-in client whose user
    has exactly these pg_queue permissions."""

    def make(*codenames: str, staff: bool = True) -> Client:
        user = django_user_model.objects.create_user(
            username=f"operator{next(_names)}", password="pw", is_staff=staff
        )
        for codename in codenames:
            user.user_permissions.add(
                Permission.objects.get(content_type__app_label="pg_queue", codename=codename)
            )
        client = Client()
        client.force_login(user)
        client.user = user  # type: ignore[attr-defined]
        return client

    return make
