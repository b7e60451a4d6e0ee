"""The procmond daemon as a subprocess: its config written, started, awaited until it serves,
scraped over HTTP and stopped. The one way the tests and the benchmarks start it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from tests.support.exposition import Exposition

PROCMOND = [sys.executable, "-m", "procmond"]
# The installed command, as a user runs it: unlike `python -m`, it does not import from the
# working directory, so it can be started from anywhere.
PROCMOND_SCRIPT = [str(Path(sys.executable).with_name("procmond"))]

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout: float, what: str) -> T:
    """Poll ``predicate`` until it returns something true, and return that; fail after
    ``timeout`` seconds naming ``what`` was awaited. For waiting on output, never a sleep."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout} s for {what}, in vain")
        time.sleep(0.02)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def procmond_command() -> list[str]:
    """The installed ``procmond`` script beside this interpreter (the venv's), as an operator
    runs it; ``python -m procmond`` where there is none."""
    return PROCMOND_SCRIPT if Path(PROCMOND_SCRIPT[0]).exists() else PROCMOND


@dataclass
class Daemon:
    process: subprocess.Popen
    port: int
    log_path: Path
    config_path: Path
    extra: dict = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_for_log(self, text: str, count: int = 1, timeout: float = 10) -> str:
        """Wait until ``text`` appears ``count`` times in the log; return the log."""
        wait_until(
            lambda: self.log().count(text) >= count or self.process.poll() is not None,
            timeout,
            f"{text!r} x{count} in the daemon's log",
        )
        log = self.log()
        assert log.count(text) >= count, f"daemon exited {self.process.returncode}:\n{log}"
        return log

    def scrape_text(self, timeout: float = 10) -> str:
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=timeout) as response:
            return response.read().decode()  # type: ignore[no-any-return]

    def scrape(self) -> Exposition:
        return Exposition(self.scrape_text())

    def stop(self, sig: int = 15, timeout: float = 10) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                raise AssertionError(f"daemon ignored signal {sig}; log:\n{self.log()}") from None
        return self.process.returncode


def launch(
    workdir: Path,
    config_text: str = "",
    port: int | None = None,
    env: dict[str, str] | None = None,
    args: Sequence[str] = (),
    command: Sequence[str] = PROCMOND,
    cwd: Path | None = None,
    listen_in_file: bool = True,
    pinned: bool = False,
    name: str = "procmond",
) -> Daemon:
    """Write ``<name>.yaml`` in ``workdir`` and start ``procmond run --config`` on it, its
    output in ``<name>.log``; do not wait. ``args`` follow ``run --config FILE``; the file says
    to listen on ``port``, unless ``listen_in_file`` is false (then the caller sets the address
    itself). Not ``pinned`` (the default, unless ``config_text`` sets a ``pin_root``), the
    daemon neither pins nor adopts a probe another test, or another run on the host, left."""
    port = port or free_port()
    config = workdir / f"{name}.yaml"
    listen = f'listen: "127.0.0.1:{port}"\n' if listen_in_file else ""
    pins = "" if pinned or "pin_root:" in config_text else 'pin_root: ""\n'
    config.write_text(listen + pins + config_text)
    log_path = workdir / f"{name}.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [*command, "run", "--config", str(config), *args],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            cwd=cwd,
        )
    return Daemon(process, port, log_path, config)


def wait_serving(
    daemon: Daemon, timeout: float = 30, logged: str | None = None, poll: float = 0.05
) -> Daemon:
    """Wait until the daemon serves: a plain scrape answers or, given ``logged``, that text is
    in its log (a TLS daemon, or one listening where this process cannot reach). Killed and
    failed after ``timeout`` seconds, or failed at once when it exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if daemon.process.poll() is not None:
            raise AssertionError(f"daemon exited {daemon.process.returncode}:\n{daemon.log()}")
        try:
            if logged is None:
                daemon.scrape_text()
                return daemon
            if logged in daemon.log():
                return daemon
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(poll)
    daemon.stop(9)
    raise AssertionError(f"daemon not serving after {timeout} s:\n{daemon.log()}")


def start_daemon(
    tmp: Path,
    config_text: str = "",
    port: int | None = None,
    env: dict[str, str] | None = None,
    ready_timeout: float = 30,
    tls: bool = False,
    args: Sequence[str] = (),
    command: Sequence[str] = PROCMOND,
    cwd: Path | None = None,
    listen_in_file: bool = True,
    pinned: bool = False,
    name: str = "procmond",
    logged: str | None = None,
    poll: float = 0.05,
) -> Daemon:
    """``launch`` then ``wait_serving``: with ``tls``, until the daemon has logged that it
    serves https (the test then scrapes with its own certificates)."""
    daemon = launch(tmp, config_text, port, env, args, command, cwd, listen_in_file, pinned, name)
    if tls and logged is None:
        logged = "serving https://"
    return wait_serving(daemon, ready_timeout, logged, poll)
