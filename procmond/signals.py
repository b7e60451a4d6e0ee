"""SIGHUP, SIGINT and SIGTERM that come before procmond is ready are held, not fatal.

A process has no handler for them until it installs one, and without one SIGHUP and SIGTERM
kill it. The daemon installs its handlers once its modules are imported and its config is read:
~0.25 s after exec, measured here, and a `kill -HUP` in that time killed it. So the entry point
(procmond/__main__.py) blocks them first thing: the kernel keeps each pending (one of a kind)
until the daemon has its handlers and unblocks them, and every other command unblocks them as
soon as it knows it is not the daemon. What no Python program can hold is a signal during the
interpreter's own start, before it runs procmond's first line (~20 ms here).

The loader child is started with them blocked and keeps them so (procmond/kernel/handoff.py): a stop
signal sent to the whole service (systemd's KillMode=control-group) or to the terminal's
process group reaches the daemon, which stops once the child has handed the probe over, instead
of killing the compiler halfway and failing.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager

HELD = frozenset({signal.SIGHUP, signal.SIGINT, signal.SIGTERM})


def hold() -> None:
    """Block them in the calling thread (and in whatever it starts from now on)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, HELD)


def release() -> None:
    """Unblock them: one of each that came meanwhile is delivered now, to the handlers in
    place (the Python-level ones run in the main thread, at once)."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, HELD)


@contextmanager
def held() -> Iterator[None]:
    """Blocked for the time of the block, then as before. A child started inside inherits
    the blocked mask across exec."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, HELD)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
