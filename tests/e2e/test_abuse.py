"""Hostile HTTP clients against the real daemon: it keeps serving and stays bounded. Open
connections are counted by the daemon's descriptors: it makes no thread for them."""

from __future__ import annotations

import http.client
import os
import resource
import socket
import time
import urllib.error
from pathlib import Path

from procmond.web.connections import HEAD_DEADLINE_SECONDS, WORKERS
from tests.e2e.drip import Drip, raise_open_files_limit
from tests.e2e.harness import PROCMOND, Daemon, start_daemon, unique_name
from tests.e2e.prom_harness import JOB, start_prometheus


def proc_status(daemon: Daemon) -> dict[str, str]:
    text = Path(f"/proc/{daemon.process.pid}/status").read_text()
    return {k: v.strip() for k, v in (line.split(":", 1) for line in text.splitlines())}


def threads(daemon: Daemon) -> int:
    return int(proc_status(daemon)["Threads"])


def descriptors(daemon: Daemon) -> int:
    return len(os.listdir(f"/proc/{daemon.process.pid}/fd"))


def rss_kib(daemon: Daemon) -> int:
    return int(proc_status(daemon)["VmRSS"].split()[0])


def timed_scrape(daemon: Daemon) -> float:
    started = time.monotonic()
    daemon.scrape()
    return time.monotonic() - started


def raw_request(daemon: Daemon, payload: bytes, timeout: float = 10) -> bytes:
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=timeout) as s:
        s.sendall(payload)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


def wait_descriptors_at_most(daemon: Daemon, limit: int, timeout: float) -> float:
    started = time.monotonic()
    while descriptors(daemon) > limit:
        assert time.monotonic() - started < timeout, f"{descriptors(daemon)} descriptors remain"
        time.sleep(0.2)
    return time.monotonic() - started


def test_idle_and_slowloris_clients_do_not_stop_scrapes(daemon: Daemon) -> None:
    baseline, baseline_threads = descriptors(daemon), threads(daemon)
    idle = [socket.create_connection(("127.0.0.1", daemon.port)) for _ in range(500)]
    slow = [socket.create_connection(("127.0.0.1", daemon.port)) for _ in range(50)]
    try:
        for s in slow:
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        latencies = [timed_scrape(daemon) for _ in range(5)]
        print(f"scrape with 550 hostile connections open: max {max(latencies) * 1000:.0f} ms")
        assert max(latencies) < 1.0
        assert descriptors(daemon) >= baseline + 550  # they were all accepted
        assert threads(daemon) == baseline_threads  # and hold no thread
        # keep trickling, one header byte at a time: the per-read timeout never fires, the
        # request deadline does
        for s in idle:
            s.close()
        deadline = time.monotonic() + 40
        alive = list(slow)
        while alive and time.monotonic() < deadline:
            for s in list(alive):
                try:
                    s.sendall(b"X")
                except OSError:
                    alive.remove(s)
            time.sleep(2)
        assert alive == [], f"{len(alive)} trickling connections still open after 40 s"
    finally:
        for s in idle + slow:
            s.close()
    wait_descriptors_at_most(daemon, baseline, 15)
    assert timed_scrape(daemon) < 1.0


DRIPPING = 1_100  # more than the daemon's 1,024-connection cap
ATTACK_SECONDS = 25


def test_slow_clients_never_lock_out_scrapes(tmp_path: Path) -> None:
    """Slowloris: 1,100 connections that each send a header line every 2 s (and reconnect
    when closed) hold the connection cap. A scrape every second on a new connection, and a
    real Prometheus that first connects during the attack, must all succeed: at the cap the
    daemon closes the oldest connection that has not sent a whole request, and no request
    head may take longer than its deadline, however it trickles in. The daemon starts with
    the soft open-files limit systemd gives services (1024): it must not run out of
    descriptors before its cap."""
    limits = raise_open_files_limit(DRIPPING + 512)
    (tmp_path / "daemon").mkdir()
    (tmp_path / "prometheus").mkdir()
    as_systemd_starts_it = ["prlimit", f"--nofile=1024:{limits[1]}", *PROCMOND]
    daemon = start_daemon(tmp_path / "daemon", command=as_systemd_starts_it)
    drip = Drip(daemon.port, DRIPPING)
    prometheus = None
    try:
        drip.start()
        attack_started = time.monotonic()
        prometheus = start_prometheus(tmp_path / "prometheus", [f"127.0.0.1:{daemon.port}"], [])
        attempted, failures = 0, []
        while (started := time.monotonic()) - attack_started < ATTACK_SECONDS:
            attempted += 1
            try:
                daemon.scrape()
            except (OSError, urllib.error.URLError, http.client.HTTPException) as exc:
                failures.append(repr(exc))
            time.sleep(max(0.0, started + 1 - time.monotonic()))
        window = int(time.monotonic() - attack_started)
        ups = prometheus.query(f'up{{job="{JOB}"}}[{window}s]')
        print(
            f"drip attack ({DRIPPING} connections, {drip.opened} opened in all): "
            f"{attempted - len(failures)}/{attempted} scrapes succeeded; longest-lived "
            f"dripping connection {max(drip.lifetimes, default=0):.1f} s"
        )
        samples = [value for _, value in ups[0]["values"]] if ups else []
        print(f"Prometheus during the attack: up == 1 in {samples.count('1')}/{len(samples)}")
        assert failures == [], f"{len(failures)}/{attempted} scrapes failed: {failures[:3]}"
        assert samples.count("1") == len(samples) >= ATTACK_SECONDS - 10, samples
        drip.stop_reopening()
        took = drip.wait_all_closed(HEAD_DEADLINE_SECONDS + 5)
        print(f"the last dripping connections were closed {took:.1f} s after the attack")
        assert drip.lifetimes and max(drip.lifetimes) < HEAD_DEADLINE_SECONDS + 3
        assert "Too many open files" not in daemon.log()
    finally:
        drip.close()
        prometheus_rc = prometheus.stop() if prometheus is not None else 0
        assert daemon.stop() == 0, daemon.log()
        resource.setrlimit(resource.RLIMIT_NOFILE, limits)
    assert prometheus_rc == 0, prometheus.log()


