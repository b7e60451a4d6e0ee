"""Real container runtimes for the tests, each with state of the test's own: dockerd, a
containerd for ``ctr``, and podman, all from Debian's packages, with no registry: images are
made from a local root (busybox-static and the static creator). Everything started is stopped
and everything made is removed, even when a test fails; other users of the machine may run
their own daemons, so nothing here uses the default roots, sockets or names."""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from tests.e2e.harness import build_creator, wait_until

BUSYBOX = Path("/bin/busybox")
RUNC_ULIMITS = ("--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096")


def make_root(directory: Path) -> Path:
    """A container root: a static busybox (sh, sleep) and the static creator as /creator."""
    (directory / "bin").mkdir(parents=True)
    shutil.copy(BUSYBOX, directory / "bin" / "busybox")
    for tool in ("sh", "sleep", "true"):
        (directory / "bin" / tool).symlink_to("busybox")
    build_creator(directory, static=True)
    for empty in ("proc", "sys", "dev", "etc", "tmp"):
        (directory / empty).mkdir()
    return directory


def _run(command: list[str], args: Sequence[str], check: bool) -> subprocess.CompletedProcess:
    """A runtime's command line tool with ``args``; with ``check``, its failure fails the test
    with its stderr."""
    result = subprocess.run([*command, *args], capture_output=True, text=True, timeout=120)
    assert not check or result.returncode == 0, (args, result.stderr)
    return result


def _stop(process: subprocess.Popen, timeout: float = 15) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def unmount_below(directory: Path) -> None:
    """Unmount whatever a runtime left mounted under ``directory`` (deepest first)."""
    prefix = str(directory) + "/"
    points = [
        line.split()[4]
        for line in Path("/proc/self/mountinfo").read_text().splitlines()
        if line.split()[4].startswith(prefix)
    ]
    for point in sorted(points, key=len, reverse=True):
        subprocess.run(["umount", "-l", point], check=False, capture_output=True)


