"""A Slowloris attack for the tests: many connections that each send a request line, then one
header line every few seconds, and never the blank line that ends the head. A connection
the server closes is opened again at the next drip, so the attack keeps its numbers up, as a
real one does. One thread drives every socket with epoll."""

from __future__ import annotations

import resource
import select
import socket
import threading
import time


def raise_open_files_limit(needed: int) -> tuple[int, int]:
    """Raise this process's soft RLIMIT_NOFILE to its hard one (no CAP_SYS_RESOURCE is needed
    for that, nor available on every test machine); fail if even the hard one is too low.
    Returns the limits before, for ``resource.setrlimit`` to put them back."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit = hard if hard != resource.RLIM_INFINITY else max(soft, needed)
    assert limit >= needed, f"the hard open-files limit ({hard}) is below the {needed} needed"
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, limit), hard))
    return soft, hard


class Drip:
    def __init__(self, port: int, count: int, interval: float = 2.0) -> None:
        self.port = port
        self.count = count
        self.interval = interval
        self.reopen = True
        self.opened = 0  # connections made, reopened ones included
        self.open_failures = 0
        self.lifetimes: list[float] = []  # from connect to seen closed, of each one closed
        self._live: dict[int, tuple[socket.socket, float]] = {}
        self._poll = select.epoll()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="drip", daemon=True)

    @property
    def live(self) -> int:
        return len(self._live)

    def start(self) -> None:
        """Open every connection (each sends its request line at once), then drip."""
        self._top_up()
        self._thread.start()

    def stop_reopening(self) -> None:
        self.reopen = False

    def wait_all_closed(self, timeout: float) -> float:
        """Seconds until the server had closed every connection; fails after ``timeout``."""
        started = time.monotonic()
        while self._live:
            assert time.monotonic() - started < timeout, f"{self.live} dripping still open"
            time.sleep(0.1)
        return time.monotonic() - started

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        for sock, _ in list(self._live.values()):
            sock.close()
        self._live.clear()
        self._poll.close()

    def _top_up(self) -> None:
        while self.reopen and len(self._live) < self.count and not self._stop.is_set():
            try:
                sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
                sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: drip\r\n")
            except OSError:
                self.open_failures += 1
                return  # the server is refusing: try again at the next drip
            sock.setblocking(False)
            self._live[sock.fileno()] = (sock, time.monotonic())
            self._poll.register(sock, select.EPOLLIN | select.EPOLLRDHUP)
            self.opened += 1

    def _closed(self, fd: int) -> None:
        sock, opened = self._live.pop(fd)
        self.lifetimes.append(time.monotonic() - opened)
        self._poll.unregister(sock)
        sock.close()

    def _run(self) -> None:
        next_drip = time.monotonic() + self.interval
        while not self._stop.is_set():
            for fd, _events in self._poll.poll(max(0.0, next_drip - time.monotonic())):
                if fd in self._live:  # the server closed it (or answered it: not expected)
                    self._closed(fd)
            if time.monotonic() < next_drip:
                continue
            next_drip += self.interval
            for fd, (sock, _) in list(self._live.items()):
                try:
                    sock.send(b"X-Drip: x\r\n")
                except OSError:
                    self._closed(fd)
            self._top_up()
