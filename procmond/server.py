"""The HTTP listener: ``/metrics`` from a private registry, a small index page, 404 elsewhere.

Built on the standard library's threading HTTP server rather than prometheus_client's
``start_http_server`` so that connections are bounded (count and time), the bind never waits
on DNS, and scrapes are serialised (a scrape reads kernel maps; two at once only cost more).
"""

from __future__ import annotations

import gzip
import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from procmond import __version__
from procmond.errors import ListenError

log = logging.getLogger(__name__)

INDEX_PAGE = b"""<!DOCTYPE html>
<html><head><title>procmond</title></head>
<body><h1>procmond</h1>
<p>Process creation, exec and exit counted in the kernel with eBPF.</p>
<p><a href="/metrics">Metrics</a></p>
</body></html>
"""

MAX_CONNECTIONS = 1024  # beyond this, new connections are closed at once
CONNECTION_TIMEOUT_SECONDS = 10.0  # idle or slow clients are dropped after this


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"  # keep-alive: Prometheus reuses its connection
    server_version = f"procmond/{__version__}"
    sys_version = ""

    def setup(self) -> None:
        self.timeout = self.server.connection_timeout
        super().setup()

    def do_GET(self) -> None:
        self._respond(send_body=True)

    def do_HEAD(self) -> None:
        self._respond(send_body=False)

    def _respond(self, send_body: bool) -> None:
        path = urlsplit(self.path).path
        headers = {}
        if path == "/metrics":
            encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
            with self.server.scrape_lock:
                body = encoder(self.server.registry)
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

    def __init__(
        self,
        address: tuple[str, int],
        family: socket.AddressFamily,
        registry: CollectorRegistry,
        max_connections: int,
        connection_timeout: float,
    ) -> None:
        self.address_family = family
        self.registry = registry
        self.scrape_lock = threading.Lock()
        self.connection_timeout = connection_timeout
        self._slots = threading.BoundedSemaphore(max_connections)
        super().__init__(address, _Handler)

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
            log.warning("connection limit (%d) reached: closing a new connection", MAX_CONNECTIONS)
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
    """Serves ``registry`` on host:port from a background thread until ``close()``."""

    def __init__(
        self,
        registry: CollectorRegistry,
        host: str,
        port: int,
        max_connections: int = MAX_CONNECTIONS,
        connection_timeout: float = CONNECTION_TIMEOUT_SECONDS,
    ) -> None:
        self._server = self._bind(registry, host, port, max_connections, connection_timeout)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.2},
            name="procmond-http",
            daemon=True,
        )

    @staticmethod
    def _bind(
        registry: CollectorRegistry, host: str, port: int, max_connections: int, timeout: float
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
                return _Server(address, family, registry, max_connections, timeout)
            except OSError as exc:
                error = exc
                if exc.errno == 98:  # EADDRINUSE: no other family will do better
                    break
        assert error is not None
        raise ListenError(
            f"cannot listen on {host or '*'}:{port}: {error.strerror}",
            "another process holds the port (ss -ltnp), or change listen in the config",
        )

    @property
    def port(self) -> int:
        return self._server.server_port

    @property
    def address(self) -> str:
        host = self._server.server_name
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        """Stop accepting, close the listening socket; in-flight scrapes finish or drop."""
        self._server.shutdown()
        self._server.server_close()
