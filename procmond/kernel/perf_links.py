"""Tracepoints attached as BPF links, which bpffs can pin, rather than as perf events.

BCC attaches a tracepoint program to a perf event (PERF_EVENT_IOC_SET_BPF): that attachment
lives as long as the perf event's descriptor and cannot be pinned, so it would go with the
daemon. Since Linux 5.15 BPF_LINK_CREATE makes a link of it (BPF_PERF_EVENT): the link holds
the perf event, and a pinned link keeps the program attached while no process runs
(procmond/kernel/pins.py). Older kernels keep BCC's perf events: the probe is then not pinned.
"""

from __future__ import annotations

import ctypes
import os
import platform

from procmond.errors import BPFLoadError
from procmond.kernel import features as kernel
from procmond.kernel.bpfmap import libbpf

PERF_LINKS_SINCE = (5, 15)
_BPF_PERF_EVENT = 41  # enum bpf_attach_type
_PERF_TYPE_TRACEPOINT = 2
_PERF_ATTR_SIZE = 112  # PERF_ATTR_SIZE_VER5
_PERF_FLAG_FD_CLOEXEC = 8
_PERF_EVENT_IOC_ENABLE = 0x2400
_PERF_EVENT_OPEN = {"x86_64": 298, "aarch64": 241, "riscv64": 241, "ppc64le": 319, "s390x": 331}


def perf_link_supported() -> bool:
    return kernel.kernel_version() >= PERF_LINKS_SINCE and platform.machine() in _PERF_EVENT_OPEN


def tracepoint_link(program_fd: int, target: str) -> int:
    """Attach ``program_fd`` to tracepoint ``target`` ("category:event") as a BPF link; the
    link's descriptor (the perf event's own is closed: the link holds it)."""
    root = kernel.tracefs_root()
    if root is None:
        raise BPFLoadError("tracefs is not mounted", "mount -t tracefs nodev /sys/kernel/tracing")
    category, event = target.split(":")
    tracepoint_id = int((root / "events" / category / event / "id").read_text())
    attr = ctypes.create_string_buffer(_PERF_ATTR_SIZE)
    ctypes.c_uint32.from_buffer(attr, 0).value = _PERF_TYPE_TRACEPOINT
    ctypes.c_uint32.from_buffer(attr, 4).value = _PERF_ATTR_SIZE
    ctypes.c_uint64.from_buffer(attr, 8).value = tracepoint_id
    ctypes.c_uint64.from_buffer(attr, 16).value = 1  # sample_period
    ctypes.c_uint32.from_buffer(attr, 48).value = 1  # wakeup_events
    libc = ctypes.CDLL(None, use_errno=True)
    perf_fd = libc.syscall(
        _PERF_EVENT_OPEN[platform.machine()], attr, -1, 0, -1, _PERF_FLAG_FD_CLOEXEC
    )
    if perf_fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"perf_event_open({target}): {os.strerror(err)}")
    try:
        link_fd = libbpf("bpf_link_create", program_fd, perf_fd, _BPF_PERF_EVENT, None)
        libc.ioctl(perf_fd, _PERF_EVENT_IOC_ENABLE, 0)
    finally:
        os.close(perf_fd)
    return link_fd
