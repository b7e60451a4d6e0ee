"""Why the probe's loader died, when memory is the cause: one line with the fix.

Compiling the probe (BCC: LLVM and clang, in the loader child) is the one moment procmond needs
real memory. Measured here (docs/architecture.md, "Memory while loading"): the child peaks at
~145 MiB resident (~64 MiB of heap, the rest the compiler's library pages) and ~294 MiB of
address space for about a second; the daemon stays near 30 MiB. Two kinds of limit cut that
short, and neither says so by itself:

- a memory cgroup (systemd's MemoryMax=, a pod's memory limit): the kernel's OOM killer sends
  the child SIGKILL. The cgroup counts the kill (v2 ``memory.events``, v1
  ``memory.oom_control``: ``oom_kill``), so it is read before the child starts and after.
- RLIMIT_AS (``ulimit -v``, ``prlimit --as``, LimitAS=): mmap fails, which shows as a library
  that cannot be mapped, a MemoryError, or C++'s std::bad_alloc (SIGABRT), depending on where.
"""

from __future__ import annotations

import os
import resource
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from procmond.errors import BPFLoadError
from procmond.kernel.mounts import MOUNTINFO, parse_mountinfo

PROC_CGROUP = Path("/proc/self/cgroup")
LOADER_PEAK_MIB = 150  # the loader child's resident peak (VmHWM, 145 MiB measured)
LOADER_ADDRESS_SPACE_MIB = 300  # its address space at the peak (VmPeak, 294 MiB measured)
# The least memory limit of the whole service under which loading stays prompt. With a cold
# page cache the cgroup's peak was 163-193 MiB (the compiler's libraries are charged to the
# first cgroup that reads them); under a 96 MiB limit it still loaded, in 2.4 s instead of
# 0.7 s (the kernel reclaimed those pages meanwhile); under 80 MiB the child was OOM-killed.
MEMORY_NEEDED_MIB = 192
ADDRESS_SPACE_NEEDED_MIB = 384  # RLIMIT_AS applies per process: the child's 294 MiB, and room
_NO_LIMIT = 1 << 62  # v1 writes "no limit" as the largest page-aligned long
_NEED = f"compiling the probe needs about {LOADER_PEAK_MIB} MiB for a second or two"
_RAISE_MEMORY = (
    f"raise MemoryMax= (systemd) or the pod's memory limit to at least {MEMORY_NEEDED_MIB} MiB"
)


@dataclass(frozen=True)
class MemoryCgroup:
    """One memory cgroup of this process (its own or an ancestor): where its files are."""

    path: str  # the cgroup's path, as /proc/self/cgroup names it
    directory: Path
    version: int  # 1 or 2

    def oom_kills(self) -> int | None:
        """Processes the OOM killer killed in it, or None if that cannot be read."""
        name = "memory.events" if self.version == 2 else "memory.oom_control"
        try:
            text = (self.directory / name).read_text()
        except OSError:
            return None
        return _field(text, "oom_kill")

    def limit(self) -> int | None:
        """Its memory limit in bytes, or None for none (or unreadable)."""
        name = "memory.max" if self.version == 2 else "memory.limit_in_bytes"
        try:
            text = (self.directory / name).read_text().strip()
        except OSError:
            return None
        if not text.isdigit() or int(text) >= _NO_LIMIT:
            return None
        return int(text)


def _field(text: str, key: str) -> int | None:
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name == key and value.strip().isdigit():
            return int(value)
    return None


def holds_us(cgroup: MemoryCgroup) -> bool:
    """Whether the directory really is this process's memory cgroup: it lists our pid, and on
    v2 its memory controller is on (memory.max). A mount can hide another (a host's hierarchy
    mounted over a container's own), and then the path leads elsewhere."""
    try:
        pids = (cgroup.directory / "cgroup.procs").read_text().split()
    except OSError:
        return False
    on = cgroup.version == 1 or (cgroup.directory / "memory.max").exists()
    return on and str(os.getpid()) in pids


def memory_cgroups(
    mountinfo: str, proc_cgroup: str, ours: Callable[[MemoryCgroup], bool] = holds_us
) -> list[MemoryCgroup]:
    """This process's memory cgroup and its ancestors up to the mount's top, innermost first,
    from the texts of /proc/self/mountinfo and /proc/self/cgroup: cgroup v2 where its memory
    controller is on, else v1's memory hierarchy (``ours`` checks the innermost). Empty when
    neither is found, or the mount does not show our own cgroup (a host's hierarchy mounted
    into a container, whose cgroup namespace hides where in it we are)."""
    mounts = parse_mountinfo(mountinfo)
    found: list[list[MemoryCgroup]] = []
    for line in proc_cgroup.splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and not controllers:
            version = 2
            candidates = [m for m in mounts if m.fstype == "cgroup2"]
        elif "memory" in controllers.split(","):
            version = 1
            candidates = [m for m in mounts if m.fstype == "cgroup" and "memory" in m.super_options]
        else:
            continue
        for mount in candidates:
            chain = _chain(Path(mount.mount_point), mount.root, path, version)
            if chain and ours(chain[0]):
                found.append(chain)
                break
    found.sort(key=lambda chain: -chain[0].version)  # v2 first, when it has the controller
    return found[0] if found else []


