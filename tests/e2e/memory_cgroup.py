"""A real memory cgroup with a limit, for a command under test, removed afterwards even when
the test fails (what still runs in it is killed first).

Cgroup v2 (memory.max) where the v2 root hands the memory controller to its children; else
the v1 memory hierarchy, nested inside this test's own memory cgroup so that whatever limits
the test keep applying."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

from procmond.kernel.mounts import MOUNTINFO, parse_mountinfo


class MemoryCgroup:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        mounts = parse_mountinfo(MOUNTINFO.read_text())
        name = f"procmond-test-memory-{os.getpid()}-{id(self):x}"
        v2 = [Path(m.mount_point) for m in mounts if m.fstype == "cgroup2" and m.root == "/"]
        if v2 and "memory" in (v2[0] / "cgroup.subtree_control").read_text().split():
            self.version, self.directory, self.path = 2, v2[0] / name, f"/{name}"
            return
        v1 = [m for m in mounts if m.fstype == "cgroup" and "memory" in m.super_options]
        assert v1, "no memory controller: neither on cgroup v2 nor a v1 hierarchy"
        own = next(
            line.split(":", 2)[2]
            for line in Path("/proc/self/cgroup").read_text().splitlines()
            if "memory" in line.split(":")[1].split(",")
        )
        root = v1[0].root.rstrip("/")
        assert own == root or own.startswith(root + "/"), (own, v1[0].root)
        self.version = 1
        self.path = f"{own.rstrip('/')}/{name}"
        self.directory = Path(v1[0].mount_point) / self.path[len(root) :].lstrip("/")

    def __enter__(self) -> MemoryCgroup:
        self.directory.mkdir()
        try:
            limit_file = "memory.max" if self.version == 2 else "memory.limit_in_bytes"
            (self.directory / limit_file).write_text(str(self.limit))
            if self.version == 2:
                (self.directory / "memory.swap.max").write_text("0")
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def command(self, *argv: str) -> list[str]:
        """``argv``, run inside the cgroup (a shell moves itself in, then execs it)."""
        procs = self.directory / "cgroup.procs"
        return ["sh", "-c", 'echo $$ > "$0" && exec "$@"', str(procs), *argv]

    def oom_kills(self) -> int:
        name = "memory.events" if self.version == 2 else "memory.oom_control"
        for line in (self.directory / name).read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        raise AssertionError(f"no oom_kill line in {self.directory / name}")

    def peak(self) -> int | None:
        """The most memory it was charged, in bytes (v2's memory.peak needs Linux 5.19)."""
        name = "memory.peak" if self.version == 2 else "memory.max_usage_in_bytes"
        try:
            return int((self.directory / name).read_text())
        except OSError:
            return None

    def remove(self) -> None:
        for _ in range(100):
            try:
                pids = (self.directory / "cgroup.procs").read_text().split()
            except FileNotFoundError:
                return
            for pid in pids:  # only what this test started runs here
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
            try:
                self.directory.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.05)
        raise AssertionError(f"cannot remove {self.directory}")
