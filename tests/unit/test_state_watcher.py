"""The runtimes' state watcher on real inotify, in tmp_path: a data root that does not exist
when it starts is waited for from its nearest existing ancestor, followed down as it is made
(one level at a time, or all at once), waited for again when a directory on its path or the
root itself goes, with a bounded number of watches whatever is made beside it.
Real dockerd started after the daemon: tests/e2e/test_new_cgroups.py."""

from __future__ import annotations

import json
import os
import shutil
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from procmond.naming.docker import Docker
from procmond.naming.watcher import StateWatcher, nearest_existing

CID = "ab" * 32
WAIT = 10.0  # a bound on how long an event may take to arrive, never reached when it works


class Recording(Docker):
    """Docker's naming, telling the test each name it read ahead."""

    def __init__(self, root: str) -> None:
        super().__init__(root, capacity=16)
        self.seen: list[str] = []
        self.event = threading.Event()

    def noticed(self, relative: Sequence[str]) -> None:
        super().noticed(relative)
        if len(relative) == 3 and relative[2] == "config.v2.json":
            self.seen.append(self.labels(relative[1]).container)  # type: ignore[union-attr]
            self.event.set()

    def wait_for(self, name: str) -> None:
        while name not in self.seen:
            assert self.event.wait(WAIT), f"{name} not read; read: {self.seen}"
            self.event.clear()


def write_state(root: Path, name: str, container_id: str = CID) -> None:
    state = root / "containers" / container_id
    state.mkdir(parents=True, exist_ok=True)
    (state / "config.v2.json").write_text(json.dumps({"Name": "/" + name}))


@pytest.fixture
def watched(tmp_path: Path) -> Iterator[tuple[Recording, StateWatcher, Path]]:
    root = tmp_path / "var" / "lib" / "docker"
    docker = Recording(str(root))
    watcher = StateWatcher([docker], max_watches=64)  # removed folders' watches go late
    assert watcher.start()
    try:
        yield docker, watcher, root
    finally:
        watcher.stop()


def held(watcher: StateWatcher) -> int:
    return watcher.sizes()["container_state_watches"][0]


def test_nearest_existing_ancestor(tmp_path: Path) -> None:
    assert nearest_existing(str(tmp_path / "a" / "b" / "c")) == (str(tmp_path), "a")
    (tmp_path / "a").mkdir()
    assert nearest_existing(str(tmp_path / "a" / "b" / "c")) == (str(tmp_path / "a"), "b")
    assert nearest_existing("/nonexistent-procmond") == ("/", "nonexistent-procmond")


def test_a_root_made_level_by_level_after_start_is_watched(
    watched: tuple[Recording, StateWatcher, Path],
) -> None:
    docker, watcher, root = watched
    assert held(watcher) == 1  # one watch waits, on tmp_path
    for directory in (root.parent.parent, root.parent, root):
        directory.mkdir()
    write_state(root, "late-job")
    docker.wait_for("late-job")
    assert held(watcher) == 3  # the root, containers/, the container's folder


def test_a_root_made_at_once_is_watched(watched: tuple[Recording, StateWatcher, Path]) -> None:
    """mkdir -p, then a container at once: the entries made before the watch are read by the
    look that follows it."""
    docker, _watcher, root = watched
    write_state(root, "all-at-once")
    docker.wait_for("all-at-once")


def test_an_ancestor_removed_and_a_root_removed_are_waited_for_again(
    watched: tuple[Recording, StateWatcher, Path],
) -> None:
    docker, _watcher, root = watched
    root.parent.parent.mkdir()  # the waiting watch moves down to var/
    shutil.rmtree(root.parent.parent)  # and back up when var/ goes
    write_state(root, "first")
    docker.wait_for("first")
    shutil.rmtree(root)  # dockerd's data removed, then made again
    write_state(root, "second", "cd" * 32)
    docker.wait_for("second")
    shutil.rmtree(root.parent.parent)
    write_state(root, "third", "ef" * 32)
    docker.wait_for("third")


def test_other_entries_beside_a_missing_root_add_no_watch(
    watched: tuple[Recording, StateWatcher, Path], tmp_path: Path
) -> None:
    """Hostile names and look-alikes made in the ancestor are compared, never followed; a
    file where the root's folder should be is waited out, not spun on."""
    docker, watcher, root = watched
    for name in (b"\xff", b"var\n", b"var ", b"..var", b"v" * 255):
        os.mkdir(os.path.join(os.fsencode(tmp_path), name))
    (tmp_path / "var").write_text("not a directory")
    write_state(tmp_path / "elsewhere", "not-mine")
    assert held(watcher) == 1
    (tmp_path / "var").unlink()
    write_state(root, "after-all")
    docker.wait_for("after-all")
    assert set(docker.seen) == {"after-all"}  # read at its creation and its last write


def test_waiting_watches_count_against_the_cap(tmp_path: Path) -> None:
    for n in range(3):
        (tmp_path / str(n)).mkdir()
    roots = [Recording(str(tmp_path / str(n) / "missing" / "docker")) for n in range(3)]
    watcher = StateWatcher(roots, max_watches=2)
    assert watcher.start()
    try:
        assert watcher.sizes()["container_state_watches"] == (2, 2)
    finally:
        watcher.stop()
