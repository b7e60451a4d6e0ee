"""The HTTP listener: ``/metrics``, a small index page, 404 elsewhere.

Built on the standard library's threading HTTP server rather than prometheus_client's
``start_http_server`` so that connections are bounded (count and time), the bind never waits
on DNS, and scrapes are serialised (a scrape reads kernel maps; two at once only cost more).
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import http.client
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from procmond import __version__
from procmond.errors import ListenError
from procmond.webconfig import WebSettings

log = logging.getLogger(__name__)

# Accept header -> (body, content type): the exposition, chosen by what the client accepts.
Render = Callable[[str], tuple[bytes, str]]


def registry_render(registry: CollectorRegistry) -> Render:
    """Render a plain registry, in whatever format the client asked for."""

    def render(accept: str) -> tuple[bytes, str]:
        encoder, content_type = choose_encoder(accept)
        return encoder(registry), content_type

    return render


INDEX_PAGE = b"""<!DOCTYPE html>
<html><head><title>procmond</title></head>
<body><h1>procmond</h1>
<p>Process creation, exec and exit counted in the kernel with eBPF.</p>
<p><a href="/metrics">Metrics</a></p>
</body></html>
"""

MAX_CONNECTIONS = 1024  # beyond this, new connections are closed at once
CONNECTION_TIMEOUT_SECONDS = 10.0  # a connection silent this long is dropped
REQUEST_DEADLINE_SECONDS = 30.0  # a request must be read and answered within this
REQUEST_HEAD_BYTES = 16 * 1024  # request line plus headers; Prometheus sends a few hundred
DRAIN_SECONDS = 0.5  # at shutdown, how long answers already being written may take
DRAIN_REQUEST_BYTES = 1 << 20  # unread request bytes discarded before closing a connection


class _BoundedReader:
    """The connection's read side, allowing at most ``budget`` bytes of request line and
    headers per request: the standard library alone would accept 100 headers of 64 KiB each,
    on each of a thousand connections."""

    def __init__(self, raw: Any, budget: int) -> None:
        self._raw = raw
        self._budget = budget
        self._left = budget

    def start_request(self) -> None:
        self._left = self._budget

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
    server: _Server
    protocol_version = "HTTP/1.1"  # keep-alive: Prometheus reuses its connection
    server_version = f"procmond/{__version__}"
    sys_version = ""

    def setup(self) -> None:
        self.timeout = self.server.connection_timeout
        if isinstance(self.request, ssl.SSLSocket):
            # The TLS handshake runs here, in this connection's own thread, never in the one
            # that accepts: a client that connects and sends nothing holds up no one else.
            self.request.settimeout(self.timeout)
            self.request.do_handshake()
        super().setup()
        self.rfile = _BoundedReader(self.rfile, REQUEST_HEAD_BYTES)  # type: ignore[assignment]

    def handle_one_request(self) -> None:
        self.rfile.start_request()  # type: ignore[attr-defined]
        self.server.arm_deadline(self.connection)
        try:
            super().handle_one_request()
        except http.client.LineTooLong:  # the request line alone overran the budget
            self.command, self.requestline = None, ""
            self.request_version, self.close_connection = "HTTP/1.1", True
            self.send_error(431, "Request line and headers too large")
        finally:
            self.server.disarm_deadline(self.connection)

    def finish(self) -> None:
        super().finish()
        # A request refused half-read leaves bytes unread; closing now would make the kernel
        # reset the connection and drop the error answer before the client reads it. Read
        # (and discard) what the client still sends, a bounded amount, then close.
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_WR)
            self.connection.settimeout(1.0)
            left = DRAIN_REQUEST_BYTES
            while left > 0 and (chunk := self.connection.recv(min(65536, left))):
                left -= len(chunk)

    def do_GET(self) -> None:
        self._respond(send_body=True)

    def do_HEAD(self) -> None:
        self._respond(send_body=False)

    def _respond(self, send_body: bool) -> None:
        with self.server.answering():
            self._answer(send_body)

    def _answer(self, send_body: bool) -> None:
        path = urlsplit(self.path).path
        web = self.server.web
        headers = dict(web.headers)
        if web.basic_auth and not web.basic_auth.allows(self.headers.get("Authorization")):
            status, body, content_type = 401, b"Unauthorized\n", "text/plain"
            headers["WWW-Authenticate"] = 'Basic realm="procmond", charset="UTF-8"'
        elif path == "/metrics":
            with self.server.scrape_lock:
                body, content_type = self.server.render(self.headers.get("Accept", ""))
            if "gzip" in self.headers.get("Accept-Encoding", ""):
                body = gzip.compress(body, compresslevel=1)
                headers["Content-Encoding"] = "gzip"
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
            self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        log.debug("%s %s", self.address_string(), format % args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 1024  # the listen backlog (socketserver's default is 5)

    def __init__(
        self,
        address: tuple[str, int],
        family: socket.AddressFamily,
        render: Render,
        max_connections: int,
        connection_timeout: float,
    ) -> None:
        self.address_family = family
        self.render = render
        self.web = WebSettings()
        self.scrape_lock = threading.Lock()
        self.connection_timeout = connection_timeout
        self.max_connections = max_connections
        self._slots = threading.BoundedSemaphore(max_connections)
        self._deadlines: dict[socket.socket, float] = {}
        self._answers = 0
        self._lock = threading.Condition()
        super().__init__(address, _Handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        connection, address = self.socket.accept()
        # Headers and body leave in two writes; with Nagle on, a body that ends in a partial
        # segment waited for the client's delayed ACK: +40 ms on every gzipped scrape.
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        context = self.web.ssl_context
        if context is not None:  # no I/O here: the handshake happens in the handler's thread
            connection = context.wrap_socket(
                connection, server_side=True, do_handshake_on_connect=False
            )
        return connection, address

    def arm_deadline(self, connection: socket.socket) -> None:
        with self._lock:
            self._deadlines[connection] = time.monotonic() + REQUEST_DEADLINE_SECONDS

    def disarm_deadline(self, connection: socket.socket) -> None:
        with self._lock:
            self._deadlines.pop(connection, None)

    def reap_overdue(self) -> None:
        """Cut connections whose request has run past its deadline: a client trickling a
        byte every few seconds never trips the per-read timeout, but it does trip this."""
        now = time.monotonic()
        with self._lock:
            overdue = [c for c, deadline in self._deadlines.items() if deadline < now]
        for connection in overdue:
            log.debug("cutting a connection that overran its request deadline")
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    @contextlib.contextmanager
    def answering(self) -> Iterator[None]:
        with self._lock:
            self._answers += 1
        try:
            yield
        finally:
            with self._lock:
                self._answers -= 1
                self._lock.notify_all()

    def drain(self, timeout: float) -> None:
        """Wait until no answer is being written, so none is cut short by exit."""
        with self._lock:
            self._lock.wait_for(lambda: self._answers == 0, timeout)

    def server_bind(self) -> None:
        if self.address_family == socket.AF_INET6:
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        # HTTPServer.server_bind would call getfqdn(), which can wait on DNS for seconds.
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.bind(self.server_address)
        self.server_address = self.socket.getsockname()
        self.server_name, self.server_port = str(self.server_address[0]), self.server_address[1]

    def process_request(self, request: socket.socket, client_address: object) -> None:
        if not self._slots.acquire(blocking=False):
            log.warning(
                "connection limit (%d) reached: closing a new connection", self.max_connections
            )
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except Exception:
            self._slots.release()
            raise

    def process_request_thread(self, request: socket.socket, client_address: object) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: object, client_address: object) -> None:
        log.debug("connection from %s ended with an error", client_address, exc_info=True)


class MetricsServer:
    """Serves what ``render`` makes on host:port from a background thread until ``close()``."""

    def __init__(
        self,
        render: Render,
        host: str,
        port: int,
        web: WebSettings | None = None,
        max_connections: int = MAX_CONNECTIONS,
        connection_timeout: float = CONNECTION_TIMEOUT_SECONDS,
    ) -> None:
        self._server = self._bind(render, host, port, max_connections, connection_timeout)
        self._server.web = web or WebSettings()
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.2},
            name="procmond-http",
            daemon=True,
        )
        self._stopped = threading.Event()
        self._reaper = threading.Thread(target=self._reap, name="procmond-http-reaper", daemon=True)

    @staticmethod
    def _bind(
        render: Render, host: str, port: int, max_connections: int, timeout: float
    ) -> _Server:
        """Bind now, so a taken port fails before anything else has started."""
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
            try:
                return _Server(address, family, render, max_connections, timeout)
            except OSError as exc:
                error = exc
                if exc.errno == 98:  # EADDRINUSE: no other family will do better
                    break
        assert error is not None
        hint = "another process holds the port (ss -ltnp), or change listen in the config"
        if error.errno == errno.EACCES:
            hint = (
                "a port below 1024 needs CAP_NET_BIND_SERVICE, which procmond gives up once "
                "started: restart procmond to move to one, or pick a port from 1024 up"
            )
        raise ListenError(f"cannot listen on {host or '*'}:{port}: {error.strerror}", hint)

    @property
    def port(self) -> int:
        return self._server.server_port

    @property
    def address(self) -> str:
        host = self._server.server_name
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"

    def update_web(self, web: WebSettings) -> None:
        """New TLS and auth settings (on reload): they apply from the next connection on."""
        self._server.web = web

    @property
    def scheme(self) -> str:
        return self._server.web.scheme

    def start(self) -> None:
        self._thread.start()
        self._reaper.start()

    def _reap(self) -> None:
        while not self._stopped.wait(1.0):
            self._server.reap_overdue()

    def close(self) -> None:
        """Stop accepting and close the listening socket. Answers being written get
        DRAIN_SECONDS to finish, so a scrape gets all of its exposition or a closed
        connection (Content-Length tells the client which), never a silently short one."""
        self._stopped.set()
        self._server.shutdown()
        self._server.drain(DRAIN_SECONDS)
        self._server.server_close()
