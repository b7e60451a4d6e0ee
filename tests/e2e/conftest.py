"""End-to-end fixtures: these tests need root, BCC and BPF, and fail (never skip) without."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from procmond.naming.cgroups import read_layout
from tests.e2e.cgroup_tree import CgroupTree
from tests.e2e.harness import Daemon, build_creator, start_daemon


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/e2e" in str(item.fspath):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def creator(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_creator(tmp_path_factory.mktemp("creator"))


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """One daemon with the default config (but a free loopback port), shared by a module."""
    d = start_daemon(tmp_path_factory.mktemp("daemon"))
    yield d
    assert d.stop() == 0, d.log()


@pytest.fixture
def tree() -> Iterator[CgroupTree]:
    """Cgroups in the real cgroup v2 hierarchy, removed (with their processes) after the test."""
    layout = read_layout()
    assert layout.v2 is not None, "these tests need cgroup v2 (unified or hybrid)"
    t = CgroupTree(layout.v2.mount_point)
    yield t
    t.remove()
