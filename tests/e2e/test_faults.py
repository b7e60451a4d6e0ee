"""Faults around the daemon: missing kernel pieces, vanishing config, signal storms."""

from __future__ import annotations

import http.client
import signal
import subprocess
import threading
import time
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.harness import (
    free_port,
    own_comm,
    procmond,
    start_daemon,
    unique_name,
    wait_until,
)


def test_tracefs_not_mounted_is_a_clear_error(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(f'listen: "127.0.0.1:{free_port()}"\n')
    script = 'umount /sys/kernel/tracing 2>/dev/null; exec "$@"'
    unmounted = ("unshare", "--mount", "--propagation", "private", "sh", "-c", script, "_")
    result = procmond("run", "--config", str(config), wrapper=unmounted)
    assert result.returncode == 70, result.stderr
    assert "tracefs is not mounted" in result.stderr
    assert "mount -t tracefs nodev /sys/kernel/tracing" in result.stderr
    assert "Traceback" not in result.stderr


def test_config_deleted_before_reload_keeps_the_old_one(tmp_path: Path) -> None:
    daemon = start_daemon(tmp_path)
    try:
        loaded = daemon.scrape().value("procmond_config_last_reload_success_timestamp_seconds")
        daemon.config_path.unlink()
        daemon.process.send_signal(signal.SIGHUP)
        log = daemon.wait_for_log("reload failed, keeping the running config")
        assert f"{daemon.config_path}: no such file" in log
        m = daemon.scrape()
        assert m.value("procmond_config_last_reload_successful") == 0
        assert m.value("procmond_config_last_reload_success_timestamp_seconds") == loaded
    finally:
        assert daemon.stop() == 0


def test_reload_storm_under_load_loses_nothing(tmp_path: Path, creator: Path) -> None:
    """100 SIGHUPs a second for ten seconds while a creator forks and we scrape."""
    daemon = start_daemon(tmp_path)
    name = unique_name("storm")
    labels = {"comm": name.decode(), "parent_comm": own_comm()}
    total = 20_000
    load = subprocess.Popen(
        [str(creator), "fork", str(total), name.hex()], stdout=subprocess.PIPE, text=True
    )
    seen: list[float] = []
    loaded = daemon.scrape().value("procmond_config_last_reload_success_timestamp_seconds")
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            for _ in range(10):
                daemon.process.send_signal(signal.SIGHUP)
                time.sleep(0.01)  # the storm's pace, not a wait for output
            seen.append(daemon.scrape().value("procmond_forks_total", **labels))
        out, _ = load.communicate(timeout=120)
        assert out.strip() == f"done {total}"
        final = daemon.scrape()
        assert final.value("procmond_forks_total", **labels) == total
        assert seen == sorted(seen), "a counter went backwards"
        assert final.value("procmond_config_last_reload_successful") == 1
        # it did reload (signals that arrive together may be handled as one)
        assert final.value("procmond_config_last_reload_success_timestamp_seconds") > loaded
        assert "reloaded config from" in daemon.log()
        assert daemon.process.poll() is None
    finally:
        load.kill()
        assert daemon.stop() == 0, daemon.log()


def test_sigterm_during_scrapes_never_gives_a_short_exposition(
    tmp_path: Path, creator: Path
) -> None:
    daemon = start_daemon(tmp_path, "max_entries: 20000\n")
    subprocess.run(
        [str(creator), "thread", "1", "--generate", "5000", unique_name("big").hex()],
        check=True,
        capture_output=True,
    )
    complete, cut = [], []
    stop = threading.Event()

    def scrape_forever() -> None:
        while not stop.is_set():
            try:
                conn = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=10)
                conn.request("GET", "/metrics")
                body = conn.getresponse().read()  # raises if shorter than Content-Length
                complete.append(body)
            except (OSError, http.client.HTTPException):
                cut.append(1)
                if daemon.process.poll() is not None:
                    return

    threads = [threading.Thread(target=scrape_forever) for _ in range(4)]
    for t in threads:
        t.start()
    wait_until(lambda: len(complete) >= 8, 30, "scrapes answered before SIGTERM")
    daemon.process.send_signal(signal.SIGTERM)
    assert daemon.process.wait(10) == 0, daemon.log()
    stop.set()
    for t in threads:
        t.join(15)
    assert complete, "no scrape completed before SIGTERM"
    for body in complete:  # every answer the client accepted is a whole exposition
        list(text_string_to_metric_families(body.decode()))
        assert body.endswith(b"\n")
        assert b"procmond_scrape_success" in body
        assert b"process_start_time_seconds" in body  # from the last collector registered
    print(f"{len(complete)} complete scrapes; the rest were refused or cut off by the exit")


def test_unreachable_notify_socket_is_a_warning_not_a_crash(tmp_path: Path) -> None:
    """A NOTIFY_SOCKET inherited from elsewhere (a container, a stale path) must not stop it."""
    absent = tmp_path / "no-such-socket"
    daemon = start_daemon(tmp_path, env={"NOTIFY_SOCKET": str(absent)})
    try:
        assert daemon.scrape().value("procmond_scrape_success") == 1
        warnings = [ln for ln in daemon.log().splitlines() if "NOTIFY_SOCKET" in ln]
        assert len(warnings) == 1 and "WARNING" in warnings[0], warnings
    finally:
        assert daemon.stop() == 0, daemon.log()
