"""Rootless Podman named for real: a real podman, run as a user of the test's own, makes its
store in that user's home; its container's cgroup is laid out where systemd puts a rootless
container (``user@<uid>.service/.../libpod-<id>.scope``: rootless podman cannot make cgroups on
this hybrid host) and the daemon counts forks made in it exactly, under the container's name.

Podman makes the store's folders 0700, and the daemon keeps no capability once its probe is
loaded. From the store: the test opens the way to it to uid 0 (search on the folders, read on
the store's folder and its list), as a user who wants their containers named this way would.
From conmon, with the store left 0700: a real ``podman run -d`` whose real conmon is the
parent of the container's first process, which the test moves into the laid-out cgroup (as
systemd's scope would hold it); and a fake conmon (``-c <id> -n ...`` as podman writes it)
above a process in the user's cgroup names it when it runs as that user, never when it runs
as another uid."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from procmond.naming.conmon import conmon_args
from tests.e2e.cgroup_tree import CgroupTree
from tests.e2e.harness import Daemon, start_daemon, unique_name, wait_until
from tests.e2e.runtimes import RUNC_ULIMITS, RootlessUser, import_image, make_root

IMAGE = "procmond-test-box:1"


@pytest.fixture
def user() -> Iterator[RootlessUser]:
    made = RootlessUser()
    try:
        yield made
    finally:
        made.remove()


def forks_of(daemon: Daemon, comm: str) -> dict[tuple[str, ...], float]:
    return daemon.scrape().by_cgroup("procmond_forks_total", comm)


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


def scope_of(uid: int, container_id: str) -> str:
    """Where systemd puts a rootless container's cgroup."""
    return f"/user.slice/user-{uid}.slice/user@{uid}.service/user.slice/libpod-{container_id}.scope"


