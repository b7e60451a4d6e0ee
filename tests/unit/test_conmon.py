"""A container's name from its conmon: the command line as podman 4.3 writes it, and the walk
from a cgroup's processes up to it over a /proc laid out in a folder (pure logic; the real
conmon of a real rootless container: tests/e2e/test_rootless_podman.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from procmond.naming import conmon
from procmond.naming.conmon import DEPTH_MAX, PROCS_MAX, ConmonNames, conmon_args
from procmond.naming.labels import CgroupLabels
from procmond.naming.runtime import NAME_MAX
from tests.unit.test_container_naming import ROOTLESS, USER, rootless, user_store

ID = "ab" * 32
OTHER = "cd" * 32


def podman_conmon(container_id: str, name: bytes) -> list[bytes]:
    """conmon's arguments as podman 4.3.1 (Debian 12) gave them to a rootless `podman run -d`
    (from `ps -o args`; the paths shortened)."""
    userdata = f"/home/u/.local/share/containers/storage/vfs-containers/{container_id}/userdata"
    args = [
        "/usr/bin/conmon", "--api-version", "1", "-c", container_id, "-u", container_id,
        "-r", "/usr/bin/runc", "-b", userdata, "-p", "/run/user/pidfile", "-n", "NAME",
        "--exit-dir", "/run/user/libpod/tmp/exits", "--full-attach",
        "-l", f"k8s-file:{userdata}/ctr.log", "--log-level", "warning",
        "--runtime-arg", "--log-format=json", "--runtime-arg", "--log",
        "--conmon-pidfile", "/run/user/conmon.pid", "--exit-command", "/usr/bin/podman",
        "--exit-command-arg", "--root", "--exit-command-arg", "/home/u/storage",
        "--exit-command-arg", "--network-config-dir", "--exit-command-arg", "",
        "--exit-command-arg", "container", "--exit-command-arg", "cleanup",
        "--exit-command-arg", container_id,
    ]  # fmt: skip
    return [name if a == "NAME" else a.encode() for a in args]


def test_podman_43s_conmon_command_line_gives_the_id_and_name() -> None:
    assert conmon_args(podman_conmon(ID, b"web")) == (ID.encode(), b"web")
    assert conmon_args([b"conmon", b"--cid=" + ID.encode(), b"--name", b"x"]) == (
        ID.encode(),
        b"x",
    )


def test_values_are_not_taken_for_options() -> None:
    """An argument of another option that reads ``-n`` names nothing; neither do operands."""
    argv = [b"conmon", b"-c", ID.encode(), b"--exit-command-arg", b"-n", b"--log-tag", b"x"]
    assert conmon_args(argv) is None
    assert conmon_args([b"conmon", b"-c", ID.encode(), b"--", b"-n", b"evil"]) is None
    assert conmon_args([b"conmon", b"-t", b"-c", ID.encode(), b"-n", b"ok"]) == (
        ID.encode(),
        b"ok",
    )


def test_only_conmon_with_both_options_counts() -> None:
    assert conmon_args([b"/usr/bin/sleep", b"-c", ID.encode(), b"-n", b"x"]) is None
    assert conmon_args([b"conmon", b"-c", ID.encode()]) is None
    assert conmon_args([b"conmon", b"-n", b"x"]) is None
    assert conmon_args([b"conmon", b"-c", ID.encode(), b"-n"]) is None
    assert conmon_args([]) is None


class Proc:
    """A /proc of a folder: status (PPid, Uid) and cmdline of each process."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def add(self, pid: int, ppid: int, uid: int, argv: list[bytes]) -> None:
        d = self.root / str(pid)
        d.mkdir(parents=True, exist_ok=True)
        (d / "status").write_bytes(
            f"Name:\tx\nPid:\t{pid}\nPPid:\t{ppid}\nUid:\t{uid}\t0\t0\t0\n".encode()
        )
        (d / "cmdline").write_bytes(b"".join(a + b"\0" for a in argv))


def cgroup(directory: Path, pids: list[int]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "cgroup.procs").write_text("".join(f"{p}\n" for p in pids))
    return directory


def test_a_container_is_named_by_the_conmon_above_its_processes(tmp_path: Path) -> None:
    proc = Proc(tmp_path / "proc")
    proc.add(100, 1, USER, podman_conmon(ID, b"web"))
    proc.add(101, 100, USER, [b"sh"])  # the container's init
    proc.add(102, 101, USER, [b"creator"])
    names = ConmonNames(8, str(proc.root))
    assert names.name_of(ID, str(cgroup(tmp_path / "a", [102])), USER) == "web"
    assert names.name_of(ID, str(cgroup(tmp_path / "b", [])), USER) == "web"  # kept
    assert names.sizes() == {"conmon_names": (1, 8)}