class Dockerd:
    """dockerd with its own data root, exec root and socket (and the containerd it starts)."""

    def __init__(self, base: Path) -> None:
        base.mkdir(parents=True, exist_ok=True)
        self.base = base
        self.data_root = base / "data"
        self.socket = base / "docker.sock"
        log = (base / "dockerd.log").open("wb")
        self.process = subprocess.Popen(
            [
                "dockerd",
                f"--data-root={self.data_root}",
                f"--exec-root={base / 'exec'}",
                f"--host=unix://{self.socket}",
                f"--pidfile={base / 'dockerd.pid'}",
                "--iptables=false",
                "--ip6tables=false",
                "--bridge=none",
                "--storage-driver=vfs",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_until(self._up, 60, "dockerd to answer")
        except BaseException:
            self.stop()
            raise

    def _up(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError((self.base / "dockerd.log").read_text()[-3000:])
        return self.cli("info", check=False).returncode == 0

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return _run(["docker", f"--host=unix://{self.socket}"], args, check)

    def stop(self) -> None:
        if self.process.poll() is None:
            ids = self.cli("ps", "-aq", check=False).stdout.split()
            if ids:
                self.cli("rm", "-f", *ids, check=False)
        _stop(self.process)
        unmount_below(self.base)


class Containerd:
    """containerd with its own root, state and socket; ``ctr`` against it."""

    def __init__(self, base: Path) -> None:
        base.mkdir(parents=True, exist_ok=True)
        self.base = base
        self.state = base / "state"
        self.socket = base / "containerd.sock"
        config = base / "config.toml"
        config.write_text(
            "version = 2\n"
            f'root = "{base / "root"}"\n'
            f'state = "{self.state}"\n'
            f'[grpc]\n  address = "{self.socket}"\n'
            '[plugins."io.containerd.grpc.v1.cri"]\n  disable = true\n'
        )
        log = (base / "containerd.log").open("wb")
        self.process = subprocess.Popen(
            ["containerd", "--config", str(config)], stdout=log, stderr=subprocess.STDOUT
        )
        try:
            wait_until(lambda: self.ctr("version", check=False).returncode == 0, 30, "containerd")
        except BaseException:
            self.stop()
            raise

    def ctr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return _run(["ctr", f"--address={self.socket}"], args, check)

    def stop(self) -> None:
        if self.process.poll() is None:
            for namespace in self.ctr("namespaces", "ls", "-q", check=False).stdout.split():
                for task in self.ctr(
                    "-n", namespace, "tasks", "ls", "-q", check=False
                ).stdout.split():
                    self.ctr("-n", namespace, "tasks", "kill", "-s", "KILL", task, check=False)
                    self.ctr("-n", namespace, "tasks", "rm", "-f", task, check=False)
                for c in self.ctr(
                    "-n", namespace, "containers", "ls", "-q", check=False
                ).stdout.split():
                    self.ctr("-n", namespace, "containers", "rm", c, check=False)
        _stop(self.process)
        unmount_below(self.base)


class Podman:
    """podman with a storage root and run root of its own (vfs: nothing left mounted)."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.root = base / "storage"
        # podman refuses a run root longer than 50 characters
        self.run_root = Path(tempfile.mkdtemp(prefix="procmond-podman-", dir="/tmp"))

    def cli_args(self) -> list[str]:
        return [
            "podman",
            f"--root={self.root}",
            f"--runroot={self.run_root}",
            "--storage-driver=vfs",
            "--cgroup-manager=cgroupfs",
            "--runtime=runc",
            "--events-backend=file",
        ]

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return _run(self.cli_args(), args, check)

    def stop(self) -> None:
        self.cli("rm", "-af", "-t", "0", check=False)
        self.cli("pod", "rm", "-af", check=False)
        unmount_below(self.base)
        unmount_below(self.run_root)
        shutil.rmtree(self.run_root, ignore_errors=True)


class RootlessUser:
    """A user of its own running podman rootless, as that user (``runuser``), with a store in
    its home. Single-id mapping (no subordinate ids): this machine has no newuidmap, and
    ``podman create`` needs no more. ``remove()`` takes the user, its home, its runtime folder
    and podman's pause process away, even after a failure."""

    def __init__(self) -> None:
        self.name = f"procmond-rl-{secrets.token_hex(3)}"
        subprocess.run(
            ["useradd", "-m", "-s", "/bin/sh", "-K", "SUB_UID_COUNT=0", "-K", "SUB_GID_COUNT=0",
             self.name],
            check=True, capture_output=True, timeout=30,
        )  # fmt: skip
        self.uid = pwd.getpwnam(self.name).pw_uid
        self.home = Path(pwd.getpwnam(self.name).pw_dir)
        self.run_dir = Path(tempfile.mkdtemp(prefix=f"procmond-rl-run-{self.uid}-"))
        os.chown(self.run_dir, self.uid, self.uid)

    def cli_args(self) -> list[str]:
        return [
            "runuser", "-u", self.name, "--", "env", "--chdir=/", f"HOME={self.home}",
            f"XDG_RUNTIME_DIR={self.run_dir}", "podman", "--cgroup-manager=cgroupfs",
            "--runtime=runc", "--events-backend=file", "--storage-driver=vfs",
        ]  # fmt: skip

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return _run(self.cli_args(), args, check)

    def remove(self) -> None:
        self.cli("rm", "-af", check=False)
        pause = self.run_dir / "libpod" / "tmp" / "pause.pid"
        with contextlib.suppress(OSError, ValueError):
            os.kill(int(pause.read_text()), signal.SIGKILL)
        unmount_below(self.home)
        subprocess.run(["userdel", "-r", self.name], capture_output=True, timeout=30)
        shutil.rmtree(self.home, ignore_errors=True)
        shutil.rmtree(self.run_dir, ignore_errors=True)


def import_image(root: Path, *cli: str) -> None:
    """``docker import`` / ``podman import`` of the root as a tar stream."""
    tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
    assert tar.stdout is not None
    try:
        result = subprocess.run(
            [*cli, "import", "-", "procmond-test-box:1"],
            stdin=tar.stdout,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        tar.stdout.close()  # a reader that failed early must not leave tar blocked
        tar.wait(timeout=30)
    assert result.returncode == 0, result.stderr
