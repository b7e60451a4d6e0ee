"""A thin sd_notify wrapper: READY, RELOADING, STOPPING, STATUS and watchdog pings.

Outside systemd (no NOTIFY_SOCKET) every call does nothing. A socket that is set but cannot
be reached (stale, or named by a container's environment without existing in it) or written
to is logged once, not swallowed (the sdnotify library hides errors by default), and the
daemon runs on: nothing it does depends on systemd hearing it.
"""

from __future__ import annotations

import logging
import os
import time

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        self._warned = False
        self._notifier = None
        if address:
            import sdnotify

            try:  # sdnotify connects here, and with debug=True raises what it met
                self._notifier = sdnotify.SystemdNotifier(debug=True)
            except OSError as exc:
                log.warning(
                    "NOTIFY_SOCKET is set to %s but cannot be reached (%s): running without "
                    "telling systemd",
                    address,
                    exc.strerror or exc,
                )
                self._warned = True
        self.enabled = self._notifier is not None
        self._watchdog_usec = _watchdog_usec(env)

    def _send(self, message: str) -> None:
        if self._notifier is None:
            return
        try:
            self._notifier.notify(message)
        except OSError as exc:
            if not self._warned:
                log.warning("cannot notify systemd (%s): %s", message.split("=")[0], exc)
                self._warned = True

    def ready(self, status: str) -> None:
        self._send(f"READY=1\nSTATUS={status}")

    def status(self, status: str) -> None:
        self._send(f"STATUS={status}")

    def reloading(self) -> None:
        # systemd 253+ wants MONOTONIC_USEC with RELOADING=1 (Type=notify-reload); older ones
        # ignore it.
        self._send(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}")

    def stopping(self) -> None:
        self._send("STOPPING=1")

    def watchdog(self) -> None:
        self._send("WATCHDOG=1")

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between pings (half of WatchdogSec), or None when no watchdog is set."""
        return self._watchdog_usec / 2e6 if self._watchdog_usec else None


def _watchdog_usec(env: dict[str, str] | os._Environ[str]) -> int:
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or (pid and pid != str(os.getpid())):
        return 0
    return int(usec)