def _chain(mount_point: Path, root: str, path: str, version: int) -> list[MemoryCgroup]:
    if ".." in root.split("/"):
        return []
    root = root.rstrip("/")
    if path != root and not path.startswith(root + "/"):
        return []
    chain = []
    parts = [p for p in path[len(root) :].split("/") if p]
    while True:
        directory = mount_point.joinpath(*parts)
        cgroup = root + "/" + "/".join(parts) if parts else root or "/"
        chain.append(MemoryCgroup(cgroup, directory, version))
        if not parts:
            return chain
        parts.pop()


def address_space_limit() -> int | None:
    """RLIMIT_AS in bytes (children inherit it), or None when there is none."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_AS)
    return None if soft == resource.RLIM_INFINITY else soft


def _mib(size: int) -> str:
    return f"{size / (1 << 20):.0f} MiB"


@dataclass
class OomWatch:
    """The OOM kills this process's memory cgroups counted before the loader started, to tell
    afterwards whether the kernel killed it for memory."""

    cgroups: list[MemoryCgroup] = field(default_factory=list)
    before: list[int | None] = field(default_factory=list)

    @classmethod
    def start(cls) -> OomWatch:
        try:
            cgroups = memory_cgroups(
                MOUNTINFO.read_text(errors="surrogateescape"),
                PROC_CGROUP.read_text(errors="surrogateescape"),
            )
        except OSError:
            cgroups = []
        return cls(cgroups, [c.oom_kills() for c in cgroups])

    def killed_in(self) -> MemoryCgroup | None:
        """The innermost cgroup that counted an OOM kill since, if any."""
        for cgroup, before in zip(self.cgroups, self.before, strict=True):
            after = cgroup.oom_kills()
            if before is not None and after is not None and after > before:
                return cgroup
        return None

    def countable(self) -> bool:
        return any(before is not None for before in self.before)

    def tightest_limit(self) -> tuple[int, MemoryCgroup] | None:
        limits = [(limit, c) for c in self.cgroups if (limit := c.limit()) is not None]
        return min(limits, key=lambda pair: pair[0]) if limits else None


# ld.so's exit status for a fatal error ("cannot allocate memory for thread-local data" under
# RLIMIT_AS: seen at 256 MiB when the loader starts its first thread)
DYNAMIC_LOADER_FAILURE = 127


def loader_exit_error(status: int, watch: OomWatch) -> BPFLoadError:
    """What to say when the loader child exited (``status``, as Popen gives it) without
    handing over the probe or an error of its own."""
    if status == -signal.SIGKILL:
        return _killed(watch)
    if address_space_limit() is not None:
        if status == -signal.SIGABRT:
            return out_of_memory("SIGABRT, what the compiler does when an allocation fails")
        if status == DYNAMIC_LOADER_FAILURE:
            return out_of_memory(
                f"exit status {status}, the dynamic loader's when it cannot map a library "
                "or allocate a thread's data"
            )
    if status < 0:
        return BPFLoadError(
            f"the probe loader was killed by {signal.Signals(-status).name} before handing "
            "over the probe",
            "its error, if any, is logged just above; run `procmond doctor`",
        )
    return BPFLoadError(
        f"the probe loader exited with status {status} before handing over the probe",
        "its error is logged just above; run `procmond doctor`",
    )


def _killed(watch: OomWatch) -> BPFLoadError:
    tightest = watch.tightest_limit()
    cgroup = watch.killed_in()
    if cgroup is not None:
        if tightest is not None and tightest[1] == cgroup:
            counted = f"its memory cgroup {cgroup.path}, limited to {_mib(tightest[0])}, "
            counted += "counted an OOM kill"
        else:
            counted = f"its memory cgroup {cgroup.path} counted an OOM kill"
            if tightest is not None:
                counted += f"; the tightest limit is {_mib(tightest[0])}, on {tightest[1].path}"
        return BPFLoadError(
            f"the probe loader was killed by the kernel for lack of memory ({counted}): {_NEED}",
            _RAISE_MEMORY,
        )
    if watch.countable():
        return BPFLoadError(
            "the probe loader was killed (SIGKILL), and not by the kernel's OOM killer (its "
            "memory cgroup counted no OOM kill): something else sent it",
            "look for what stops procmond (a supervisor's timeout?); run `procmond doctor`",
        )
    limit = f" (a limit of {_mib(tightest[0])} is on {tightest[1].path})" if tightest else ""
    return BPFLoadError(
        f"the probe loader was killed by the kernel (SIGKILL), most likely for memory{limit}: "
        f"{_NEED}",
        _RAISE_MEMORY,
    )


def out_of_memory(what: str) -> BPFLoadError:
    """The loader ran out of memory without being killed: its address space is limited, or
    the host has none left. ``what``: how it showed (a MemoryError, a failed mapping)."""
    limit = address_space_limit()
    if limit is not None:
        return BPFLoadError(
            f"the probe loader ran out of address space ({what}): RLIMIT_AS is {_mib(limit)} "
            f"(ulimit -v, prlimit --as, LimitAS=) and compiling the probe maps about "
            f"{LOADER_ADDRESS_SPACE_MIB} MiB",
            f"raise that limit to at least {ADDRESS_SPACE_NEEDED_MIB} MiB, or remove it",
        )
    return BPFLoadError(
        f"the probe loader ran out of memory ({what}): {_NEED}", f"free memory, or {_RAISE_MEMORY}"
    )


def is_out_of_memory(exc: BaseException) -> bool:
    """A MemoryError, or a library that could not be mapped (glibc's dlopen message: what
    ctypes raises when importing bcc under a tight RLIMIT_AS)."""
    return isinstance(exc, MemoryError) or (
        isinstance(exc, OSError) and "failed to map segment" in str(exc)
    )
