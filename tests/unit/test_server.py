"""The HTTP listener, on loopback, with a plain registry (no BPF needed)."""

from __future__ import annotations

import gzip
import http.client
import socket
import time
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, Counter

from procmond.errors import ListenError
from procmond.server import MetricsServer, registry_render


@pytest.fixture
def server() -> Iterator[MetricsServer]:
    registry = CollectorRegistry()
    Counter("demo_events", "Demo.", registry=registry).inc(3)
    s = MetricsServer(
        registry_render(registry), "127.0.0.1", 0, max_connections=4, connection_timeout=1.0
    )
    s.start()
    yield s
    s.close()


def get(
    server: MetricsServer, path: str, method: str = "GET", headers: dict[str, str] | None = None
) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    conn.request(method, path, headers=headers or {})
    return conn.getresponse()


def test_metrics_index_and_404(server: MetricsServer) -> None:
    r = get(server, "/metrics")
    assert r.status == 200 and b"demo_events_total 3.0" in r.read()
    assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    r = get(server, "/")
    assert r.status == 200 and b'href="/metrics"' in r.read()
    assert get(server, "/metricsx").status == 404
    assert get(server, "/metrics?x=1").status == 200


def test_gzip_and_head(server: MetricsServer) -> None:
    r = get(server, "/metrics", headers={"Accept-Encoding": "gzip"})
    assert r.headers["Content-Encoding"] == "gzip"
    assert b"demo_events_total" in gzip.decompress(r.read())
    r = get(server, "/metrics", method="HEAD")
    assert r.status == 200 and r.read() == b""


def test_openmetrics_when_asked(server: MetricsServer) -> None:
    r = get(server, "/metrics", headers={"Accept": "application/openmetrics-text"})
    assert r.headers["Content-Type"].startswith("application/openmetrics-text")
    assert r.read().endswith(b"# EOF\n")


def test_bad_method_and_garbage_are_answered(server: MetricsServer) -> None:
    assert get(server, "/metrics", method="DELETE").status == 501
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        s.sendall(b"\x16\x03\x01garbage\r\n\r\n")  # a TLS hello, or HTTP/0.9 nonsense
        answer = b"".join(iter(lambda: s.recv(4096), b""))
        assert b"Error code: 400" in answer


def test_connection_cap_and_idle_timeout(server: MetricsServer) -> None:
    idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(4)]
    try:
        extra = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        assert extra.recv(10) == b""  # over the cap: closed at once
        extra.close()
        for s in idle:  # idle ones are dropped after the connection timeout
            s.settimeout(5)
            assert s.recv(10) == b""
            s.close()  # as a client does on EOF, which ends the server's drain at once
        # their slots come back as their threads finish: soon, but not at an exact instant
        deadline = time.monotonic() + 5
        while True:
            try:
                assert get(server, "/metrics").status == 200
                break
            except (ConnectionError, http.client.HTTPException):
                assert time.monotonic() < deadline, "connection slots were not released"
                time.sleep(0.1)
    finally:
        for s in idle:
            s.close()


def test_port_in_use_is_a_listen_error(server: MetricsServer) -> None:
    with pytest.raises(ListenError, match=f"cannot listen on 127.0.0.1:{server.port}"):
        MetricsServer(registry_render(CollectorRegistry()), "127.0.0.1", server.port)


def test_accepted_connections_send_without_nagle() -> None:
    """Headers and body go out in two writes: with Nagle's algorithm on, the end of a small
    (gzipped) body waited ~40 ms for the client's delayed ACK. Not started: accepted by hand."""
    s = MetricsServer(registry_render(CollectorRegistry()), "127.0.0.1", 0)
    try:
        with socket.create_connection(("127.0.0.1", s.port), timeout=5):
            accepted, _ = s._server.get_request()
            with accepted:
                assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
    finally:
        s._server.server_close()
