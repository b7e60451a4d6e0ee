"""The HTTP listener, on loopback, with a plain registry (no BPF needed)."""

from __future__ import annotations

import gzip
import http.client
import re
import resource
import select
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter

from procmond.config import address_on_host
from procmond.errors import ListenError
from procmond.web import connections
from procmond.web.connections import WORKERS
from procmond.web.server import RESERVED_DESCRIPTORS, MetricsServer, connection_cap
from tests.support.registry import registry_render


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


def test_idle_connections_are_dropped_after_the_timeout(server: MetricsServer) -> None:
    idle = [socket.create_connection(("127.0.0.1", server.port), timeout=5) for _ in range(4)]
    try:
        for s in idle:
            assert s.recv(10) == b""
    finally:
        for s in idle:
            s.close()
    assert get(server, "/metrics").status == 200


@pytest.fixture
def capped() -> Iterator[MetricsServer]:
    """Four connections at most, and a timeout longer than any of these tests."""
    registry = CollectorRegistry()
    s = MetricsServer(registry_render(registry), "127.0.0.1", 0, max_connections=4)
    s.start()
    yield s
    s.close()


def served_connection(server: MetricsServer) -> http.client.HTTPConnection:
    """A kept-alive connection that has completed a request, as Prometheus holds one."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    conn.request("GET", "/metrics")
    conn.getresponse().read()
    return conn


def wait_connections(server: MetricsServer, count: int) -> None:
    deadline = time.monotonic() + 5
    while server._loop.connections != count:
        assert time.monotonic() < deadline, f"{server._loop.connections} connections, not {count}"
        time.sleep(0.01)


def is_open(s: socket.socket) -> bool:
    """Whether the server still holds it: closed, it reads as EOF or a reset at once."""
    if not select.select([s], [], [], 0)[0]:
        return True
    try:
        return s.recv(1, socket.MSG_PEEK) != b""
    except ConnectionError:
        return False


def test_at_the_cap_a_new_connection_pushes_out_the_oldest_that_sent_no_request(
    capped: MetricsServer,
) -> None:
    """Slowloris: clients that connect and never finish a request head must not lock out a
    scrape. The oldest of them goes; a connection that completed a request is kept."""
    kept = served_connection(capped)
    slow = [socket.create_connection(("127.0.0.1", capped.port), timeout=5) for _ in range(3)]
    try:
        slow[1].sendall(b"GET /metrics HTTP/1.1\r\n")  # a drip counts as no request
        wait_connections(capped, 4)
        fresh = served_connection(capped)  # the fifth: answered
        assert fresh.sock is not None and kept.sock is not None
        wait_connections(capped, 4)
        assert [is_open(s) for s in slow] == [False, True, True]
        assert is_open(fresh.sock) and is_open(kept.sock)
        kept.request("GET", "/metrics")  # the kept-alive connection still answers
        assert kept.getresponse().status == 200
        fresh.close()
    finally:
        kept.close()
        for s in slow:
            s.close()


def test_at_the_cap_with_every_connection_served_the_one_answered_longest_ago_goes(
    capped: MetricsServer,
) -> None:
    """With no connection that never sent a request, the new one replaces the one whose last
    answer is oldest, whether idle or dripping a later request head: a client that holds
    its slot by dripping after one quick request goes before a Prometheus that scrapes."""
    served = [served_connection(capped) for _ in range(4)]
    try:
        assert served[0].sock is not None
        served[0].sock.sendall(b"GET / HTTP/1.1\r\n")  # a later head, dripping
        served[2].request("GET", "/")
        served[2].getresponse().read()
        wait_connections(capped, 4)
        fresh = served_connection(capped)
        wait_connections(capped, 4)
        assert [is_open(c.sock) for c in served] == [False, True, True, True]  # type: ignore[arg-type]
        fresh.close()
    finally:
        for c in served:
            c.close()


def test_port_in_use_is_a_listen_error(server: MetricsServer) -> None:
    with pytest.raises(ListenError, match=f"cannot listen on 127.0.0.1:{server.port}"):
        MetricsServer(registry_render(CollectorRegistry()), "127.0.0.1", server.port)


def test_accepted_connections_send_without_nagle(server: MetricsServer) -> None:
    """Headers and body go out in two writes: with Nagle's algorithm on, the end of a small
    (gzipped) body waited ~40 ms for the client's delayed ACK."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=5):
        deadline = time.monotonic() + 5
        while not server._loop._connections:
            assert time.monotonic() < deadline, "the connection was not accepted"
            time.sleep(0.01)
        (accepted,) = server._loop._connections
        assert accepted.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1


def test_scrapes_make_no_thread(server: MetricsServer) -> None:
    """One thread per connection made a thread per scrape, counted in the very metric procmond
    serves: a fixed pool answers them all."""
    before = {t.native_id for t in threading.enumerate()}
    for _ in range(30):
        assert get(server, "/metrics").status == 200
    # No thread made; an earlier test's thread may still be ending, so not "== before".
    assert {t.native_id for t in threading.enumerate()} - before == set()


def test_pipelined_requests_are_answered_in_order(server: MetricsServer) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + b"GET /nope HTTP/1.1\r\n\r\n" * 2)
        s.shutdown(socket.SHUT_WR)  # answered all the same, then closed
        answer = b"".join(iter(lambda: s.recv(65536), b""))
    assert re.findall(rb"HTTP/1.1 (\d+) ", answer) == [b"200", b"404", b"404"]


