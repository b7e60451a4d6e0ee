"""sd_notify over a real AF_UNIX datagram socket, as systemd would receive it."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from procmond.lifecycle.systemd import Notifier


@pytest.fixture
def notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(2)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    yield sock
    sock.close()


def test_messages_reach_the_socket(notify_socket: socket.socket) -> None:
    n = Notifier()
    n.ready("11/11 probes attached")
    assert notify_socket.recv(4096) == b"READY=1\nSTATUS=11/11 probes attached"
    n.reloading()
    message = notify_socket.recv(4096).decode()
    assert message.startswith("RELOADING=1\nMONOTONIC_USEC=")
    n.watchdog()
    assert notify_socket.recv(4096) == b"WATCHDOG=1"
    n.stopping()
    assert notify_socket.recv(4096) == b"STOPPING=1"


def test_without_systemd_nothing_is_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    n = Notifier()
    assert not n.enabled
    n.ready("x")  # no socket, no error


def test_watchdog_interval_is_half_of_watchdog_usec() -> None:
    env = {"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": str(os.getpid())}
    assert Notifier(env).watchdog_interval == 5.0
    assert Notifier({"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": "1"}).watchdog_interval is None
    assert Notifier({}).watchdog_interval is None


@pytest.mark.parametrize("stale", [False, True], ids=["no-such-path", "stale-socket"])
def test_unreachable_socket_is_one_warning_and_the_daemon_runs_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, stale: bool
) -> None:
    path = tmp_path / "notify"
    if stale:  # a socket file whose listener is gone, as a restarted systemd leaves behind
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as gone:
            gone.bind(str(path))
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    n = Notifier()
    n.ready("x")
    n.status("y")
    n.watchdog()
    assert not n.enabled
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1, caplog.text
    assert f"NOTIFY_SOCKET is set to {path} but cannot be reached" in warnings[0].getMessage()
