"""The HTTP listener: ``/metrics``, a small index page, 404 elsewhere.

The standard library's HTTP request parser answers each request, but connections are
procmond/web/connections.py's: one event-loop thread and a small fixed pool of workers, so that
connections are bounded (count, bytes and time), scraping makes no thread, the bind never
waits on DNS, and scrapes are serialised (a scrape reads kernel maps; two at once only cost
more).
"""

from __future__ import annotations

import ctypes
import errno
import functools
import gzip
import http.client
import io
import logging
import resource
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import urlsplit

from procmond import __version__
from procmond.config import address_on_host, not_on_host
from procmond.errors import ListenError
from procmond.web.connections import REQUEST_HEAD_BYTES, ConnectionLoop
from procmond.web.webconfig import WebSettings

log = logging.getLogger(__name__)

# Accept header -> (body, content type): the exposition, chosen by what the client accepts.
Render = Callable[[str], tuple[bytes | bytearray, str]]


INDEX_PAGE = b"""<!DOCTYPE html>
<html><head><title>procmond</title></head>
<body><h1>procmond</h1>
<p>Process creation, exec and exit counted in the kernel with eBPF.</p>
<p><a href="/metrics">Metrics</a></p>
</body></html>
"""

MAX_CONNECTIONS = 1024  # beyond this, a new connection takes the place of an unserved one
# Descriptors kept free for the daemon's own files, BPF maps and programs, and the files a
# scrape opens (32 are open when it serves, measured): connections get the rest.
RESERVED_DESCRIPTORS = 128
CONNECTION_TIMEOUT_SECONDS = 10.0  # a connection silent this long is dropped
DRAIN_SECONDS = 0.5  # at shutdown, how long answers already being written may take
LISTEN_BACKLOG = 1024  # socketserver's default is 5
IP_FREEBIND = 15  # linux/in.h; not in Python's socket module


M_ARENA_MAX = -8  # glibc's malloc.h


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    libc = ctypes.CDLL(None)
    return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None


def one_heap() -> None:
    """Make every thread allocate from glibc's main heap. Scrapes run in the server's worker
    threads, and a thread's own heap keeps the top of what it freed (malloc_trim gives back
    the main heap's top, not theirs): ~1.5 MiB less RSS after scrapes at 10,000 series,
    measured. Threads wait for the GIL anyway, so they do not contend for the lock. Call it
    before starting threads."""
    libc = _glibc()
    if libc is not None:
        libc.mallopt(M_ARENA_MAX, 1)