def test_idle_and_half_sent_requests_hold_no_worker(server: MetricsServer) -> None:
    """Only whole request heads reach the workers: more silent and trickling clients than
    workers leave scrapes unaffected."""
    hold = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(3)]
    try:
        for s in hold[1:]:
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        assert WORKERS < 3 and get(server, "/metrics").status == 200  # 4 connections: the cap
    finally:
        for s in hold:
            s.close()


def test_a_trickled_request_head_is_cut_at_its_deadline_from_the_accept(
    server: MetricsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A byte every 0.2 s never trips the 1 s timeout between reads; the head's deadline
    (shortened here), counted from the accept, does: the silence before the first byte
    counts too."""
    monkeypatch.setattr(connections, "HEAD_DEADLINE_SECONDS", 1.5)
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        started = time.monotonic()
        time.sleep(0.8)
        with pytest.raises(OSError):
            for byte in b"GET /metrics HTTP/1.1\r\n" + b"X" * 100:
                s.sendall(bytes([byte]))
                time.sleep(0.2)
        assert 1.5 <= time.monotonic() - started < 2.3


def test_a_client_that_never_reads_is_cut_off_and_holds_up_no_one() -> None:
    big = CollectorRegistry()
    for i in range(200):
        Counter(f"c{i}", "A counter with a long help text. " * 20, registry=big).inc()
    s = MetricsServer(registry_render(big), "127.0.0.1", 0, connection_timeout=1.0)
    s.start()
    try:
        stuck = socket.socket()
        stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
        stuck.connect(("127.0.0.1", s.port))
        for _ in range(100):  # pipelined: answers that fill every buffer, never read
            stuck.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        assert get(s, "/metrics").status == 200
        deadline = time.monotonic() + 5
        while s._loop.connections:
            assert time.monotonic() < deadline, "the stuck connection was not cut off"
            time.sleep(0.05)
        stuck.close()
    finally:
        s.close()


def test_an_idle_server_is_never_woken() -> None:
    """No poll interval, no reaper: with no connection, its threads sleep until there is one
    (the third field of schedstat counts the times a thread ran)."""
    s = MetricsServer(registry_render(CollectorRegistry()), "127.0.0.1", 0)
    s.start()
    try:
        assert get(s, "/").status == 200
        deadline = time.monotonic() + 5
        while s._loop.connections:  # the keep-alive connection, closed by the client
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(0.2)
        threads = [t for t in s._loop._threads]
        before = [_runs(t) for t in threads]
        time.sleep(1.5)
        assert [_runs(t) for t in threads] == before
    finally:
        s.close()


def _runs(thread: threading.Thread) -> int:
    return int(Path(f"/proc/self/task/{thread.native_id}/schedstat").read_text().split()[2])


def test_an_address_not_on_any_interface_binds_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """IP_FREEBIND: at boot the configured address may not be up yet (tests/e2e/test_listen.py
    then adds it and scrapes it); a typo binds too, so it is said in the log."""
    s = MetricsServer(registry_render(CollectorRegistry()), "192.0.2.77", 0)  # TEST-NET-1
    try:
        assert s.address.startswith("192.0.2.77:")
    finally:
        s.close()
    (record,) = caplog.records
    assert record.levelname == "WARNING"
    assert record.getMessage().startswith("listen address 192.0.2.77 is not on any interface")


@pytest.mark.parametrize(
    ("host", "on_host"),
    [("127.0.0.1", True), ("127.0.0.2", True), ("0.0.0.0", True), ("192.0.2.77", False)],
)
def test_address_on_host(host: str, on_host: bool) -> None:
    assert address_on_host(socket.AF_INET, (host, 10057)) is on_host


def test_the_server_closes_promptly_with_a_slow_answer_in_flight() -> None:
    started = threading.Event()

    def slow(_accept: str) -> tuple[bytes, str]:
        started.set()
        time.sleep(0.2)
        return b"slow 1\n", "text/plain"

    s = MetricsServer(slow, "127.0.0.1", 0)
    s.start()
    with socket.create_connection(("127.0.0.1", s.port), timeout=5) as c:
        c.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        assert started.wait(5)
        t0 = time.monotonic()
        s.close()  # the answer in flight is still written in full
        assert time.monotonic() - t0 < 1.5
        answer = b"".join(iter(lambda: c.recv(65536), b""))
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"slow 1\n")


INFINITY = resource.RLIM_INFINITY


@pytest.mark.parametrize(
    ("soft", "hard", "expected"),
    [
        (1024, 524288, (1024 + RESERVED_DESCRIPTORS, 1024)),  # as systemd starts services
        (1024, 1024, (1024, 1024 - RESERVED_DESCRIPTORS)),  # a container's nofile=1024:1024
        (65536, 65536, (65536, 1024)),  # never lowered
        (1024, INFINITY, (1024 + RESERVED_DESCRIPTORS, 1024)),
        (INFINITY, INFINITY, (INFINITY, 1024)),
        (100, 100, (100, 1)),
    ],
)
def test_connection_cap_fits_the_open_files_limit(
    soft: int, hard: int, expected: tuple[int, int]
) -> None:
    assert connection_cap(1024, soft, hard) == expected


@pytest.mark.parametrize(
    ("data", "end"),
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET", 27),
        (b"GET / HTTP/1.1\n\n", 16),
        (b"GET / HTTP/1.1\r\n\r\n", 18),
        (b"GET / HTTP/1.1\r\nHost: x\r\n", -1),
        (b"GET /\r\n", 7),  # HTTP/0.9: no headers follow
        (b"\r\nGET", 2),
        (b"GET / HTTP/1.1", -1),
    ],
)
def test_head_end(data: bytes, end: int) -> None:
    assert connections.head_end(data) == end
