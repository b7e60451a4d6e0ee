"""procmond as a packaged systemd service, under a real systemd (PID 1 of private namespaces).

One sandbox for the module: the .deb built from this tree is installed with apt-get inside it
(on Debian's own python3-prometheus-client), then driven with systemctl as an operator would.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.bpf_objects import snapshot
from tests.e2e.harness import Exposition, unique_name
from tests.e2e.systemd_sandbox import SystemdSandbox
from tests.packaging.shipped import build_deb

CAP_BPF_AND_PERFMON = (1 << 39) | (1 << 38)


@pytest.fixture(scope="module")
def deb() -> Path:
    return build_deb()


@pytest.fixture(scope="module")
def box(
    tmp_path_factory: pytest.TempPathFactory, deb: Path, creator: Path
) -> Iterator[SystemdSandbox]:
    sandbox = SystemdSandbox(tmp_path_factory.mktemp("systemd"))
    sandbox.start()
    try:
        sandbox.put(deb, f"/root/{deb.name}")
        sandbox.put(creator, "/usr/local/bin/creator")
        sandbox.run("apt-get", "install", "-y", f"/root/{deb.name}", timeout=120)
        yield sandbox
    finally:
        sandbox.stop()


def show(box: SystemdSandbox, *props: str) -> dict[str, str]:
    out = box.run("systemctl", "show", "procmond", "-p", ",".join(props)).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def scrape(box: SystemdSandbox) -> Exposition:
    code = (
        "import urllib.request;"
        "print(urllib.request.urlopen('http://127.0.0.1:10057/metrics', timeout=10)"
        ".read().decode(), end='')"
    )
    return Exposition(box.run("python3", "-c", code).stdout)


def create(box: SystemdSandbox, mode: str, count: int, name: bytes) -> None:
    box.run("creator", mode, str(count), name.hex())


def wait_for(predicate, timeout: float, what: str) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if predicate():
            return time.monotonic() - started
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def test_package_installs_its_man_page_rules_and_dashboard(box: SystemdSandbox) -> None:
    assert box.run("man", "-w", "procmond").stdout.strip() == "/usr/share/man/man8/procmond.8.gz"
    page = box.run("env", "MANWIDTH=80", "man", "--warnings", "procmond")
    assert page.stderr == "" and "procmond run" in page.stdout, page.stderr
    for path in (
        "/usr/share/procmond/prometheus/procmond.rules.yml",
        "/usr/share/procmond/prometheus/README.md",
        "/usr/share/procmond/grafana/procmond.json",
        "/usr/share/doc/procmond/changelog.Debian.gz",
    ):
        assert box.path(path).is_file(), path
    # every installed file as packaged (md5sums)
    assert box.run("dpkg", "--verify", "procmond").stdout == ""


def test_enable_now_serves_real_counts(box: SystemdSandbox) -> None:
    box.run("systemctl", "enable", "--now", "procmond", timeout=60)
    props = show(
        box,
        "ActiveState",
        "SubState",
        "StatusText",
        "MainPID",
        "ExecMainStartTimestampMonotonic",
        "ActiveEnterTimestampMonotonic",
    )
    assert props["ActiveState"] == "active", props
    assert re.match(
        r"5/5 probes attached; serving http://\S+:10057/metrics; no scrape yet$",
        props["StatusText"],
    ), props
    ready = (
        int(props["ActiveEnterTimestampMonotonic"]) - int(props["ExecMainStartTimestampMonotonic"])
    ) / 1e6
    print(f"start -> READY under systemd: {ready:.2f} s")
    name = unique_name("svc")
    create(box, "fork", 25, name)
    m = scrape(box)
    assert (
        sum(
            v
            for labels, v in m.series("procmond_forks_total").items()
            if dict(labels)["comm"] == name.decode()
        )
        == 25
    )
    # least privilege, as the kernel sees it
    status = box.read_text(f"/proc/{props['MainPID']}/status")
    fields = dict(line.split(":\t", 1) for line in status.splitlines())
    # CAP_BPF and CAP_PERFMON were for the loader child; the daemon gave them up after it
    assert [int(fields[f], 16) for f in ("CapEff", "CapPrm", "CapInh", "CapAmb")] == [0] * 4
    assert scrape(box).get("procmond_capabilities_retained") == 0
    assert int(fields["CapBnd"], 16) == CAP_BPF_AND_PERFMON
    assert fields["NoNewPrivs"].strip() == "1"
    assert fields["Seccomp"].strip() == "2"


def test_a_transient_unit_is_named(box: SystemdSandbox) -> None:
    """`systemd-run --unit=...`: its forks count under that unit, exactly."""
    unit, name = f"pm-run-{unique_name().hex()[:8]}", unique_name("run")
    box.run(
        "systemd-run",
        "--wait",
        "--quiet",
        f"--unit={unit}",
        "creator",
        "fork",
        "33",
        name.hex(),
        timeout=60,
    )
    forks = {
        dict(labels)["unit"]: v
        for labels, v in scrape(box).series("procmond_forks_total").items()
        if dict(labels)["comm"] == name.decode()
    }
    assert forks == {f"{unit}.service": 33}


def test_journal_has_the_daemons_lines(box: SystemdSandbox) -> None:
    out = box.run("journalctl", "-u", "procmond", "-o", "cat", "--no-pager").stdout
    started = [line for line in out.splitlines() if "probes attached" in line]
    assert started and started[-1].startswith("INFO procmond ")  # journald adds the time


def test_reload_good_then_bad(box: SystemdSandbox) -> None:
    name = unique_name("rld")
    create(box, "fork", 5, name)
    pid = show(box, "MainPID")["MainPID"]
    good = box.read_text("/etc/procmond/config.yaml").replace("log_level: info", "log_level: debug")
    box.write_text("/etc/procmond/config.yaml", good)
    box.run("systemctl", "reload", "procmond")
    wait_for(lambda: show(box, "SubState")["SubState"] == "running", 10, "reload to finish")
    create(box, "fork", 5, name)
    m = scrape(box)
    assert m.value("procmond_config_last_reload_successful") == 1
    assert (
        sum(
            v
            for labels, v in m.series("procmond_forks_total").items()
            if dict(labels)["comm"] == name.decode()
        )
        == 10
    )  # counters kept going
    box.write_text("/etc/procmond/config.yaml", good + "max_entries: -3\n")
    box.run("systemctl", "reload", "procmond")
    time.sleep(0.5)
    props = show(box, "ActiveState", "MainPID")
    assert props == {"ActiveState": "active", "MainPID": pid}
    assert scrape(box).value("procmond_config_last_reload_successful") == 0
    journal = box.run("journalctl", "-u", "procmond", "-o", "cat", "--no-pager").stdout
    failed = [line for line in journal.splitlines() if "reload failed" in line]
    assert len(failed) == 1 and "max_entries: must be from 1" in failed[0], failed
    box.write_text("/etc/procmond/config.yaml", good)
    box.run("systemctl", "reload", "procmond")


def test_hung_daemon_is_restarted_by_the_watchdog(box: SystemdSandbox) -> None:
    box.write_text(
        "/etc/systemd/system/procmond.service.d/watchdog.conf",
        "[Service]\nWatchdogSec=2\nTimeoutAbortSec=2\n",
    )
    box.run("systemctl", "daemon-reload")
    box.run("systemctl", "restart", "procmond", timeout=60)
    first = show(box, "MainPID", "NRestarts")
    time.sleep(3)  # alive: it pings every second, so nothing happens
    assert show(box, "MainPID", "NRestarts") == first
    scrape(box)  # STATUS= follows at the scrape
    wait_for(
        lambda: re.search(
            r"; \d+ series at the last scrape$", show(box, "StatusText")["StatusText"]
        ),
        5,
        "STATUS to report the series of the last scrape",
    )
    box.run("kill", "-STOP", first["MainPID"])
    took = wait_for(
        lambda: show(box, "NRestarts")["NRestarts"] != first["NRestarts"],
        30,
        "the watchdog to restart procmond",
    )
    wait_for(lambda: show(box, "ActiveState")["ActiveState"] == "active", 30, "restart")
    print(f"hung daemon restarted after {took:.1f} s")
    assert show(box, "MainPID")["MainPID"] != first["MainPID"]
    assert scrape(box).value("procmond_probe_attached", probe="task_newtask") == 1
    box.run("rm", "/etc/systemd/system/procmond.service.d/watchdog.conf")
    box.run("systemctl", "daemon-reload")


def test_restart_mid_load_misses_nothing_and_stop_unpins(
    box: SystemdSandbox, creator: Path
) -> None:
    """`systemctl restart` keeps the probe (pinned in the sandbox's own bpffs): a steady load
    through it is counted whole; `systemctl stop` then leaves nothing pinned or loaded."""
    box.run("systemctl", "stop", "procmond")
    # this test's lines only: --since has whole seconds, so let the second of the stop pass
    time.sleep(1.1)
    since = box.run("date", "+%Y-%m-%d %H:%M:%S").stdout.strip()
    box.run("systemctl", "start", "procmond")
    name = unique_name("rs")
    load = subprocess.Popen(
        [str(creator), "fork", "2400", "--rate", "800", name.hex()], stdout=subprocess.PIPE
    )
    try:
        time.sleep(1)
        before = forks_of(scrape(box), name)
        box.run("systemctl", "restart", "procmond")
        journal = box.run("journalctl", "-u", "procmond", "-o", "cat", "--since", since).stdout
        assert forks_of(scrape(box), name) >= before > 0, journal
        out, _ = load.communicate(timeout=60)
    finally:
        if load.poll() is None:
            load.kill()
    assert out.split()[-1] == b"2400", out
    assert forks_of(scrape(box), name) == 2400
    journal = box.run("journalctl", "-u", "procmond", "-o", "cat", "--since", since).stdout
    assert "adopted the probe pinned at /sys/fs/bpf/procmond/" in journal
    # pinned, and its counts saved in StateDirectory, with no warning (the host's own fork
    # storms, which the daemon reports as it should, are not this test's)
    warnings = [
        line
        for line in journal.splitlines()
        if line.startswith("WARNING") and not line.startswith("WARNING fork storm:")
    ]
    assert warnings == [], journal
    assert list(box.path("/var/lib/procmond").glob("state-*.json"))
    # A crash keeps the probe counting; systemd's restart adopts it.
    restarts = show(box, "NRestarts")["NRestarts"]
    box.run("systemctl", "kill", "-s", "KILL", "procmond")
    wait_for(lambda: show(box, "NRestarts")["NRestarts"] != restarts, 30, "a restart")
    wait_for(lambda: show(box, "ActiveState")["ActiveState"] == "active", 30, "active again")
    journal = box.run("journalctl", "-u", "procmond", "-o", "cat", "--since", since).stdout
    assert journal.count("adopted the probe pinned at") == 2, journal
    mine = probe_objects(box)
    assert mine[0] and mine[1]
    box.run("systemctl", "stop", "procmond")
    assert not box.path("/sys/fs/bpf/procmond").exists()
    deadline = time.monotonic() + 10  # freeing waits for RCU
    while (alive := (mine[0] & snapshot()[0]) | (mine[1] & snapshot()[1])) and (
        time.monotonic() < deadline
    ):
        time.sleep(0.1)
    assert alive == set()
    box.run("systemctl", "start", "procmond")


def probe_objects(box: SystemdSandbox) -> tuple[set[int], set[int]]:
    """Ids of the maps and programs the running daemon holds (its fdinfo, seen from the host)."""
    pid = show(box, "MainPID")["MainPID"]
    maps, progs = set(), set()
    for info in box.path(f"/proc/{pid}/fdinfo").iterdir():
        text = info.read_text()
        maps |= {int(x) for x in re.findall(r"^map_id:\s+(\d+)", text, re.M)}
        progs |= {int(x) for x in re.findall(r"^prog_id:\s+(\d+)", text, re.M)}
    return maps, progs


def forks_of(m: Exposition, name: bytes) -> float:
    series = m.series("procmond_forks_total")
    return sum(v for labels, v in series.items() if dict(labels)["comm"] == name.decode())


def test_stop_is_prompt_and_clean(box: SystemdSandbox) -> None:
    started = time.monotonic()
    box.run("systemctl", "stop", "procmond")
    took = time.monotonic() - started
    props = show(box, "ActiveState", "Result", "ExecMainStatus")
    assert props == {"ActiveState": "inactive", "Result": "success", "ExecMainStatus": "0"}
    assert took < 1.0, took
    print(f"systemctl stop: {took:.2f} s")


def test_without_bcrypt_basic_auth_is_a_config_error_naming_the_package(
    box: SystemdSandbox,
) -> None:
    """bcrypt is only recommended: removing it keeps procmond installed, and a web config
    with basic_auth_users is then refused (exit 78) with the package to install."""
    box.run("apt-get", "remove", "-y", "python3-bcrypt", timeout=120)
    status = box.run("dpkg-query", "-W", "-f=${Status}", "procmond").stdout
    assert status == "install ok installed", status
    hashed = "$2y$10$" + "a" * 53
    box.write_text("/etc/procmond/web.yml", f"basic_auth_users:\n  prometheus: '{hashed}'\n")
    box.write_text("/root/auth.yaml", "web_config_file: /etc/procmond/web.yml\n")
    result = box.run("procmond", "check-config", "/root/auth.yaml", check=False)
    assert result.returncode == 78, result.stdout + result.stderr
    assert "bcrypt module, which is not installed" in result.stderr, result.stderr
    assert "apt-get install python3-bcrypt" in result.stderr, result.stderr


def test_remove_and_purge_leave_nothing(box: SystemdSandbox) -> None:
    box.run("systemctl", "start", "procmond")
    listed = box.run("dpkg", "-L", "procmond").stdout.split()
    box.run("apt-get", "purge", "-y", "procmond", timeout=120)
    assert box.run("dpkg", "-s", "procmond", check=False).returncode != 0
    leftovers = [
        p
        for p in listed
        if p.startswith(
            ("/etc/procmond", "/usr/lib/python3/dist-packages/procmond", "/usr/lib/procmond")
        )
        and box.path(p).exists()
    ]
    assert leftovers == []
    for path in (
        "/etc/procmond",
        "/var/lib/procmond",
        "/lib/systemd/system/procmond.service",
        "/usr/bin/procmond",
    ):
        assert not box.path(path).exists(), path
    units = json.loads(box.run("systemctl", "list-units", "--all", "--output=json").stdout)
    assert not [u for u in units if u["unit"].startswith("procmond")]
    assert box.run("pgrep", "-f", "procmond run", check=False).returncode == 1


def test_package_has_no_world_writable_files(deb: Path) -> None:
    listing = subprocess.run(
        ["dpkg-deb", "-c", str(deb)], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert listing
    for line in listing:
        mode, owner = line.split()[:2]
        assert mode[8] != "w", line  # "-rw-r--r--": the other-write bit
        assert owner == "root/root", line
