"""``Listener``: no exception ends its thread silently; it reconnects and says whether it works.

Every test listens on a channel of its own on the real test database; failures are real too (a
backend terminated with ``pg_terminate_backend``, a connect function that raises).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from pg_queue.db import connection, notify
from pg_queue.db.notify import Listener

pytestmark = pytest.mark.django_db(transaction=True)

#: Longest any test waits for something that should take well under a second.
PATIENCE = 15.0


def wait_until(condition: Callable[[], bool], timeout: float = PATIENCE) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


class Recorder:
    """An ``on_payload`` that records payloads and raises the exception mapped to a payload."""

    def __init__(self, raises: dict[str, BaseException] | None = None) -> None:
        self.raises = raises or {}
        self.got: list[str] = []
        self._changed = threading.Condition()

    def __call__(self, payload: str) -> None:
        if payload in self.raises:
            raise self.raises[payload]
        with self._changed:
            self.got.append(payload)
            self._changed.notify_all()

    def wait_for(self, payload: str, timeout: float = PATIENCE) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: payload in self.got, timeout)


def send(channel: str, *payloads: str) -> None:
    with connection.worker_connection() as conn:
        for payload in payloads:
            conn.execute("SELECT pg_notify(%s, %s)", (channel, payload))


def terminate_listening_backend(channel: str) -> None:
    """Kill the server side of the listener's connection, as a failover or an admin would."""
    with connection.worker_connection() as conn:
        killed = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE query = %s AND pid <> pg_backend_pid()",
            (f"LISTEN {channel}",),
        ).fetchall()
    assert killed == [(True,)], killed


def delivered_again(listener: Listener, got: Recorder) -> bool:
    """Ping until one ping arrives: NOTIFYs sent while the connection is down are lost."""
    deadline = time.monotonic() + PATIENCE
    while time.monotonic() < deadline:
        ping = f"ping-{uuid.uuid4()}"
        send(listener.channel, ping)
        if got.wait_for(ping, timeout=0.2):
            return True
    return False


@pytest.fixture
def start_listener() -> Iterator[Callable[..., Listener]]:
    """``start_listener(on_payload, connect=...)``: a started listener, stopped and joined after."""
    started: list[Listener] = []

    def start(
        on_payload: Callable[[str], None],
        connect: Callable[[], psycopg.Connection[Any]] = connection.worker_connection,
    ) -> Listener:
        listener = Listener(f"test_listen_{uuid.uuid4().hex[:12]}", on_payload, connect)
        started.append(listener)
        assert listener.start(), "the self-probe failed on a plain PostgreSQL"
        return listener

    yield start
    for listener in started:
        listener.stop()
        assert not listener.alive, "stop() must end and join the listener thread"


@pytest.mark.parametrize(
    "raised",
    [RuntimeError("callback bug"), KeyError("unexpected payload"), SystemExit(3)],
    ids=["runtime-error", "key-error", "system-exit"],
)
def test_an_exception_from_the_callback_is_logged_and_listening_goes_on(
    start_listener, caplog, raised
):
    got = Recorder(raises={"boom": raised})
    listener = start_listener(got)
    caplog.set_level(logging.INFO, logger="pg_queue.db.notify")

    send(listener.channel, "boom", "after")

    assert got.wait_for("after"), "the listener stopped delivering after its callback raised"
    assert listener.alive
    assert listener.healthy
    assert listener.unexpected_errors == 1
    logged = [r for r in caplog.records if r.name == "pg_queue.db.notify" and r.exc_info]
    assert [r.exc_info[0] for r in logged] == [type(raised)]  # with its traceback
    assert "boom" not in caplog.text  # payloads may carry results: never logged


def test_a_terminated_connection_is_reopened_and_delivers_again(start_listener, monkeypatch):
    monkeypatch.setattr(notify, "RECONNECT_DELAY", 0.05)
    got = Recorder()
    listener = start_listener(got)

    terminate_listening_backend(listener.channel)

    assert delivered_again(listener, got)
    assert listener.healthy
    assert listener.unexpected_errors == 0  # a dropped connection is expected, not a bug


def test_an_unexpected_error_while_reconnecting_is_logged_retried_and_reported(
    start_listener, caplog, monkeypatch
):
    """A connect function that raises something other than a connection error (a bug, a
    settings lookup failing) must neither end the thread nor stop the retries."""
    monkeypatch.setattr(notify, "RECONNECT_DELAY", 0.05)
    monkeypatch.setattr(notify, "RECONNECT_DELAY_MAX", 0.2, raising=False)
    broken = threading.Event()

    def connect() -> psycopg.Connection[Any]:
        if broken.is_set():
            raise RuntimeError("connect function bug")
        return connection.worker_connection()

    got = Recorder()
    listener = start_listener(got, connect)
    caplog.set_level(logging.INFO, logger="pg_queue.db.notify")

    broken.set()
    terminate_listening_backend(listener.channel)
    assert wait_until(lambda: listener.unexpected_errors >= 2), "the thread gave up retrying"
    assert listener.alive
    assert not listener.healthy  # what the worker's health check can report meanwhile

    broken.clear()
    assert delivered_again(listener, got)
    assert listener.healthy
    logged = [r for r in caplog.records if r.name == "pg_queue.db.notify" and r.exc_info]
    assert logged
    assert {r.exc_info[0] for r in logged} == {RuntimeError}


def test_stop_joins_the_thread_even_while_it_waits_to_reconnect(start_listener, monkeypatch):
    monkeypatch.setattr(notify, "RECONNECT_DELAY", 60.0)  # stop() must not wait for it
    listener = start_listener(Recorder())
    terminate_listening_backend(listener.channel)
    assert wait_until(lambda: not listener.healthy)

    started = time.monotonic()
    listener.stop()

    assert not listener.alive
    assert time.monotonic() - started < 5.0