def test_malformed_and_oversized_requests_get_errors(daemon: Daemon) -> None:
    rss_before = rss_kib(daemon)
    cases = {
        b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc": b" 501 ",
        b"BREW /metrics HTTP/1.1\r\nHost: x\r\n\r\n": b" 501 ",
        b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\n\r\n": b" 431 ",
        b"GET /metrics HTTP/1.1\r\n" + b"X-Big: " + b"b" * 20_000 + b"\r\n\r\n": b" 431 ",
        b"GET /metrics HTTP/1.1\r\n" + b"X-Many: y\r\n" * 2_000 + b"\r\n": b" 431 ",
        b"GET /metrics HTTP/9.9\r\n\r\n": b" 505 ",
        b"\x00\x01\x02\xff garbage\r\n\r\n": b"400",
        b"GET\r\n\r\n": b"400",
    }
    for _ in range(20):  # repeated, so a leak would show in RSS
        for payload, expected in cases.items():
            answer = raw_request(daemon, payload)
            assert expected in answer.split(b"\r\n", 1)[0] or expected in answer, payload[:40]
    assert timed_scrape(daemon) < 1.0
    assert rss_kib(daemon) - rss_before < 5_000


def test_a_client_that_never_reads_is_cut_off(daemon: Daemon) -> None:
    baseline = descriptors(daemon)
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    s.connect(("127.0.0.1", daemon.port))
    try:
        for _ in range(200):  # pipelined requests whose answers fill every buffer
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        assert timed_scrape(daemon) < 1.0  # others are not held up meanwhile
        took = wait_descriptors_at_most(daemon, baseline, 45)
        print(f"non-reading client cut off after {took:.1f} s")
    finally:
        s.close()


RENAME = """
import ctypes, os
if not os.environ.get("PROCMOND_TEST_RENAMED"):  # the daemon, not its loader child
    os.environ["PROCMOND_TEST_RENAMED"] = "1"
    ctypes.CDLL(None).prctl(15, os.environ["PROCMOND_TEST_COMM"].encode(), 0, 0, 0)
"""


def test_scrapes_make_no_thread_in_the_daemon(tmp_path: Path) -> None:
    """procmond counts its own thread creations too: a thread per scrape was noise in the
    metric it serves. The daemon runs under a command name of its own (PR_SET_NAME before
    anything else runs, inherited by each thread it makes), so its count is exact."""
    (tmp_path / "sitecustomize.py").write_text(RENAME)
    comm = unique_name("thr").decode()
    env = {"PYTHONPATH": str(tmp_path), "PROCMOND_TEST_COMM": comm}
    # One container runtime's state to watch, the others absent: one watcher thread, on any
    # host, whatever runtimes it has
    docker = tmp_path / "docker"
    docker.mkdir()
    runtimes = (
        f"docker_root: {docker}\n"
        f"containers_storage_root: {tmp_path / 'none'}\n"
        f"containerd_state: {tmp_path / 'none'}\n"
        f"nerdctl_root: {tmp_path / 'none'}\n"
    )
    daemon = start_daemon(tmp_path, runtimes, env=env)
    try:
        assert Path(f"/proc/{daemon.process.pid}/comm").read_text().strip() == comm

        def made() -> float:
            created = daemon.scrape().series("procmond_threads_created_total")
            return sum(v for labels, v in created.items() if dict(labels)["comm"] == comm)

        at_start = made()
        # the connection loop, its workers, the storm monitor (storm_threshold is on) and the
        # container runtimes' state watcher
        assert at_start == 1 + WORKERS + 1 + 1
        for _ in range(50):
            daemon.scrape()  # a new connection each
        assert made() == at_start
    finally:
        assert daemon.stop() == 0, daemon.log()
