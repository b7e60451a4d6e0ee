"""Give up every capability once the probe is loaded: from then on the daemon only reads maps.

The loader child (procmond/kernel/handoff.py) needs CAP_BPF and CAP_PERFMON; the daemon it hands the
descriptors to only reads maps through them, answers HTTP and closes the descriptors at exit,
none of which needs a capability on current kernels (6.5 on: the bpf() commands on a map
descriptor already held are not privileged). Keeping them would let whoever takes over the
HTTP thread load BPF programs and read kernel memory; run by hand as root, the daemon would
keep every capability there is.

Capabilities belong to each thread, not to the process, so this must run while the daemon
has one thread: threads started later inherit the creating thread's sets.

Older kernels refuse every bpf() command without CAP_BPF when
kernel.unprivileged_bpf_disabled is set (Debian's and Ubuntu's default). There the daemon
keeps CAP_BPF and nothing else, found out by a real map read with CAP_BPF only permitted, not
effective (so it can be raised again), and it says so in its log and in
procmond_capabilities_retained.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from procmond.errors import PermissionDeniedError
from procmond.kernel.features import CAP_BPF

log = logging.getLogger(__name__)

# include/uapi/linux/capability.h, by bit number
CAPABILITY_NAMES = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
)
CAP_SETPCAP = CAPABILITY_NAMES.index("CAP_SETPCAP")

_LINUX_CAPABILITY_VERSION_3 = 0x20080522  # 64-bit sets, as two 32-bit halves
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4


def capability_names(mask: int) -> list[str]:
    return [
        CAPABILITY_NAMES[bit] if bit < len(CAPABILITY_NAMES) else f"capability {bit}"
        for bit in range(mask.bit_length())
        if mask >> bit & 1
    ]


@dataclass(frozen=True)
class CapabilitySets:
    """The calling thread's three capability sets, as bit masks."""

    effective: int
    permitted: int
    inheritable: int


class Capabilities(Protocol):
    """The system calls the decision needs; LinuxCapabilities is the real thing, unit tests
    use a fake with the kernel's rules."""

    def get(self) -> CapabilitySets: ...
    def set(self, sets: CapabilitySets) -> None: ...
    def drop_bounding(self, bit: int) -> None: ...
    def clear_ambient(self) -> None: ...
    def forbid_new_privileges(self) -> None: ...
    def last_cap(self) -> int: ...
    def threads(self) -> int: ...


class _Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _Data(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


@functools.cache
def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl.argtypes = [ctypes.c_int, *[ctypes.c_ulong] * 4]
    return libc


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


class LinuxCapabilities:
    """capget/capset/prctl of the calling thread, through libc."""

    def get(self) -> CapabilitySets:
        data = (_Data * 2)()
        _check(
            _libc().capget(ctypes.byref(_Header(_LINUX_CAPABILITY_VERSION_3, 0)), data), "capget"
        )
        return CapabilitySets(
            data[0].effective | data[1].effective << 32,
            data[0].permitted | data[1].permitted << 32,
            data[0].inheritable | data[1].inheritable << 32,
        )

    def set(self, sets: CapabilitySets) -> None:
        data = (_Data * 2)()
        for half in (0, 1):
            shift = 32 * half
            data[half].effective = sets.effective >> shift & 0xFFFFFFFF
            data[half].permitted = sets.permitted >> shift & 0xFFFFFFFF
            data[half].inheritable = sets.inheritable >> shift & 0xFFFFFFFF
        _check(
            _libc().capset(ctypes.byref(_Header(_LINUX_CAPABILITY_VERSION_3, 0)), data), "capset"
        )

    def drop_bounding(self, bit: int) -> None:
        _check(_libc().prctl(PR_CAPBSET_DROP, bit, 0, 0, 0), "PR_CAPBSET_DROP")

    def clear_ambient(self) -> None:
        _check(_libc().prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0), "PR_CAP_AMBIENT")

    def forbid_new_privileges(self) -> None:
        _check(_libc().prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "PR_SET_NO_NEW_PRIVS")

    def last_cap(self) -> int:
        return int(Path("/proc/sys/kernel/cap_last_cap").read_text())

    def threads(self) -> int:
        return len(os.listdir("/proc/self/task"))


@dataclass(frozen=True)
class DropResult:
    held: tuple[str, ...]  # what the daemon had before
    retained: tuple[str, ...]  # what it still has: () or ("CAP_BPF",)
    bounding_emptied: bool  # False without CAP_SETPCAP (under systemd): NoNewPrivileges covers it


def retained_count(capabilities: Capabilities | None = None) -> int:
    """Capabilities the calling thread may still use (its permitted set), for the self-metric:
    read from the kernel at each scrape, so it shows what is true, not what was intended."""
    return (capabilities or LinuxCapabilities()).get().permitted.bit_count()


def drop_all(
    read_map: Callable[[], object], capabilities: Capabilities | None = None
) -> DropResult:
    """Give up every capability the daemon holds, keeping CAP_BPF only where ``read_map``
    (a real read through a handed-over map descriptor) fails without it.

    Order matters: the bounding set first (dropping from it needs CAP_SETPCAP, which goes
    next), then no_new_privs (an exec could otherwise give uid 0 its capabilities back), then
    the thread's own sets. Ambient capabilities (systemd's AmbientCapabilities=) go as well.
    """
    caps = capabilities or LinuxCapabilities()
    if caps.threads() != 1:
        raise RuntimeError("capabilities are per thread: drop them before any thread starts")
    before = caps.get()
    bounding_emptied = bool(before.effective >> CAP_SETPCAP & 1)
    if bounding_emptied:
        for bit in range(caps.last_cap() + 1):
            caps.drop_bounding(bit)
    caps.clear_ambient()
    caps.forbid_new_privileges()
    spare = before.permitted & 1 << CAP_BPF  # permitted, not effective: can be raised again
    caps.set(CapabilitySets(0, spare, 0))
    if spare:
        needed = _bpf_needed(read_map, caps, spare)
        caps.set(CapabilitySets(needed, needed, 0))
    after = caps.get()
    result = DropResult(
        tuple(capability_names(before.permitted)),
        tuple(capability_names(after.permitted)),
        bounding_emptied,
    )
    _report(result)
    return result


def _bpf_needed(read_map: Callable[[], object], caps: Capabilities, spare: int) -> int:
    """``spare`` if this kernel needs CAP_BPF to read a map by descriptor, else 0."""
    try:
        read_map()
        return 0
    except PermissionError:
        pass
    caps.set(CapabilitySets(spare, spare, 0))
    try:
        read_map()
    except PermissionError as exc:
        raise PermissionDeniedError(
            f"cannot read the probe's maps even with CAP_BPF ({exc})",
            "run `procmond doctor`",
        ) from None
    return spare


def _report(result: DropResult) -> None:
    held = ", ".join(result.held) if len(result.held) <= 4 else f"{len(result.held)} of them"
    bounding = "bounding set emptied" if result.bounding_emptied else "bounding set kept"
    if result.retained:
        log.warning(
            "privileges: kept %s, gave up the rest (held %s; %s; no new privileges): this "
            "kernel refuses to read a BPF map by descriptor without it",
            ", ".join(result.retained),
            held or "none",
            bounding,
        )
    else:
        log.info(
            "privileges: gave up every capability (held %s; %s; no new privileges)",
            held or "none",
            bounding,
        )