@pytest.fixture
def shared() -> Iterator[Path]:
    """A folder every uid can use: the go-ahead FIFOs, and programs run as another uid."""
    folder = Path(tempfile.mkdtemp(prefix="procmond-conmon-"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def fifo(folder: Path, name: str) -> Path:
    path = folder / name
    os.mkfifo(path)
    path.chmod(0o666)
    return path


def go(path: Path) -> None:
    """Let the process blocked reading the FIFO go on (it opened it already, or soon)."""

    def opened() -> int | None:
        try:
            return os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:  # ENXIO: no reader yet
            return None

    fd = wait_until(opened, 30, f"a reader of {path}")
    try:
        os.write(fd, b"go\n")
    finally:
        os.close(fd)


def waits_on(script_comm_hex: str, fifo_path: str, creator: str) -> str:
    """What a container's (or a fake conmon child's) first process runs: wait for the
    go-ahead, make 300 forks under the given comm, then stay (so that its parent is asked
    while it is alive, as a running container's processes are)."""
    return f"read x < {fifo_path}; {creator} fork 300 {script_comm_hex}; exec sleep 600"


def status(pid: int) -> dict[str, str]:
    text = Path(f"/proc/{pid}/status").read_text()
    return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)


def move(cgroup: Path, pid: int) -> None:
    (cgroup / "cgroup.procs").write_text(f"{pid}\n")


def kill_cgroup(cgroup: Path) -> None:
    """Every process of a laid-out cgroup killed, so that it can be removed."""
    with contextlib.suppress(OSError):
        (cgroup / "cgroup.kill").write_text("1")


def test_a_running_rootless_container_is_named_by_its_conmon_with_the_store_closed(
    user: RootlessUser, tree: CgroupTree, shared: Path, tmp_path: Path
) -> None:
    import_image(make_root(tmp_path / "box"), *user.cli_args())
    name = f"rl-run-{secrets.token_hex(4)}"
    comm = unique_name("rc")
    start = fifo(shared, "start")
    container_id = user.cli(
        "run", "-d", f"--name={name}", "--network=none", *RUNC_ULIMITS,
        "-v", f"{shared}:/go", IMAGE, "/bin/sh", "-c",
        waits_on(comm.hex(), "/go/start", "/creator"),
    ).stdout.strip()  # fmt: skip
    cgroup = tree.make(scope_of(user.uid, container_id))
    daemon = None
    try:
        state = user.cli("inspect", "--format", "{{.State.Pid}} {{.State.ConmonPid}}", name)
        init, conmon = (int(p) for p in state.stdout.split())
        # what the daemon relies on, as podman 4.3 really does it: conmon is the first
        # process's parent, runs as the user, and says -c <id> -n <name>
        assert int(status(init)["PPid"]) == conmon
        assert int(status(conmon)["Uid"].split()[0]) == user.uid
        argv = Path(f"/proc/{conmon}/cmdline").read_bytes().split(b"\0")[:-1]
        assert conmon_args(argv) == (container_id.encode(), name.encode())
        print("conmon:", b" ".join(argv[:16]).decode(), "...")
        store = user.home / ".local" / "share" / "containers" / "storage"
        assert oct(store.stat().st_mode)[-3:] == "700"
        daemon = start_daemon(tmp_path, "histograms: false\n")
        move(cgroup, init)
        started = time.monotonic()
        go(start)
        wait_until(lambda: Path(f"/proc/{init}/comm").read_text() == "sleep\n", 60, "forks")
        counted = wait_until(lambda: forks_of(daemon, comm.decode()), 30, "its forks")
        took = time.monotonic() - started
        # the name came from conmon, not the store: conmon's cache holds it
        conmon_names = daemon.scrape().value(
            "procmond_table_entries", table="podman_rootless_conmon_names"
        )
    finally:
        kill_cgroup(cgroup)
        user.cli("rm", "-f", "-t", "0", name, check=False)
        if daemon is not None:
            assert daemon.stop() == 0, daemon.log()
    assert counted == {("", "", "", name): 300}
    assert conmon_names == 1
    assert oct(store.stat().st_mode)[-3:] == "700"
    print(
        f"rootless podman run (uid {user.uid}) {name}: 300 of 300 named from its conmon with "
        f"the store 0700, {took:.2f} s from the go-ahead to the scrape that named it"
    )


FAKE_CONMON = r"""
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>
/* Poses as conmon: its arguments are whatever it was given; it runs $FAKE_CHILD under sh as
   its child, and waits for it. */
int main(void) {
    pid_t child = fork();
    if (child == 0) {
        execl("/bin/sh", "sh", "-c", getenv("FAKE_CHILD"), (char *)0);
        _exit(127);
    }
    int status;
    waitpid(child, &status, 0);
    return 0;
}
"""


def test_a_conmon_of_another_uid_names_nothing(
    user: RootlessUser, tree: CgroupTree, creator: Path, shared: Path, tmp_path: Path
) -> None:
    """The same fake conmon above a process in the user's container cgroup: run as the user it
    names the container (a user may name their own cgroups), run as nobody it does not."""
    (tmp_path / "fake.c").write_text(FAKE_CONMON)
    fake = shared / "conmon"
    subprocess.run(["gcc", "-O2", "-o", str(fake), str(tmp_path / "fake.c")], check=True)
    shutil.copy(creator, shared / "creator")
    (shared / "creator").chmod(0o755)
    nobody = 65534
    assert nobody != user.uid
    fakes: list[subprocess.Popen] = []
    cgroups = []
    daemon = start_daemon(tmp_path, "histograms: false\n")
    try:
        counted = {}
        for who, uid in (("own", user.uid), ("evil", nobody)):
            container_id = secrets.token_hex(32)
            comm = unique_name("fk")
            start = fifo(shared, who)
            argv = [
                "/usr/bin/conmon", "--api-version", "1", "-c", container_id, "-u",
                container_id, "-r", "/usr/bin/runc", "-n", who, "--exit-dir", "/tmp",
                "--full-attach", "--exit-command-arg", "-n", "--log-level", "warning",
            ]  # fmt: skip
            fakes.append(
                subprocess.Popen(
                    argv,
                    executable=str(fake),
                    user=uid,
                    group=uid,
                    extra_groups=[],
                    env={"FAKE_CHILD": waits_on(comm.hex(), str(start), str(shared / "creator"))},
                    cwd="/",
                    start_new_session=True,  # its child too is killed by its group
                )
            )
            children = Path(f"/proc/{fakes[-1].pid}/task/{fakes[-1].pid}/children")
            child = int(wait_until(lambda c=children: c.read_text().split(), 30, "its child")[0])
            assert int(status(child)["PPid"]) == fakes[-1].pid
            assert int(status(fakes[-1].pid)["Uid"].split()[0]) == uid
            cgroup = tree.make(scope_of(user.uid, container_id))
            cgroups.append(cgroup)
            move(cgroup, child)
            go(start)
            wait_until(
                lambda c=child: Path(f"/proc/{c}/comm").read_text() == "sleep\n", 60, "forks"
            )
            counted[who] = wait_until(lambda c=comm: forks_of(daemon, c.decode()), 30, "forks")
        every = daemon.scrape().series("procmond_forks_total")
    finally:
        for cgroup in cgroups:
            kill_cgroup(cgroup)
        for p in fakes:
            with contextlib.suppress(OSError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=30)
        assert daemon.stop() == 0, daemon.log()
    assert counted["own"] == {("", "", "", "own"): 300}
    # another uid's conmon: not named (its short id comes after link_grace), never "evil"
    assert counted["evil"] == {("", "", "", ""): 300}
    assert not [labels for labels in every if dict(labels)["container"] == "evil"]
