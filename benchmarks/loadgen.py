"""The load: the tests' creator (tests/helpers/creator.c, its burst, syscalls, names and steady
forms), compiled here, creating processes and threads under names nothing else on the host
has, so that what each configuration counted can be checked against it."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.support.creator import build_creator
from tests.support.names import unique_name

PATHS = ("fork", "vfork", "clone3", "spawn", "thread")


@dataclass(frozen=True)
class Load:
    """What one loadgen run created, and how fast."""

    mode: str
    workers: int
    created: int
    seconds: float
    per_mode: dict[str, int]

    @property
    def rate(self) -> float:
        return self.created / self.seconds if self.seconds > 0 else 0.0


def unique_comm(tag: str) -> str:
    """A command name (at most 15 bytes) that no other program on the host has."""
    return unique_name("bm", tag).decode()


class LoadGenerator:
    def __init__(self, build_dir: Path) -> None:
        self.binary = build_creator(build_dir)

    def _run(self, *args: str, timeout: float) -> Load:
        result = subprocess.run(
            [str(self.binary), *args], capture_output=True, text=True, timeout=timeout
        )
        if result.returncode != 0:
            raise RuntimeError(f"creator {' '.join(args)} failed: {result.stderr}")
        data = json.loads(result.stdout)
        return Load(
            data["mode"], data["workers"], data["created"], data["seconds"], data["per_mode"]
        )

    def burst(self, path: str, seconds: float, workers: int, comm: str, mib: int = 0) -> Load:
        """``workers`` processes named ``comm`` creating by ``path`` back to back, each with
        ``mib`` MiB of its memory written first."""
        return self._run(
            "burst",
            path,
            str(seconds),
            str(workers),
            comm.encode().hex(),
            str(mib),
            timeout=seconds + 60,
        )

    def syscalls(self, seconds: float, workers: int) -> Load:
        """``workers`` processes calling getppid() back to back: the cost of any syscall."""
        return self._run("syscalls", str(seconds), str(workers), timeout=seconds + 60)

    def names(self, count: int, prefix: str, exit_name: str) -> Load:
        """One fork under each of ``count`` names: one procmond_forks_total series each."""
        return self._run(
            "names", str(count), prefix.encode().hex(), exit_name.encode().hex(), timeout=600
        )

    def steady(self, seconds: float, rate: float, names: int, base: str) -> subprocess.Popen[str]:
        """Start a paced load in the background; its JSON result comes on stdout at the end."""
        return subprocess.Popen(
            [str(self.binary), "steady", str(seconds), str(rate), str(names), base.encode().hex()],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    @staticmethod
    def steady_result(process: subprocess.Popen[str], timeout: float) -> Load:
        out, err = process.communicate(timeout=timeout)
        if process.returncode != 0:
            raise RuntimeError(f"creator steady failed: {err}")
        data = json.loads(out)
        return Load(
            data["mode"], data["workers"], data["created"], data["seconds"], data["per_mode"]
        )
