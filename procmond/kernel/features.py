"""What the running kernel offers: tracefs, tracepoints and their fields, BTF, capabilities.

Read-only probing, shared by the loader (to decide what to compile and attach) and by
``procmond doctor`` (to tell a person what is missing).
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

TRACEFS_CANDIDATES = (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing"))

# Capability bits (include/uapi/linux/capability.h).
CAP_SYS_ADMIN = 21
CAP_PERFMON = 38
CAP_BPF = 39


def kernel_release() -> str:
    return platform.release()


def kernel_version(release: str | None = None) -> tuple[int, int]:
    """(major, minor) of the running kernel, from its release ("6.18.44-fc" -> (6, 18))."""
    numbers = (release or kernel_release()).split("-")[0].split(".")
    try:
        return int(numbers[0]), int(numbers[1])
    except (IndexError, ValueError):
        return 0, 0


def tracefs_root() -> Path | None:
    """The mounted tracefs (where tracepoint ids and formats live), or None."""
    for root in TRACEFS_CANDIDATES:
        if (root / "events").is_dir():
            return root
    return None


def tracepoint_format(category: str, event: str) -> str | None:
    """The tracepoint's format file, or None if tracefs is missing or the kernel lacks it."""
    root = tracefs_root()
    if root is None:
        return None
    try:
        return (root / "events" / category / event / "format").read_text()
    except OSError:
        return None


def tracepoint_fields(category: str, event: str) -> dict[str, int]:
    """Field name → byte offset in the tracepoint's record, from its format file."""
    fields = {}
    for line in (tracepoint_format(category, event) or "").splitlines():
        parts = [p.strip() for p in line.strip().split(";")]
        if not parts[0].startswith("field:") or len(parts) < 2:
            continue
        name = parts[0].split()[-1].split("[")[0]
        if parts[1].startswith("offset:"):
            fields[name] = int(parts[1].removeprefix("offset:"))
    return fields


def tracepoint_has_field(category: str, event: str, field: str) -> bool:
    return field in tracepoint_fields(category, event)


def tracepoint_field_offset(category: str, event: str, field: str) -> int | None:
    return tracepoint_fields(category, event).get(field)


def effective_capabilities(status: Path = Path("/proc/self/status")) -> int:
    for line in status.read_text().splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    return 0


def missing_capabilities(caps: int | None = None) -> list[str]:
    """Capabilities that loading and attaching the probe needs and this process lacks.

    Tracepoint programs need CAP_BPF (the bpf() calls) and CAP_PERFMON (perf_event_open
    system-wide); CAP_SYS_ADMIN implies both on kernels older than 5.8.
    """
    caps = effective_capabilities() if caps is None else caps
    if caps & (1 << CAP_SYS_ADMIN):
        return []
    return [
        name
        for bit, name in ((CAP_BPF, "CAP_BPF"), (CAP_PERFMON, "CAP_PERFMON"))
        if not caps & (1 << bit)
    ]


def kernel_build_dir(release: str | None = None) -> Path:
    return Path("/lib/modules") / (release or kernel_release()) / "build"


def is_root() -> bool:
    return os.geteuid() == 0
