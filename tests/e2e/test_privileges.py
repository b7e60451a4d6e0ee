"""The real daemon run by hand as root gives up every capability once the probe is loaded, and
keeps counting, reloading and stopping. tests/e2e/test_service.py checks the same under
systemd; tests/unit/test_privileges.py the decision on a fake kernel."""

from __future__ import annotations

import json
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.e2e.harness import (
    REPO,
    Daemon,
    Exposition,
    free_port,
    run_creator,
    start_daemon,
    unique_name,
)
from tests.e2e.tls import make_certs

CAP_BPF = 1 << 39
CAP_FIELDS = ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")


def capabilities(status_path: Path) -> dict[str, int]:
    fields = dict(line.split(":", 1) for line in status_path.read_text().splitlines())
    caps = {name: int(fields[name], 16) for name in CAP_FIELDS}
    caps["NoNewPrivs"] = int(fields["NoNewPrivs"])
    return caps


def wait_for_log(daemon: Daemon, text: str, count: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while daemon.log().count(text) < count:
        assert time.monotonic() < deadline, f"no {count}x {text!r} in the log:\n{daemon.log()}"
        time.sleep(0.05)


def reload(daemon: Daemon, config: str, outcome: str) -> None:
    """Rewrite the config, SIGHUP, and wait for ``outcome`` to appear once more in the log."""
    seen = daemon.log().count(outcome)
    daemon.config_path.write_text(config)
    daemon.process.send_signal(signal.SIGHUP)
    wait_for_log(daemon, outcome, seen + 1)


def free_privileged_port() -> int:
    for port in range(1023, 900, -1):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise AssertionError("no free port below 1024")


def scrape_url(url: str, context: ssl.SSLContext | None = None) -> Exposition:
    with urllib.request.urlopen(url, timeout=10, context=context) as response:
        return Exposition(response.read().decode())


def test_after_ready_every_thread_holds_no_capability_and_counts_stay_exact(
    daemon: Daemon, creator: Path
) -> None:
    pid = daemon.process.pid
    threads = list(Path(f"/proc/{pid}/task").iterdir())
    assert len(threads) > 1  # the HTTP threads too: capabilities belong to each thread
    for task in threads:
        caps = capabilities(task / "status")
        assert caps == dict.fromkeys(CAP_FIELDS, 0) | {"NoNewPrivs": 1}, (task, caps)
    assert "privileges: gave up every capability" in daemon.log()
    name = unique_name("cap")
    run_creator(creator, "fork", 20, [name])
    run_creator(creator, "thread", 7, [name])
    m = daemon.scrape()
    assert m.get("procmond_capabilities_retained") == 0
    assert m.value("procmond_scrape_success") == 1
    forks = m.series("procmond_forks_total")
    threads_created = m.series("procmond_threads_created_total")
    assert sum(v for labels, v in forks.items() if dict(labels)["comm"] == name.decode()) == 20
    assert (
        sum(v for labels, v in threads_created.items() if dict(labels)["comm"] == name.decode())
        == 7
    )


def test_reloads_work_without_capabilities_but_a_privileged_port_needs_a_restart(
    tmp_path: Path,
) -> None:
    daemon = start_daemon(tmp_path)
    base = daemon.config_path.read_text()
    try:
        # log_level: request lines are logged at debug
        reload(daemon, base + "log_level: debug\n", "reloaded config from")
        daemon.scrape()
        wait_for_log(daemon, '"GET /metrics HTTP/1.1" 200', 1)
        # web_config_file: TLS from the next connection on (the key file is read anew)
        certs = make_certs(tmp_path / "certs")
        web = tmp_path / "web.yml"
        web.write_text(
            f"tls_server_config:\n  cert_file: {certs.server_cert}\n"
            f"  key_file: {certs.server_key}\n"
        )
        reload(daemon, base + f"web_config_file: {web}\n", "reloaded config from")
        context = ssl.create_default_context(cafile=str(certs.ca))
        m = scrape_url(f"https://127.0.0.1:{daemon.port}/metrics", context)
        assert m.value("procmond_config_last_reload_successful") == 1
        # listen: a new unprivileged port is bound anew
        port = free_port()
        reload(daemon, f'listen: "127.0.0.1:{port}"\n', "reloaded config from")
        daemon.port = port
        assert daemon.scrape().get("procmond_capabilities_retained") == 0
        # a port below 1024 needs CAP_NET_BIND_SERVICE, which is gone: the old listener stays
        privileged = free_privileged_port()
        reload(daemon, f'listen: "127.0.0.1:{privileged}"\n', "reload failed")
        failed = [line for line in daemon.log().splitlines() if "reload failed" in line][-1]
        assert f"cannot listen on 127.0.0.1:{privileged}: Permission denied" in failed
        assert "restart procmond" in failed
        assert daemon.scrape().value("procmond_config_last_reload_successful") == 0
    finally:
        assert daemon.stop() == 0, daemon.log()
    assert "stopped: probes detached" in daemon.log()


FALLBACK = """
import ctypes, errno, json
from pathlib import Path
from procmond.kernel import privileges
from procmond.kernel.bpfmap import BPFMap

libbpf = ctypes.CDLL("libbpf.so.1")
fd = libbpf.bpf_map_create(1, b"fallback", 4, 8, 4, None)  # a hash map, one entry
assert fd >= 0 and libbpf.bpf_map_update_elem(
    fd, ctypes.byref(ctypes.c_uint32(1)), ctypes.byref(ctypes.c_uint64(42)), 0
) == 0
table = BPFMap(fd)
effective_at_reads = []

def read_map():
    effective = privileges.LinuxCapabilities().get().effective
    effective_at_reads.append(effective)
    if not effective >> 39 & 1:  # as kernels before 6.5 do with unprivileged_bpf_disabled
        raise PermissionError(errno.EPERM, "Operation not permitted")
    return table.items()

result = privileges.drop_all(read_map)
reads = list(effective_at_reads)
status = Path("/proc/self/status").read_text()
print(json.dumps({
    "retained": result.retained,
    "reads": reads,
    "rows": len(read_map()),
    "retained_count": privileges.retained_count(),
    "status": status,
}))
"""


def test_a_kernel_that_needs_cap_bpf_to_read_maps_leaves_it_cap_bpf_only(tmp_path: Path) -> None:
    """Real capset() calls in a child process whose map reads are refused without CAP_BPF."""
    out = subprocess.run(
        [sys.executable, "-c", FALLBACK],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=30,
        check=True,
    )
    result = json.loads(out.stdout)
    assert result["retained"] == ["CAP_BPF"]
    assert result["reads"] == [0, CAP_BPF]  # refused with nothing effective, then CAP_BPF alone
    assert result["rows"] == 1 and result["retained_count"] == 1
    status = tmp_path / "status"
    status.write_text(result["status"])
    caps = capabilities(status)
    assert caps == {
        "CapInh": 0,
        "CapPrm": CAP_BPF,
        "CapEff": CAP_BPF,
        "CapBnd": 0,
        "CapAmb": 0,
        "NoNewPrivs": 1,
    }
    assert "privileges: kept CAP_BPF, gave up the rest" in out.stderr
