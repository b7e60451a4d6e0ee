"""A real systemd, as PID 1 of private namespaces, for testing procmond as a service.

The test machines do not boot systemd, but systemd runs fine as PID 1 of new pid, mount,
network, uts, ipc and cgroup namespaces. Its root is an overlay whose lower layer is the host's
``/`` and whose upper layer is a tmpfs: packages installed, units enabled and files written
inside vanish with the sandbox. BPF is not namespaced, so procmond inside still sees (and counts)
every process on the host; tests tell theirs apart by unique names.

    with SystemdSandbox(tmp_path) as box:
        box.run("systemctl", "start", "x")
        box.read_text("/etc/x.conf")

Run as ``python -m tests.e2e.systemd_sandbox prelude STATE`` the module is the namespaces'
first process: it builds the root, pivots into it and becomes systemd.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CGROUP2 = Path("/sys/fs/cgroup/unified")  # the host's cgroup2 mount (hybrid layout)

# Units the host has installed that must not start inside (they would fight over ports,
# consoles or clocks); everything the host enabled is dropped too.
MASKED_UNITS = (
    "getty@.service",
    "serial-getty@.service",
    "console-getty.service",
    "container-getty@.service",
    "getty-static.service",
    "getty.target",
    "systemd-timesyncd.service",
    "prometheus.service",
    "prometheus-node-exporter.service",
    "e2scrub_reap.service",
    "systemd-pstore.service",
    "postgresql.service",
)
MASKED_GENERATORS = (
    "systemd-sysv-generator",
    "systemd-getty-generator",
    "systemd-gpt-auto-generator",
    "postgresql-generator",
)
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")


class SandboxError(Exception):
    pass


class SystemdSandbox:
    def __init__(self, state: Path, boot_timeout: float = 30) -> None:
        self.state = state
        self.boot_timeout = boot_timeout
        self.cgroup = CGROUP2 / f"procmond-test-{os.getpid()}-{id(self):x}"
        self.unshare: subprocess.Popen | None = None
        self.pid = 0  # systemd's pid, as the host sees it

    def __enter__(self) -> SystemdSandbox:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        self.state.mkdir(parents=True, exist_ok=True)
        (self.state / "mnt").mkdir(exist_ok=True)
        console = (self.state / "console.log").open("ab")
        self.cgroup.mkdir()
        # Join the new cgroup first, so that --cgroup makes it the namespace's cgroup root.
        join = f'echo $$ > "{self.cgroup}/cgroup.procs" && exec "$@"'
        self.unshare = subprocess.Popen(
            [
                "sh",
                "-c",
                join,
                "_",
                "unshare",
                "--pid",
                "--fork",
                "--mount",
                "--uts",
                "--ipc",
                "--net",
                "--cgroup",
                "--propagation",
                "private",
                sys.executable,
                "-m",
                "tests.e2e.systemd_sandbox",
                "prelude",
                str(self.state),
            ],
            stdin=subprocess.DEVNULL,
            stdout=console,
            stderr=console,
            start_new_session=True,
            cwd=Path(__file__).resolve().parents[2],
        )
        deadline = time.monotonic() + self.boot_timeout
        self.pid = self._wait_for_child(deadline)
        # The waiting unshare process may leave the cgroup; systemd owns it now.
        (CGROUP2 / "cgroup.procs").write_text(str(self.unshare.pid))
        self._wait_for_boot(deadline)

    def _wait_for_child(self, deadline: float) -> int:
        assert self.unshare is not None
        children = Path(f"/proc/{self.unshare.pid}/task/{self.unshare.pid}/children")
        while time.monotonic() < deadline:
            if self.unshare.poll() is not None:
                raise SandboxError(f"unshare exited early:\n{self.console()}")
            try:
                pids = children.read_text().split()
            except OSError:
                pids = []
            if pids:
                return int(pids[0])
            time.sleep(0.02)
        raise SandboxError("the sandbox's first process never appeared")

    def _wait_for_boot(self, deadline: float) -> None:
        state = ""
        while time.monotonic() < deadline:
            if Path(f"/proc/{self.pid}/comm").read_text().strip() == "systemd":
                result = self.run("systemctl", "is-system-running", check=False)
                state = result.stdout.strip()
                if state in ("running", "degraded"):
                    return
            time.sleep(0.1)
        raise SandboxError(f"systemd did not finish booting ({state!r}):\n{self.console()}")

    def stop(self, timeout: float = 15) -> None:
        if self.pid and _alive(self.pid):
            os.kill(self.pid, signal.SIGRTMIN + 4)  # systemd: poweroff; in a container PID 1 exits
            _wait_gone(self.pid, timeout) or os.kill(self.pid, signal.SIGKILL)
        if self.unshare is not None:
            try:
                self.unshare.wait(timeout)
            except subprocess.TimeoutExpired:
                self.unshare.kill()
                self.unshare.wait()
        for _ in range(50):  # the cgroup empties once every process in it has been reaped
            try:
                _remove_cgroup_tree(self.cgroup)
                break
            except OSError:
                time.sleep(0.1)
        self.pid = 0

    # ---- inside ----------------------------------------------------------------------------

    def run(
        self, *cmd: str, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess:
        """Run a command in every namespace of the sandbox, with a clean environment."""
        enter = ["nsenter", "-t", str(self.pid), "-a", "--", "env", "-i", f"PATH={PATH}"]
        result = subprocess.run(
            [*enter, "LANG=C.UTF-8", *cmd], capture_output=True, text=True, timeout=timeout
        )
        if check and result.returncode != 0:
            raise SandboxError(
                f"{' '.join(cmd)} exited {result.returncode}:\n{result.stdout}{result.stderr}"
            )
        return result

    def path(self, inside: str) -> Path:
        """A path inside the sandbox, as the host can read it."""
        return Path(f"/proc/{self.pid}/root") / inside.lstrip("/")

    def read_text(self, inside: str) -> str:
        return self.path(inside).read_text()

    def write_text(self, inside: str, text: str) -> None:
        target = self.path(inside)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)

    def put(self, host_file: Path, inside: str) -> None:
        target = self.path(inside)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(host_file, target)

    def console(self) -> str:
        try:
            return (self.state / "console.log").read_text(errors="replace")[-4000:]
        except OSError:
            return ""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return False


def _remove_cgroup_tree(root: Path) -> None:
    if not root.exists():
        return
    for dirpath, _dirs, _files in sorted(os.walk(root), key=lambda w: -len(w[0])):
        os.rmdir(dirpath)


# ---- the namespaces' first process ---------------------------------------------------------


def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True)


def prelude(state: Path) -> None:
    """Build the overlay root, move into it, and exec systemd as PID 1."""
    tmp = state / "mnt"
    root = tmp / "root"
    _mount("--make-rprivate", "/")
    _mount("-t", "tmpfs", "-o", "mode=755,size=2g", "procmond-sandbox", str(tmp))
    for d in ("upper", "work", "root"):
        (tmp / d).mkdir()
    _mount(
        "-t",
        "overlay",
        "overlay",
        "-o",
        f"lowerdir=/,upperdir={tmp / 'upper'},workdir={tmp / 'work'}",
        str(root),
    )
    _mount("-t", "proc", "-o", "nosuid,nodev,noexec", "proc", f"{root}/proc")
    _mount("--bind", f"{root}/proc/sys", f"{root}/proc/sys")
    _mount("-o", "remount,bind,ro", f"{root}/proc/sys")
    if (root / "proc/sysrq-trigger").exists():
        _mount("--bind", "/dev/null", f"{root}/proc/sysrq-trigger")
    _mount("-t", "sysfs", "-o", "ro,nosuid,nodev,noexec", "sysfs", f"{root}/sys")
    _mount("-t", "cgroup2", "-o", "nosuid,nodev,noexec", "cgroup2", f"{root}/sys/fs/cgroup")
    # BPF programs need tracefs for tracepoint ids; sysfs mounted afresh does not carry it.
    _mount("-t", "tracefs", "-o", "nosuid,nodev,noexec", "tracefs", f"{root}/sys/kernel/tracing")
    # systemd mounts bpffs here at boot, but not as PID 1 of a container: as a booted host has
    # it (an instance of its own: the sandbox's pins are not the host's).
    _mount("-t", "bpf", "-o", "mode=700,nosuid,nodev,noexec", "bpf", f"{root}/sys/fs/bpf")
    _mount("-t", "tmpfs", "-o", "mode=755,nosuid,size=64m", "sandbox-dev", f"{root}/dev")
    for dev in DEVICES:
        (root / "dev" / dev).touch()
        _mount("--bind", f"/dev/{dev}", f"{root}/dev/{dev}")
    (root / "dev/console").touch()
    _mount("--bind", str(state / "console.log"), f"{root}/dev/console")
    (root / "dev/pts").mkdir()
    (root / "dev/shm").mkdir()
    _mount(
        "-t",
        "devpts",
        "-o",
        "newinstance,ptmxmode=0666,mode=620,gid=5",
        "devpts",
        f"{root}/dev/pts",
    )
    _mount("-t", "tmpfs", "-o", "mode=1777,nosuid,nodev", "sandbox-shm", f"{root}/dev/shm")
    for name, target in (
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ):
        (root / "dev" / name).symlink_to(target)
    _mount("-t", "tmpfs", "-o", "mode=755,nosuid,nodev", "sandbox-run", f"{root}/run")
    _mount("-t", "tmpfs", "-o", "mode=1777,nosuid,nodev", "sandbox-tmp", f"{root}/tmp")

    # A deterministic boot: these writes land in the tmpfs upper layer only.
    (root / "etc/hostname").write_text("procmond-sandbox\n")
    units = root / "etc/systemd/system"
    for wants in list(units.glob("*.wants")) + list(units.glob("*.requires")):
        shutil.rmtree(wants)
    for unit in MASKED_UNITS:
        (units / unit).unlink(missing_ok=True)
        (units / unit).symlink_to("/dev/null")
    generators = root / "etc/systemd/system-generators"
    generators.mkdir(exist_ok=True)
    for gen in MASKED_GENERATORS:
        (generators / gen).unlink(missing_ok=True)
        (generators / gen).symlink_to("/dev/null")
    subprocess.run(["ip", "link", "set", "lo", "up"], check=False)

    os.chdir(root)
    (root / ".oldroot").mkdir()
    subprocess.run(["pivot_root", ".", ".oldroot"], check=True)
    os.chdir("/")
    subprocess.run(["umount", "-l", "/.oldroot"], check=True)
    os.rmdir("/.oldroot")
    os.execve(
        "/lib/systemd/systemd",
        ["/lib/systemd/systemd", "--system", "--unit=multi-user.target"],
        {"container": "procmond-test", "PATH": PATH},
    )


if __name__ == "__main__":
    if sys.argv[1:2] == ["prelude"]:
        prelude(Path(sys.argv[2]))
    else:
        sys.exit("usage: python -m tests.e2e.systemd_sandbox prelude STATE")