def test_a_conmon_of_another_uid_or_container_names_nothing(tmp_path: Path) -> None:
    proc = Proc(tmp_path / "proc")
    proc.add(100, 1, 0, podman_conmon(ID, b"evil"))  # another uid posing as the user's conmon
    proc.add(101, 100, USER, [b"sh"])
    proc.add(200, 1, USER, podman_conmon(OTHER, b"other"))  # the user's, another container
    proc.add(201, 200, USER, [b"sh"])
    names = ConmonNames(8, str(proc.root))
    assert names.name_of(ID, str(cgroup(tmp_path / "a", [101, 201])), USER) is None


def test_the_walk_is_bounded(tmp_path: Path) -> None:
    proc = Proc(tmp_path / "proc")
    proc.add(100, 1, USER, podman_conmon(ID, b"deep"))
    for depth in range(DEPTH_MAX + 1):  # the deepest is DEPTH_MAX + 1 steps below conmon
        proc.add(101 + depth, 100 + depth, USER, [b"sh"])
    deepest = 101 + DEPTH_MAX
    names = ConmonNames(8, str(proc.root))
    assert names.name_of(ID, str(cgroup(tmp_path / "a", [deepest])), USER) is None
    assert names.name_of(ID, str(cgroup(tmp_path / "b", [deepest - 1])), USER) == "deep"
    # only the first PROCS_MAX processes of a cgroup are looked at
    strangers = list(range(5000, 5000 + PROCS_MAX))
    for pid in strangers:
        proc.add(pid, 1, USER, [b"sh"])
    late = ConmonNames(8, str(proc.root))
    assert late.name_of(ID, str(cgroup(tmp_path / "c", [*strangers, 101])), USER) is None
    assert late.name_of(ID, str(cgroup(tmp_path / "d", [*strangers[1:], 101])), USER) == "deep"


def test_hostile_names_are_decoded_and_cut(tmp_path: Path) -> None:
    proc = Proc(tmp_path / "proc")
    proc.add(100, 1, USER, podman_conmon(ID, b"\xff" + b"n" * 600))
    proc.add(101, 100, USER, [b"sh"])
    proc.add(200, 1, USER, podman_conmon(OTHER, b"/"))  # nothing left of it: no name
    proc.add(201, 200, USER, [b"sh"])
    names = ConmonNames(8, str(proc.root))
    assert names.name_of(ID, str(cgroup(tmp_path / "a", [101])), USER) == (
        "\ufffd" + "n" * (NAME_MAX - 1)
    )
    assert names.name_of(OTHER, str(cgroup(tmp_path / "b", [201])), USER) is None


def test_a_rootless_container_with_a_closed_store_is_named_by_its_conmon(tmp_path: Path) -> None:
    """The store first (Podman's record, also after conmon is gone), then conmon."""
    proc = Proc(tmp_path / "proc")
    proc.add(100, 1, USER, podman_conmon(ID, b"from-conmon"))
    proc.add(101, 100, USER, [b"sh"])
    cgroups = tmp_path / "cgroup"
    cgroup(cgroups / ROOTLESS.strip("/"), [101])
    source = rootless(tmp_path / "no-home", cgroups, str(proc.root))
    container_id = source.container_id(ROOTLESS.strip("/").split("/"))
    assert container_id == ID and source.labels(ID) == CgroupLabels(container="from-conmon")
    user_store(tmp_path / "home", {ID: "from-store"})
    source = rootless(tmp_path / "home", cgroups, str(proc.root))
    source.container_id(ROOTLESS.strip("/").split("/"))
    assert source.labels(ID) == CgroupLabels(container="from-store")
    other = ROOTLESS.replace(str(USER), str(USER + 1))  # another user's path: conmon not theirs
    cgroup(cgroups / other.strip("/"), [101])
    source = rootless(tmp_path / "no-home", cgroups, str(proc.root))
    source.container_id(other.strip("/").split("/"))
    assert source.labels(ID) is None


def test_a_parent_whose_child_moved_on_meanwhile_is_not_believed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The child's PPid is read again after its parent's: if it changed (the parent exited,
    its pid maybe reused by a conmon look-alike), the parent read is not believed."""
    proc = Proc(tmp_path / "proc")
    proc.add(100, 1, USER, podman_conmon(ID, b"reused"))
    proc.add(101, 100, USER, [b"sh"])
    reads = []
    real = conmon.status_of

    def reparented_after_first_read(root: str, pid: int) -> conmon.ProcStatus | None:
        reads.append(pid)
        if pid == 101 and len(reads) > 1:
            proc.add(101, 1, USER, [b"sh"])  # its parent gone: reparented to init
        return real(root, pid)

    monkeypatch.setattr(conmon, "status_of", reparented_after_first_read)
    names = ConmonNames(8, str(proc.root))
    assert names.name_of(ID, str(cgroup(tmp_path / "a", [101])), USER) is None
    assert reads == [101, 100, 101]
