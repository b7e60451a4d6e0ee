"""Rootless Podman named for real: a real podman, run as a user of the test's own, makes its
store in that user's home (``podman create``); its container's cgroup is laid out where
systemd puts a rootless container (``user@<uid>.service/.../libpod-<id>.scope``: rootless
podman cannot make cgroups on this hybrid host) with the static creator in it, and the daemon
counts its forks exactly under the name from that user's store.

Podman makes the store's folders 0700, and the daemon keeps no capability once its probe is
loaded: the test opens the way to the store to uid 0 (search on the folders, read on the
store's folder and its list), as a user who wants their containers named would, and checks
that without it the container gets its short id instead."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.cgroup_tree import CgroupTree
from tests.e2e.harness import Daemon, start_daemon, unique_name, wait_until
from tests.e2e.runtimes import RootlessUser, import_image, make_root

IMAGE = "procmond-test-box:1"


@pytest.fixture
def user() -> Iterator[RootlessUser]:
    made = RootlessUser()
    try:
        yield made
    finally:
        made.remove()


def forks_of(daemon: Daemon, comm: str) -> dict[tuple[str, str, str, str], float]:
    found: dict[tuple[str, str, str, str], float] = {}
    for labels, value in daemon.scrape().series("procmond_forks_total").items():
        ls = dict(labels)
        if ls["comm"] == comm:
            key = (ls["unit"], ls["namespace"], ls["pod"], ls["container"])
            found[key] = found.get(key, 0.0) + value
    return found


def open_to_root(store: Path, home: Path) -> None:
    """Search on the folders from the home down to the store, read on the store's folder, its
    container list's folder and the list: what uid 0 without capabilities needs."""
    folder = store
    while folder != home:
        folder.chmod(folder.stat().st_mode | 0o001)
        folder = folder.parent
    store.chmod(store.stat().st_mode | 0o005)
    for listed in store.glob("*-containers/containers.json"):
        listed.parent.chmod(listed.parent.stat().st_mode | 0o001)
        listed.chmod(listed.stat().st_mode | 0o004)


def test_a_rootless_podman_container_is_named_from_its_users_store(
    user: RootlessUser, tree: CgroupTree, creator: Path, tmp_path: Path
) -> None:
    import_image(make_root(tmp_path / "box"), *user.cli_args())
    names = {}
    for which in ("closed", "open"):
        names[which] = f"rl-{which}-{unique_name('').hex()[:8]}"
        user.cli("create", f"--name={names[which]}", IMAGE, "/bin/true")
    ids = {n: user.cli("inspect", "--format", "{{.Id}}", n).stdout.strip() for n in names.values()}
    store = user.home / ".local" / "share" / "containers" / "storage"
    listed = store / "vfs-containers" / "containers.json"
    assert listed.stat().st_uid == user.uid and oct(store.stat().st_mode)[-3:] == "700"

    daemon = start_daemon(tmp_path, "histograms: false\n")
    try:
        counted = {}
        for which, container in names.items():
            if which == "open":
                open_to_root(store, user.home)
            scope = (
                f"/user.slice/user-{user.uid}.slice/user@{user.uid}.service/user.slice/"
                f"libpod-{ids[container]}.scope"
            )
            cgroup = tree.make(scope)
            comm = unique_name("rl")
            started = time.monotonic()
            inside = tree.start(cgroup, str(creator), "fork", "300", comm.hex())
            assert inside.wait(timeout=60) == 0
            wait_until(lambda comm=comm: forks_of(daemon, comm.decode()), 30, "its forks")
            counted[which] = (forks_of(daemon, comm.decode()), time.monotonic() - started)
    finally:
        assert daemon.stop() == 0, daemon.log()
    open_name = names["open"]
    assert counted["open"][0] == {("", "", "", open_name): 300}
    # unreadable store: not named yet (its short id comes after link_grace), never a unit
    assert counted["closed"][0] == {("", "", "", ""): 300}
    print(
        f"rootless podman (uid {user.uid}) {open_name}: 300 of 300 named from its store, "
        f"{counted['open'][1]:.2f} s from the creator's start to the scrape that named it; "
        "the store left 0700: 300 under empty labels"
    )
    assert os.path.exists(listed)
