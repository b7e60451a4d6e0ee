"""packaging/debian/link-kernel-headers on the header layouts of the distributions it serves,
laid out in a private mount namespace over /usr/src and /lib/modules: the script runs as
shipped, on the real paths, and what it links is read back from inside.

Debian's layouts are as its packages make them (Debian 12 read on the test machines, Debian 13
in the root tests/e2e/test_debian13.py runs procmond in). Ubuntu's archive is not reachable
where these tests run: its layout here is Ubuntu's documented one (the flavour folder's
Makefile is a link into the common folder, whose name differs for HWE kernels)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.packaging.shipped import REPO

SCRIPT = REPO / "packaging" / "debian" / "link-kernel-headers"
RELEASE = os.uname().release

IN_NAMESPACE = r"""
set -eu
src=$1 state=$2 script=$3
mount --bind "$src" /usr/src
mount -t tmpfs modules /lib/modules
PROCMOND_STATE_DIR=$state "$script"
echo "build $(readlink "/lib/modules/$(uname -r)/build")"
echo "source $(readlink "/lib/modules/$(uname -r)/source")"
"""


def debian(src: Path, flavour: str, common: str) -> None:
    """Debian: the flavour folder's Makefile includes the common folder's by absolute path."""
    (src / flavour).mkdir()
    (src / flavour / ".config").write_text("CONFIG_BPF=y\n")
    (src / flavour / "Makefile").write_text(f"include /usr/src/{common}/Makefile\n")
    (src / common / "include/linux").mkdir(parents=True)
    (src / common / "include/linux/kconfig.h").write_text("")
    (src / common / "Makefile").write_text("VERSION = 6\n")


def ubuntu(src: Path, flavour: str, common: str) -> None:
    """Ubuntu: the flavour folder's Makefile (like most of its files) is a relative link."""
    (src / flavour).mkdir()
    (src / flavour / ".config").write_text("CONFIG_BPF=y\n")
    (src / flavour / "Makefile").symlink_to(f"../{common}/Makefile")
    (src / common / "include/linux").mkdir(parents=True)
    (src / common / "Makefile").write_text("VERSION = 6\n")


def link(tmp_path: Path, src: Path) -> tuple[dict[str, str], str]:
    """Run the script over ``src`` as /usr/src; the links it made and its messages."""
    state = tmp_path / "state"
    argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c", IN_NAMESPACE, "_"]
    out = subprocess.run(
        [*argv, str(src), str(state), str(SCRIPT)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    links = dict(line.split(" ", 1) for line in out.stdout.splitlines())
    recorded = (state / "kernel-header-links").read_text().split()
    assert recorded == [f"/lib/modules/{RELEASE}/build", f"/lib/modules/{RELEASE}/source"]
    return links, out.stderr


LAYOUTS = {
    "debian12": (debian, "linux-headers-6.1.0-57-cloud-amd64", "linux-headers-6.1.0-57-common"),
    "debian13": (
        debian,
        "linux-headers-6.12.117+deb13-cloud-amd64",
        "linux-headers-6.12.117+deb13-common",
    ),
    "debian13-arm64": (
        debian,
        "linux-headers-6.12.117+deb13-arm64",
        "linux-headers-6.12.117+deb13-common",
    ),
    "ubuntu": (ubuntu, "linux-headers-6.8.0-49-generic", "linux-headers-6.8.0-49"),
    "ubuntu-hwe": (ubuntu, "linux-headers-6.8.0-49-generic", "linux-hwe-6.8-headers-6.8.0-49"),
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_source_is_the_common_folder_the_flavour_folder_names(tmp_path: Path, layout: str) -> None:
    make, flavour, common = LAYOUTS[layout]
    src = tmp_path / "src"
    src.mkdir()
    make(src, flavour, common)
    links, _ = link(tmp_path, src)
    assert links == {"build": f"/usr/src/{flavour}", "source": f"/usr/src/{common}"}


def test_after_an_upgrade_the_newest_headers_with_their_own_common_folder(
    tmp_path: Path,
) -> None:
    """Debian 12 → 13 leaves the old headers installed until autoremove: the newest win."""
    src = tmp_path / "src"
    src.mkdir()
    debian(src, "linux-headers-6.1.0-57-cloud-amd64", "linux-headers-6.1.0-57-common")
    debian(src, "linux-headers-6.12.117+deb13-cloud-amd64", "linux-headers-6.12.117+deb13-common")
    links, _ = link(tmp_path, src)
    assert links == {
        "build": "/usr/src/linux-headers-6.12.117+deb13-cloud-amd64",
        "source": "/usr/src/linux-headers-6.12.117+deb13-common",
    }


def test_a_missing_common_folder_is_said_and_the_flavour_folder_serves(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    flavour = "linux-headers-6.12.117+deb13-cloud-amd64"
    (src / flavour).mkdir()
    (src / flavour / "Makefile").write_text(
        "include /usr/src/linux-headers-6.12.117+deb13-common/Makefile\n"
    )
    links, messages = link(tmp_path, src)
    assert links == {"build": f"/usr/src/{flavour}", "source": f"/usr/src/{flavour}"}
    assert "linux-headers-6.12.117+deb13-common, which is missing" in messages