def return_memory() -> None:
    """Give back to the kernel what a scrape's megabyte buffers (the exposition, its copies,
    its compression) leave free. glibc keeps freed memory in the heap of the thread that
    allocated it, and after the first large free it stops mapping blocks of that size
    separately: ~3 MiB more RSS at 10,000 series, measured. Costs well under a millisecond."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


class _BoundedReader:
    """The connection's read side, allowing at most ``budget`` bytes of request line and
    headers per request: the standard library alone would accept 100 headers of 64 KiB each,
    on each of a thousand connections."""

    def __init__(self, raw: Any, budget: int) -> None:
        self._raw = raw
        self._left = budget

    def readline(self, limit: int = -1) -> bytes:
        cap = self._left + 1 if limit < 0 else min(limit, self._left + 1)
        line = self._raw.readline(cap)
        self._left -= len(line)
        if self._left < 0:
            raise http.client.LineTooLong("request line and headers")
        return line

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)


class _Handler(BaseHTTPRequestHandler):
    """Answers one request head that the connection loop has read, into bytes: no socket."""

    protocol_version = "HTTP/1.1"  # keep-alive: Prometheus reuses its connection
    server_version = f"procmond/{__version__}"
    sys_version = ""

    def __init__(self, server: MetricsServer, head: bytes, client_address: Any) -> None:
        self.server = server  # type: ignore[assignment]
        self.client_address = client_address
        self.rfile = _BoundedReader(io.BytesIO(head), REQUEST_HEAD_BYTES)  # type: ignore[assignment]
        self.wfile = io.BytesIO()  # the status line and headers (and error pages)
        # kept apart: copying ~1 MB of exposition twice more cost a scrape
        self.body: bytes | bytearray = b""
        self.close_connection = True

    def answer(self) -> tuple[list[bytes | bytearray], bool]:
        try:
            self.handle_one_request()
        except http.client.LineTooLong:  # the request line alone overran the budget
            self.command, self.requestline = None, ""  # type: ignore[assignment]
            self.request_version, self.close_connection = "HTTP/1.1", True
            self.send_error(431, "Request line and headers too large")
        assert isinstance(self.wfile, io.BytesIO)
        return [self.wfile.getvalue(), self.body], self.close_connection

    def do_GET(self) -> None:
        self._answer(send_body=True)

    def do_HEAD(self) -> None:
        self._answer(send_body=False)

    def _answer(self, send_body: bool) -> None:
        server: MetricsServer = self.server  # type: ignore[assignment]
        path = urlsplit(self.path).path
        web = server.web
        headers = dict(web.headers)
        if web.basic_auth and not web.basic_auth.allows(self.headers.get("Authorization")):
            status, body, content_type = 401, b"Unauthorized\n", "text/plain"
            headers["WWW-Authenticate"] = 'Basic realm="procmond", charset="UTF-8"'
        elif path == "/metrics":
            with server.scrape_lock:
                body, content_type = server.render(self.headers.get("Accept", ""))
            if "gzip" in self.headers.get("Accept-Encoding", ""):
                body = gzip.compress(body, compresslevel=1)
                headers["Content-Encoding"] = "gzip"
            return_memory()
            status = 200
        elif path == "/":
            status, body, content_type = 200, INDEX_PAGE, "text/html; charset=utf-8"
        else:
            status, body, content_type = 404, b"Not Found: try /metrics\n", "text/plain"
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if send_body:
            self.body = body

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        log.debug("%s %s", self.address_string(), format % args)


class MetricsServer:
    """Serves what ``render`` makes on host:port from background threads until ``close()``."""

    def __init__(
        self,
        render: Render,
        host: str,
        port: int,
        web: WebSettings | None = None,
        max_connections: int = MAX_CONNECTIONS,
        connection_timeout: float = CONNECTION_TIMEOUT_SECONDS,
    ) -> None:
        one_heap()
        self.render = render
        self.web = web or WebSettings()
        self.scrape_lock = threading.Lock()
        self._socket = _bind(host, port)
        self._loop = ConnectionLoop(
            self._socket,
            self._answer,
            lambda: self.web.ssl_context,
            room_for_connections(max_connections),
            connection_timeout,
        )

    def _answer(self, head: bytes, client_address: Any) -> tuple[list[bytes | bytearray], bool]:
        return _Handler(self, head, client_address).answer()

    @property
    def port(self) -> int:
        return int(self._socket.getsockname()[1])

    @property
    def address(self) -> str:
        host = str(self._socket.getsockname()[0])
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"

    def update_web(self, web: WebSettings) -> None:
        """New TLS and auth settings (on reload): they apply from the next connection on."""
        self.web = web

    @property
    def scheme(self) -> str:
        return self.web.scheme

    def start(self) -> None:
        self._loop.start()

    def close(self) -> None:
        """Stop accepting and close the listening socket. Answers being written get
        DRAIN_SECONDS to finish."""
        self._loop.close(DRAIN_SECONDS)


def connection_cap(max_connections: int, soft: int, hard: int) -> tuple[int, int]:
    """The soft open-files limit to set and the connections it leaves room for. systemd
    starts services with a soft limit of 1024 (and a hard one far above): under it, 1,100
    slow clients ran the daemon out of descriptors before its connection cap, and a failing
    accept() spun the loop (47,626 log lines in 12 s, measured) while scrapes could not open
    /proc files. Raising the soft limit up to the hard one needs no privilege (Go's runtime
    does it at start); where the hard limit is too low, the cap comes down instead."""
    wanted = max_connections + RESERVED_DESCRIPTORS
    if soft != resource.RLIM_INFINITY and soft < wanted:
        soft = wanted if hard == resource.RLIM_INFINITY else max(soft, min(hard, wanted))
    if soft == resource.RLIM_INFINITY:
        return soft, max_connections
    return soft, max(1, min(max_connections, soft - RESERVED_DESCRIPTORS))


def room_for_connections(max_connections: int) -> int:
    """Raise the soft open-files limit as far as the connections need (see connection_cap);
    the connection cap that fits it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    new_soft, cap = connection_cap(max_connections, soft, hard)
    if new_soft != soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (new_soft, hard))
    if cap < max_connections:
        log.warning(
            "the open-files limit (%d) leaves room for %d connections, not %d: raise it "
            "(LimitNOFILE= in the unit, or the container's nofile limit)",
            hard,
            cap,
            max_connections,
        )
    return cap


def _bind(host: str, port: int) -> socket.socket:
    """A listening socket, bound now, so a taken port fails before anything else has started."""
    if host:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise ListenError(
                f"cannot resolve listen address {host}: {exc.strerror}",
                "set listen to an IP address of this host",
            ) from None
        candidates = [(info[0], info[4][:2]) for info in infos]
    else:  # every interface: IPv6 dual-stack where the host has IPv6, else IPv4
        candidates = [(socket.AF_INET6, ("::", port)), (socket.AF_INET, ("0.0.0.0", port))]
    error: OSError | None = None
    for family, address in candidates:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            # An address not (yet) on any interface binds all the same: at boot, procmond
            # may start before the network has its addresses.
            sock.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)
            sock.bind(address)
            sock.listen(LISTEN_BACKLOG)
        except OSError as exc:
            sock.close()
            error = exc
            if exc.errno == errno.EADDRINUSE:  # no other family will do better
                break
        else:
            if host and not address_on_host(family, address):
                log.warning("%s", not_on_host(str(address[0]), port))
            return sock
    assert error is not None
    hint = "another process holds the port (ss -ltnp), or change listen in the config"
    if error.errno == errno.EACCES:
        hint = (
            "a port below 1024 needs CAP_NET_BIND_SERVICE, which procmond gives up once "
            "started: restart procmond to move to one, or pick a port from 1024 up"
        )
    raise ListenError(f"cannot listen on {host or '*'}:{port}: {error.strerror}", hint)
