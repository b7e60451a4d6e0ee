"""The HTTP listener's connections: one event-loop thread and a small fixed pool of workers.

A thread per connection (socketserver's ThreadingMixIn) made a thread per scrape, which
showed up in procmond_threads_created_total, the very metric procmond serves, and let a
client hold a thread for as long as it kept a connection open. Here one thread watches every
connection with epoll and does all their I/O without blocking: accepts, TLS handshakes,
reading request heads, writing answers. Only a complete request head goes to a worker, which
computes the answer and touches no socket. So an idle, slow or never-reading client holds
no thread; each connection is bounded in bytes (the request head budget) and in time (a
timeout for each step, a deadline for each request head and for each request); and with
nothing to do the loop sleeps with no timeout at all: an idle daemon is not woken (the poll
of ``serve_forever`` woke it five times a second, the deadline reaper once a second).

Slow clients (Slowloris) cannot lock Prometheus out: 1,100 connections each dripping a header
line every 2 s held the connection cap, and every new connection was refused (0 of 25
scrapes answered, measured). So a request head has a total deadline however it trickles in
(Go's ReadHeaderTimeout, nginx's client_header_timeout), and at the cap a new connection
takes the place of the oldest one that has not sent a whole request yet: a scrape sends its
head at once and is answered, a drip is pushed out. Connections that completed a request
(Prometheus keeps its connection alive) are closed only when no other is left to close.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import logging
import math
import queue
import selectors
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

# request head, client address -> (the answer's parts, to send in order; close after it)
Answer = Callable[[bytes, Any], tuple[list[bytes | bytearray], bool]]

WORKERS = 2  # answers are computed one scrape at a time anyway (scrapes are serialised)
REQUEST_DEADLINE_SECONDS = 30.0  # a request must be read and answered within this
# A request head must be whole within this, counted from the accept (the TLS handshake
# included) for a connection's first request, from its first byte for a later one; between
# requests only the connection timeout applies. Prometheus sends its head in one write.
HEAD_DEADLINE_SECONDS = 10.0
WARNING_SECONDS = 60.0  # at most one log line this often about each connection trouble
ACCEPT_PAUSE_SECONDS = 1.0  # after accept() failed for want of descriptors, with none to close
REQUEST_HEAD_BYTES = 16 * 1024  # request line plus headers; Prometheus sends a few hundred
DRAIN_REQUEST_BYTES = 1 << 20  # unread request bytes discarded before closing a connection
DRAIN_AFTER_ERROR_SECONDS = 1.0
_READ_CHUNK = 64 * 1024
_WRITE_CHUNK = 256 * 1024
_WOULD_BLOCK = (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError)


class _State(enum.Enum):
    HANDSHAKE = enum.auto()  # TLS only
    READING = enum.auto()  # waiting for a whole request head
    ANSWERING = enum.auto()  # a worker has it: not watched
    WRITING = enum.auto()
    DRAINING = enum.auto()  # answered and closing: discard what the client still sends


def head_end(data: bytes | bytearray) -> int:
    """Where the first request head in ``data`` ends (after its blank line), or -1.

    A first line of fewer than three words (HTTP/0.9, garbage, an empty line) has no headers
    after it: it is a whole head by itself, for the HTTP parser to answer or refuse."""
    first = data.find(b"\n")
    if first < 0:
        return -1
    if len(data[:first].split()) < 3:
        return first + 1
    ends = [i + len(m) for m in (b"\n\r\n", b"\n\n") if (i := data.find(m, first)) >= 0]
    return min(ends) if ends else -1


class _Connection:
    __slots__ = (
        "active",
        "address",
        "answered",
        "close_after",
        "drain_left",
        "drain_until",
        "eof",
        "events",
        "inbuf",
        "opened",
        "out",
        "request_started",
        "sent",
        "sock",
        "state",
    )

    def __init__(self, sock: socket.socket, address: Any, state: _State, now: float) -> None:
        self.sock = sock
        self.address = address
        self.state = state
        self.events = 0  # what the selector watches it for: 0 = not registered
        self.inbuf = bytearray()
        self.out: list[memoryview] = []  # what is left to send, in order
        self.sent = 0  # bytes of out[0] already sent
        self.close_after = False
        self.eof = False  # the client has sent all it will: answer what it sent, then close
        self.opened = self.active = self.answered = now
        self.request_started: float | None = now  # the first request's clock starts at accept
        self.drain_until = 0.0
        self.drain_left = DRAIN_REQUEST_BYTES

    def deadline(self, timeout: float) -> float:
        """When the loop gives up on it: a step silent for ``timeout`` (the handshake, a read,
        a write), a request head or a request past its deadline, a drain past its second."""
        state = self.state
        if state is _State.ANSWERING:
            return math.inf
        if state is _State.DRAINING:
            return self.drain_until
        deadline = (self.opened if state is _State.HANDSHAKE else self.active) + timeout
        if self.request_started is not None:
            limit = REQUEST_DEADLINE_SECONDS if state is _State.WRITING else HEAD_DEADLINE_SECONDS
            deadline = min(deadline, self.request_started + limit)
        return deadline


class ConnectionLoop:
    """Serves ``listener`` (bound and listening) with ``answer`` until ``close()``."""

    def __init__(
        self,
        listener: socket.socket,
        answer: Answer,
        tls: Callable[[], ssl.SSLContext | None],
        max_connections: int,
        timeout: float,
        workers: int = WORKERS,
    ) -> None:
        self._listener = listener
        self._answer = answer
        self._tls = tls
        self._max_connections = max_connections
        self._timeout = timeout
        self._selector = selectors.DefaultSelector()
        self._connections: set[_Connection] = set()
        # connections yet to send a whole first request head, oldest first: who goes at the cap
        self._unserved: dict[_Connection, None] = {}
        self._evicted = 0  # since the last log line about it
        self._warned: dict[str, float] = {}  # what was logged when, for rate-limited warnings
        self._accept_resumes: float | None = None  # accept() failed: the listener rests until
        self._jobs: queue.SimpleQueue[tuple[_Connection, bytes] | None] = queue.SimpleQueue()
        self._done: queue.SimpleQueue[tuple[_Connection, list[bytes | bytearray], bool]] = (
            queue.SimpleQueue()
        )
        self._wake_r, self._wake_w = socket.socketpair()
        self._stopping = threading.Event()
        self._drain_until = math.inf
        self._threads = [threading.Thread(target=self._run, name="procmond-http", daemon=True)]
        self._threads += [
            threading.Thread(target=self._work, name="procmond-http-worker", daemon=True)
            for _ in range(workers)
        ]

    @property
    def connections(self) -> int:
        return len(self._connections)

    def start(self) -> None:
        self._listener.setblocking(False)
        self._wake_r.setblocking(False)
        self._selector.register(self._listener, selectors.EVENT_READ, "listener")
        self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        for thread in self._threads:
            thread.start()

    def close(self, drain: float) -> None:
        """Stop accepting at once; answers being computed or written get ``drain`` seconds to
        finish, so that a scrape gets all of its exposition or a closed connection
        (Content-Length tells the client which), never a silently short one."""
        loop = self._threads[0]
        if loop.ident is None:  # never started: only the sockets to close
            for sock in (self._listener, self._wake_r, self._wake_w):
                sock.close()
            return
        self._drain_until = time.monotonic() + drain
        self._stopping.set()
        self._wake()
        loop.join(drain + 1.0)
        for _ in self._threads[1:]:
            self._jobs.put(None)

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")

    # --- the workers: answers only, no socket I/O

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            connection, head = job
            try:
                answer, close = self._answer(head, connection.address)
            except Exception:
                log.error("answering %s failed", connection.address, exc_info=True)
                answer, close = [], True
            self._done.put((connection, answer, close))
            self._wake()

    # --- the event loop: every socket operation, none of them blocking

    def _run(self) -> None:
        try:
            while not self._finished():
                self._resume_accepting()
                for key, _events in self._selector.select(self._next_timeout()):
                    if key.data == "listener":
                        self._accept()
                    elif key.data == "wake":
                        with contextlib.suppress(OSError):
                            while self._wake_r.recv(4096):
                                pass
                    else:
                        self._step(key.data)
                self._take_answers()
                self._expire()
        except Exception:
            log.exception("the HTTP connection loop failed")
        finally:
            for connection in list(self._connections):
                self._close(connection)
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(self._listener)
            self._listener.close()
            self._selector.close()
            self._wake_r.close()
            self._wake_w.close()

    def _finished(self) -> bool:
        if not self._stopping.is_set():
            return False
        if self._listener.fileno() >= 0:  # stop accepting, drop connections with no answer due
            with contextlib.suppress(KeyError):  # not registered while accepting rests
                self._selector.unregister(self._listener)
            self._listener.close()
            for connection in list(self._connections):
                if connection.state not in (_State.ANSWERING, _State.WRITING):
                    self._close(connection)
        busy = any(c.state in (_State.ANSWERING, _State.WRITING) for c in self._connections)
        return not busy or time.monotonic() >= self._drain_until

    def _next_timeout(self) -> float | None:
        deadline = min((c.deadline(self._timeout) for c in self._connections), default=math.inf)
        if self._stopping.is_set():
            deadline = min(deadline, self._drain_until)
        if self._accept_resumes is not None:
            deadline = min(deadline, self._accept_resumes)
        return None if deadline == math.inf else max(0.0, deadline - time.monotonic())

    def _accept(self) -> None:
        while True:
            try:
                sock, address = self._listener.accept()
            except _WOULD_BLOCK:
                return
            except OSError as exc:
                # Out of descriptors: a slow client's goes to the new one. With none to close,
                # accept() would fail at once again (the listener stays readable), so the
                # listener rests a second instead of spinning.
                if exc.errno in (errno.EMFILE, errno.ENFILE) and self._make_room():
                    continue
                self._warn(
                    "accept",
                    "cannot accept connections, resting a second: %s (logged at most once a "
                    "minute)",
                    exc,
                )
                self._selector.unregister(self._listener)
                self._accept_resumes = time.monotonic() + ACCEPT_PAUSE_SECONDS
                return
            if len(self._connections) >= self._max_connections and not self._make_room():
                self._warn(
                    "full",
                    "connection limit (%d) reached, every connection busy with a request: "
                    "closing new connections (logged at most once a minute)",
                    self._max_connections,
                )
                sock.close()
                continue
            sock.setblocking(False)
            # Headers and body leave in two writes; with Nagle on, a body that ends in a
            # partial segment waited for the client's delayed ACK: +40 ms on every gzipped
            # scrape.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            context = self._tls()
            state = _State.READING
            if context is not None:  # the handshake is driven by the loop, without blocking
                sock = context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
                state = _State.HANDSHAKE
            connection = _Connection(sock, address, state, time.monotonic())
            self._connections.add(connection)
            self._unserved[connection] = None
            self._watch(connection, selectors.EVENT_READ)

    def _make_room(self) -> bool:
        """Close one connection for a new one: the oldest that has not sent a whole request
        head (a slow or silent client), else, of those waiting for a later request, the one
        whose last answer is oldest (Prometheus asks every scrape interval); never one whose
        request is being answered. False if there is none."""
        victim = next(iter(self._unserved), None)
        if victim is None:
            waiting = [c for c in self._connections if c.state is _State.READING]
            victim = min(waiting, key=lambda c: c.answered, default=None)
        if victim is None:
            return False
        self._close(victim)
        self._evicted += 1
        if self._warn(
            "evict",
            "%d connection(s) that had not sent a whole request, or were idle longest, closed "
            "to make room for new ones: more slow or idle clients than the %d connections "
            "allowed (or the open-files limit); logged at most once a minute",
            self._evicted,
            self._max_connections,
        ):
            self._evicted = 0
        return True

    def _warn(self, what: str, message: str, *args: object) -> bool:
        """Log a warning unless one about ``what`` went out less than a minute ago: an attack
        must not flood the journal. Whether it was logged."""
        now = time.monotonic()
        if now - self._warned.get(what, -math.inf) < WARNING_SECONDS:
            return False
        self._warned[what] = now
        log.warning(message, *args)
        return True

    def _resume_accepting(self) -> None:
        resumes = self._accept_resumes
        if resumes is not None and time.monotonic() >= resumes and not self._stopping.is_set():
            self._accept_resumes = None
            self._selector.register(self._listener, selectors.EVENT_READ, "listener")

    def _step(self, connection: _Connection) -> None:
        state = connection.state
        if state is _State.HANDSHAKE:
            self._handshake(connection)
        elif state is _State.READING:
            self._read(connection)
        elif state is _State.WRITING:
            self._write(connection)
        elif state is _State.DRAINING:
            self._drain(connection)

    def _handshake(self, connection: _Connection) -> None:
        sock = connection.sock
        assert isinstance(sock, ssl.SSLSocket)
        try:
            sock.do_handshake()
        except ssl.SSLWantReadError:
            self._watch(connection, selectors.EVENT_READ)
            return
        except ssl.SSLWantWriteError:
            self._watch(connection, selectors.EVENT_WRITE)
            return
        except OSError as exc:  # ssl.SSLError included: plain HTTP on the TLS port, say
            log.debug("TLS handshake with %s failed: %s", connection.address, exc)
            self._start_draining(connection)  # a clean end for the client, not a reset
            return
        connection.state = _State.READING
        connection.active = time.monotonic()
        self._read(connection)  # the request may have come with the handshake

    def _read(self, connection: _Connection) -> None:
        while not connection.eof and len(connection.inbuf) <= REQUEST_HEAD_BYTES:
            try:
                chunk = connection.sock.recv(_READ_CHUNK)
            except _WOULD_BLOCK:
                break
            except OSError:
                self._close(connection)
                return
            if not chunk:
                connection.eof = True
                break
            now = time.monotonic()
            connection.active = now
            if connection.request_started is None:
                connection.request_started = now
            connection.inbuf += chunk
        self._next_request(connection)

    def _next_request(self, connection: _Connection) -> None:
        """Hand the next whole request head to a worker, or wait for more of it."""
        inbuf = connection.inbuf
        end = head_end(inbuf)
        if end < 0 and len(inbuf) <= REQUEST_HEAD_BYTES:
            if connection.eof:
                self._close(connection)
            else:
                self._watch(connection, selectors.EVENT_READ)
            return
        if end < 0:  # over budget: the parser answers 431 from what it has
            end = REQUEST_HEAD_BYTES + 1
            connection.close_after = True
        head = bytes(inbuf[:end])
        del inbuf[:end]
        self._unserved.pop(connection, None)
        connection.state = _State.ANSWERING
        self._watch(connection, 0)
        self._jobs.put((connection, head))

    def _take_answers(self) -> None:
        while True:
            try:
                connection, answer, close = self._done.get_nowait()
            except queue.Empty:
                return
            if connection not in self._connections:
                continue
            connection.out = [memoryview(part) for part in answer if part]
            connection.sent = 0
            connection.close_after |= close or not answer
            connection.state = _State.WRITING
            connection.active = time.monotonic()
            self._write(connection)

    def _write(self, connection: _Connection) -> None:
        out = connection.out
        while out:
            part, sent = out[0], connection.sent
            try:
                # TLS: a write that would block must be retried with the same bytes, which
                # this does (``sent`` moves only once the kernel or OpenSSL took them).
                sent += connection.sock.send(part[sent : sent + _WRITE_CHUNK])
            except ssl.SSLWantReadError:
                self._watch(connection, selectors.EVENT_READ)
                return
            except _WOULD_BLOCK:
                self._watch(connection, selectors.EVENT_WRITE)
                return
            except OSError:
                self._close(connection)
                return
            connection.active = time.monotonic()
            if sent == len(part):
                out.pop(0)
                sent = 0
            connection.sent = sent
        if connection.close_after:
            self._start_draining(connection)
            return
        connection.state = _State.READING
        connection.answered = time.monotonic()
        connection.request_started = connection.answered if connection.inbuf else None
        self._read(connection)  # a pipelined request may be waiting, in the kernel or in TLS

    def _start_draining(self, connection: _Connection) -> None:
        """A request refused half-read leaves bytes unread; closing now would make the kernel
        reset the connection and drop the answer before the client reads it. Read (and
        discard) what the client still sends, a bounded amount for a bounded time, then close."""
        with contextlib.suppress(OSError):
            connection.sock.shutdown(socket.SHUT_WR)
        connection.state = _State.DRAINING
        connection.drain_until = time.monotonic() + DRAIN_AFTER_ERROR_SECONDS
        self._drain(connection)

    def _drain(self, connection: _Connection) -> None:
        while connection.drain_left > 0:
            try:
                chunk = connection.sock.recv(min(_READ_CHUNK, connection.drain_left))
            except _WOULD_BLOCK:
                self._watch(connection, selectors.EVENT_READ)
                return
            except OSError:
                break
            if not chunk:
                break
            connection.drain_left -= len(chunk)
        self._close(connection)

    def _expire(self) -> None:
        now = time.monotonic()
        for connection in list(self._connections):
            if connection.deadline(self._timeout) <= now:
                log.debug("closing a connection from %s: timed out", connection.address)
                self._close(connection)

    def _watch(self, connection: _Connection, events: int) -> None:
        if events == connection.events:
            return
        if not events:
            self._selector.unregister(connection.sock)
        elif not connection.events:
            self._selector.register(connection.sock, events, connection)
        else:
            self._selector.modify(connection.sock, events, connection)
        connection.events = events

    def _close(self, connection: _Connection) -> None:
        if connection not in self._connections:
            return
        self._connections.discard(connection)
        self._unserved.pop(connection, None)
        self._watch(connection, 0)
        with contextlib.suppress(OSError):
            connection.sock.close()
