"""procmond in a Debian 13 (trixie) userland on this host's kernel: the .deb built from this
tree installed with dpkg into a trixie root next to trixie's own BCC, Python and kernel
headers (none for the running kernel), then the daemon started from it. What a Debian 13
host does, short of its kernel: link-kernel-headers (run by the package's postinst) must
link the distribution's headers so that BCC compiles the probe, and the probe must then count
exactly. The root is made by tests/helpers/debian13-root.sh (mmdebstrap, cached) and used
through an overlay in a private mount namespace: nothing the test does reaches the cache or
the host, and every mount goes with the namespace when the daemon exits."""

from __future__ import annotations

import os
import subprocess
import time
import urllib.error
from pathlib import Path

import pytest

from tests.e2e.harness import REPO, Daemon, Exposition, free_port, run_creator, unique_name
from tests.packaging.shipped import build_deb

ROOT_SCRIPT = REPO / "tests" / "helpers" / "debian13-root.sh"

# Runs as the private mount namespace's first process: an overlay over the cached root,
# the host's /proc, /sys (tracefs, cgroups and BTF under it) and /dev inside, the .deb and
# the config put in, the package installed, then procmond in its place (exec: the Popen's pid
# is the daemon's).
CHROOT_SCRIPT = r"""
set -eu
lower=$1 scratch=$2 deb=$3 config=$4
root=$scratch/root
mkdir -p "$scratch/upper" "$scratch/work" "$root"
mount -t overlay overlay -o "lowerdir=$lower,upperdir=$scratch/upper,workdir=$scratch/work" \
    "$root"
mount -t proc proc "$root/proc"
mount --rbind /sys "$root/sys"
mount --rbind /dev "$root/dev"
cp "$deb" "$root/tmp/procmond.deb"
chroot "$root" dpkg -i /tmp/procmond.deb
cp "$config" "$root/etc/procmond/config.yaml"
exec chroot "$root" /usr/bin/procmond run --config /etc/procmond/config.yaml
"""


@pytest.fixture(scope="module")
def trixie_root() -> Path:
    """The cached Debian 13 root (made on first use: under a minute of mmdebstrap here)."""
    out = subprocess.run(
        [str(ROOT_SCRIPT)], capture_output=True, text=True, timeout=600, check=False
    )
    assert out.returncode == 0, out.stderr
    return Path(out.stdout.strip())


def package_version(root: Path, package: str) -> str:
    out = subprocess.run(
        ["chroot", str(root), "dpkg-query", "-W", "-f", "${Version}", package],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout


def exe_of(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:  # it has just exited: the caller's next poll says so
        return ""


def start_in_root(root: Path, tmp: Path) -> tuple[Daemon, float]:
    """procmond installed and started in an overlay of ``root``; with the seconds from its
    start (the .deb installed) to its first answered scrape."""
    port = free_port()
    config = tmp / "config.yaml"
    config.write_text(f'listen: "127.0.0.1:{port}"\n')
    log = tmp / "procmond.log"
    argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c", CHROOT_SCRIPT, "_"]
    argv += [str(root), str(tmp / "scratch"), str(build_deb()), str(config)]
    with log.open("wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    daemon = Daemon(process, port, log, config)
    started = None
    deadline = time.monotonic() + 120
    while True:
        if process.poll() is not None:
            raise AssertionError(f"exited {process.returncode}:\n{daemon.log()}")
        if started is None and "python" in exe_of(process.pid):
            started = time.monotonic()  # the package is installed, the daemon starts
        try:
            daemon.scrape()
            assert started is not None
            return daemon, time.monotonic() - started
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            if time.monotonic() > deadline:
                daemon.stop(9)
                raise AssertionError(f"not serving after 120 s:\n{daemon.log()}") from None
        time.sleep(0.01)


def test_debian13_userland_links_its_headers_compiles_and_counts_exactly(
    trixie_root: Path, tmp_path: Path, creator: Path
) -> None:
    """Debian 13 names its headers linux-headers-6.12.N+deb13-{cloud-amd64,common}: the
    common folder must be found from the flavour folder's Makefile (a version pattern that
    fits Debian 12's 6.1.0-N linked the flavour folder twice and BCC failed on
    include/linux/kconfig.h). Then the real probe, real forks, a real scrape."""
    bcc = package_version(trixie_root, "python3-bpfcc")
    daemon, ready_seconds = start_in_root(trixie_root, tmp_path)
    try:
        inside = Path(f"/proc/{daemon.process.pid}/root")
        assert (inside / "etc/debian_version").read_text().startswith("13"), "not Debian 13"
        modules = inside / "lib/modules" / os.uname().release
        flavour, common = os.readlink(modules / "build"), os.readlink(modules / "source")
        assert (inside / flavour.lstrip("/") / ".config").is_file(), flavour
        assert common != flavour
        assert (inside / common.lstrip("/") / "include/linux/kconfig.h").is_file(), common

        name = unique_name("d13")
        run_creator(creator, "fork", 2000, [name])
        scrape: Exposition = daemon.scrape()
        # exactly the forks made, under the creator's name and its parent's (this process):
        # the parent is read through the kernel's own layout, whatever the headers
        mine: dict[tuple[str, str], float] = {}
        for labels, v in scrape.series("procmond_forks_total").items():
            key = (dict(labels)["comm"], dict(labels)["parent_comm"])
            if key[0] == name.decode():
                mine[key] = mine.get(key, 0) + v
        assert mine == {(name.decode(), Path("/proc/self/comm").read_text().strip()): 2000}
        assert scrape.value("procmond_scrape_success") == 1
        lint = subprocess.run(
            ["promtool", "check", "metrics"],
            input=scrape.text,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert lint.returncode == 0, lint.stdout + lint.stderr
        ((info, _),) = scrape.series("procmond_build_info").items()
        # trixie's BCC ("0.31.0+ds-7" → 0.31.0) on the host's kernel
        assert dict(info)["bcc_version"] == bcc.split("+")[0].split("-")[0], (info, bcc)
        assert dict(info)["kernel"] == os.uname().release
        python = package_version(trixie_root, "python3")
        print(f"Debian 13: BCC {bcc}, Python {python}, serving {ready_seconds:.2f} s after start")
    finally:
        assert daemon.stop() == 0, daemon.log()
