"""The .deb as built from this tree: what it installs, its control fields, its changelog and
manual page, and that apt resolves its dependencies on Debian for amd64 and arm64.

Installing it under a real systemd is tests/e2e/test_service.py.
"""

from __future__ import annotations

import gzip
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from procmond import __version__
from procmond.cli import build_parser
from tests.packaging.shipped import (
    CHANGELOG,
    DASHBOARD,
    MAN_PAGE,
    REPO,
    RULES,
    build_deb,
)

SHIPPED = {
    "usr/share/procmond/prometheus/procmond.rules.yml": RULES,
    "usr/share/procmond/prometheus/README.md": RULES.parent / "README.md",
    "usr/share/procmond/grafana/procmond.json": DASHBOARD,
}
GZIPPED = {
    "usr/share/man/man8/procmond.8.gz": MAN_PAGE,
    "usr/share/doc/procmond/changelog.Debian.gz": CHANGELOG,
}


@pytest.fixture(scope="module")
def deb() -> Path:
    return build_deb()


@pytest.fixture(scope="module")
def unpacked(deb: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("deb")
    subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    return root


def field(deb: Path, name: str) -> str:
    result = subprocess.run(
        ["dpkg-deb", "-f", str(deb), name], capture_output=True, text=True, check=True
    )
    return result.stdout.strip()


def changelog(name: str) -> str:
    result = subprocess.run(
        ["dpkg-parsechangelog", "-l", str(CHANGELOG), "-S", name],
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.strip()


def test_it_ships_the_rules_dashboard_man_page_and_changelog(deb: Path, unpacked: Path) -> None:
    listing = subprocess.run(
        ["dpkg-deb", "-c", str(deb)], capture_output=True, text=True, check=True
    ).stdout
    paths = {line.split()[-1].removeprefix("./") for line in listing.splitlines()}
    assert set(SHIPPED) | set(GZIPPED) <= paths, set(SHIPPED) | set(GZIPPED) - paths
    for inside, source in SHIPPED.items():
        assert (unpacked / inside).read_bytes() == source.read_bytes(), inside
    for inside, source in GZIPPED.items():
        packed = (unpacked / inside).read_bytes()
        assert gzip.decompress(packed) == source.read_bytes(), inside
        # gzip -9n, as lintian wants: no name and no time stamp in the header (reproducible)
        assert packed[3] & 0x08 == 0 and packed[4:8] == b"\0\0\0\0", inside


def test_it_ships_every_module_of_the_package(unpacked: Path) -> None:
    """Subpackages too (procmond/naming/): a module left out breaks the installed daemon."""
    source = Path(__file__).resolve().parents[2] / "procmond"
    installed = unpacked / "usr/lib/python3/dist-packages/procmond"
    modules = sorted(p.relative_to(source) for p in source.rglob("*.py"))
    assert modules and all((installed / m).is_file() for m in modules), [
        str(m) for m in modules if not (installed / m).is_file()
    ]


def test_control_fields(deb: Path) -> None:
    assert field(deb, "Version") == changelog("Version")
    assert field(deb, "Architecture") == "all"
    maintainer = field(deb, "Maintainer")
    assert maintainer == changelog("Maintainer")
    assert re.fullmatch(r"[^<>]+ <[^@\s]+@[^@\s]+\.[a-z]+>", maintainer), maintainer
    assert not re.search(r"@localhost|\.invalid>", maintainer), maintainer
    depends = [d.strip() for d in field(deb, "Depends").split(",")]
    assert not [d for d in depends if "bcrypt" in d], depends  # optional: basic auth only
    assert "python3-bcrypt" in field(deb, "Recommends").split(", ")
    # An Architecture: all package cannot restrict a dependency to an architecture; its
    # headers dependency is alternatives that exist on each architecture instead.
    assert not [d for d in depends if "[" in d], depends
    (headers,) = [d for d in depends if d.startswith("linux-headers")]
    assert {"linux-headers-generic", "linux-headers-amd64", "linux-headers-arm64"} <= set(
        headers.split(" | ")
    ), headers


def test_changelog_is_debian_shaped_and_current() -> None:
    version = changelog("Version")
    assert re.fullmatch(r"[0-9][0-9.]*-[0-9]+", version), version  # upstream-revision
    assert version.rsplit("-", 1)[0] == __version__
    assert changelog("Source") == "procmond"
    assert changelog("Distribution") == "unstable"
    assert changelog("Urgency") == "medium"


def test_build_refuses_a_changelog_behind_the_version(tmp_path: Path) -> None:
    """A new __version__ without a changelog entry is an error, not a mislabelled package."""
    tree = tmp_path / "tree"
    shutil.copytree(
        REPO, tree, ignore=shutil.ignore_patterns(".*", "dist", "__pycache__", "*.egg-info")
    )
    init = tree / "procmond" / "__init__.py"
    init.write_text(init.read_text().replace(f'"{__version__}"', '"9.9.9"'))
    result = subprocess.run(
        [str(tree / "scripts" / "build-deb.sh")], capture_output=True, text=True, cwd=tree
    )
    assert result.returncode == 1
    expected = f"is at {changelog('Version')} but __version__ is 9.9.9: add an entry"
    assert expected in result.stderr, result.stderr
    assert not (tree / "dist").exists()


def test_man_page_renders_without_warnings_and_covers_the_cli(unpacked: Path) -> None:
    page = unpacked / "usr/share/man/man8/procmond.8.gz"
    result = subprocess.run(
        ["man", "--warnings", "-l", str(page)],
        capture_output=True,
        text=True,
        env={**os.environ, "MANWIDTH": "80"},
        timeout=60,
    )
    assert result.returncode == 0 and result.stderr == "", result.stderr
    text = result.stdout
    assert text.startswith("PROCMOND(8)")
    assert max(len(line) for line in text.splitlines()) <= 80
    parser = build_parser()
    (commands,) = [a for a in parser._actions if a.dest == "command"]
    options = {o for a in parser._actions for o in a.option_strings}
    for name, sub in commands.choices.items():
        assert re.search(rf"^ {{7}}procmond {re.escape(name)}\b", text, re.M), name
        options |= {o for a in sub._actions for o in a.option_strings}
    for option in options:
        assert option in text, option


def test_dependencies_resolve_on_debian_amd64_and_arm64(deb: Path) -> None:
    """apt, with Debian 12's own package lists for each architecture, installs the .deb on a
    bare system; the headers it picks are that architecture's (scripts/check-deb-deps.sh)."""
    result = subprocess.run(
        [
            str(REPO / "scripts" / "check-deb-deps.sh"),
            str(deb),
            "debian:bookworm:amd64",
            "debian:bookworm:arm64",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    for arch in ("amd64", "arm64"):
        assert f"debian bookworm {arch}: OK" in out, out
        assert re.search(rf"^  Inst linux-headers-{arch} \(.*\[{arch}\]\)$", out, re.M), out
    assert "host apt state unchanged" in out
