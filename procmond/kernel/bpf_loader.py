"""Compile, load and attach the kernel probe; the only module that imports ``bcc``.

The C source ships as package data (``procmond.bpf``). Everything that varies by host or by
config reaches it as ``-D`` flags: struct offsets from BTF, map capacities, which labels to
keep, and which tracepoint signature this kernel has.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from procmond.config import Config
from procmond.errors import BPFLoadError, PermissionDeniedError
from procmond.kernel import features as kernel
from procmond.kernel import inventory
from procmond.kernel.bpfmap import BPFMap
from procmond.kernel.btf import BTF, BTFError, pids_offsets, probe_offsets, typed_read_offsets
from procmond.kernel.header import bpf_source_dir, map_ids, read_header
from procmond.kernel.layout import Layout, MapLayout, describe
from procmond.kernel.maps import MapReader, check_layouts
from procmond.kernel.mounts import MOUNTINFO, parse_mountinfo, shown_pids_event
from procmond.kernel.perf_links import perf_link_supported, tracepoint_link

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Probe:
    """One attachment point. ``raw`` probes are raw tracepoints (cheaper, args as an array)."""

    target: str  # "category:event", as tracefs names it: "task:task_newtask"
    function: str
    raw: bool
    # Syscall-entry probes start the fork-duration clock and name the call for `watch`;
    # without histograms or watch nothing uses them. Exit probes also count failed calls.
    only_for_timing: bool = False
    # Names new cgroups: only needed when a cgroup label (unit, pod...) is configured.
    for_attribution: bool = False
    # Keeps removed cgroups' refused forks: needs the pids controller's layout from BTF.
    for_task_limits: bool = False

    @property
    def name(self) -> str:
        return self.target.split(":")[-1]

    @property
    def syscall(self) -> bool:
        return self.target.startswith("syscalls:")


BPF_ATOMICS_SINCE = (5, 12)  # BPF atomics: the probe switches a lapsed watch stream off

CREATION_SYSCALLS = ("clone", "clone3", "fork", "vfork")

PROBES: tuple[Probe, ...] = (
    Probe("task:task_newtask", "on_task_newtask", raw=True),
    Probe("sched:sched_process_exec", "on_sched_process_exec", raw=True),
    Probe("sched:sched_process_exit", "on_sched_process_exit", raw=True),
    Probe("cgroup:cgroup_mkdir", "on_cgroup_mkdir", raw=False, for_attribution=True),
    Probe("cgroup:cgroup_rmdir", "on_cgroup_rmdir", raw=True, for_task_limits=True),
    *(
        Probe(
            f"syscalls:sys_{phase}_{call}",
            f"on_sys_{phase}_{call}",
            raw=False,
            only_for_timing=phase == "enter",
        )
        for call in CREATION_SYSCALLS
        for phase in ("enter", "exit")
    ),
)


@dataclass
class LoadedProbe:
    """A compiled and attached probe: the BCC object, and what did and did not attach."""

    bpf: Any
    attached: dict[str, bool]
    btf_offsets: bool
    bcc_version: str
    cflags: list[str] = field(default_factory=list)
    layouts: dict[str, MapLayout] = field(default_factory=dict)
    map_ids: tuple[str, ...] = ()
    duty: int = 0  # the handover value at which this probe counts (procmond/kernel/pins.py)
    # Tracepoints attached as BPF links (BPF_LINK_CREATE on a perf event, Linux 5.15+): a link
    # can be pinned, a perf event's attachment cannot. probe name → link descriptor.
    perf_links: dict[str, int] = field(default_factory=dict)
    _maps: dict[str, BPFMap] = field(default_factory=dict)

    @property
    def pinnable(self) -> bool:
        """Whether every attachment is a link, so the probe can outlive this process."""
        return not self.bpf.tracepoint_fds

    def table(self, name: str) -> Any:
        """BCC's table object (for its ring-buffer API)."""
        return self.bpf[name.encode()]

    def map(self, name: str) -> BPFMap:
        """The map, read by descriptor like the daemon reads it (the descriptor stays BCC's)."""
        if name not in self._maps:
            self._maps[name] = BPFMap(self.table(name).map_fd)
        return self._maps[name]

    def reader(self) -> MapReader:
        return MapReader(self.map, self.layouts, self.map_ids)

    def descriptors(self) -> tuple[dict[str, int], list[int], dict[str, int]]:
        """What procmond/kernel/handoff.py passes: map name → map descriptor, the descriptors that
        hold the probes attached (raw tracepoint links, tracepoint perf events), and probe
        name → its program's descriptor (so that `bpftool prog` names the daemon as their
        holder, and the daemon reads their run-time statistics in its /proc/PID/fdinfo)."""
        links = [
            *self.bpf.raw_tracepoint_fds.values(),
            *self.bpf.tracepoint_fds.values(),
            *self.perf_links.values(),
        ]
        probe_of = {p.function: p.name for p in PROBES}
        programs = {
            probe_of.get(name.decode(), name.decode()): function.fd
            for name, function in self.bpf.funcs.items()
        }
        names = inventory.handed_maps()
        return {name: self.table(name).map_fd for name in names}, links, programs

    def close(self) -> None:
        """Detach every probe and free the maps.

        Each tracepoint detach waits for an RCU grace period (~70 ms measured here): one after
        another, the eight syscall probes made stopping take 0.57 s. Detached from parallel
        threads (the ctypes calls release the GIL) they share grace periods.
        """
        tracepoints = list(self.bpf.tracepoint_fds)
        links = list(self.perf_links.values())
        self.perf_links = {}
        if tracepoints or links:
            with ThreadPoolExecutor(len(tracepoints) + len(links)) as pool:
                list(pool.map(self.bpf.detach_tracepoint, tracepoints))
                list(pool.map(os.close, links))
        self.bpf.cleanup()


def build_cflags(
    config: Config,
    watch: bool = False,
    btf_path: Path | None = None,
    force_no_group_dead: bool = False,
    source_dir: Path | None = None,
    force_probe_reads: bool = False,
) -> tuple[list[str], bool]:
    """The -D flags for this host and config, and whether struct offsets came from BTF.

    ``force_no_group_dead`` and ``force_probe_reads`` take the paths older kernels take, so
    that tests run them here."""
    flags = [
        f"-I{source_dir or bpf_source_dir()}",
        f"-DMAX_ENTRIES={config.max_entries}",
        f"-DHISTOGRAM_MAX_ENTRIES={config.histogram_max_entries}",
        f"-DHISTOGRAMS={int(config.histograms)}",
        f"-DSYSCALL_PROBES={int(config.syscall_probes)}",
        f"-DLABEL_COMM={int('comm' in config.labels)}",
        f"-DLABEL_PARENT_COMM={int('parent_comm' in config.labels)}",
        f"-DLABEL_CGROUP={int(bool(config.cgroup_labels))}",
        f"-DCGROUP_PATHS_MAX_ENTRIES={config.max_entries}",
    ]
    if watch:
        flags.append("-DPROCMOND_WATCH")
    if kernel.kernel_version() >= BPF_ATOMICS_SINCE:
        flags.append("-DHAVE_BPF_ATOMICS")
    ret = kernel.tracepoint_field_offset("syscalls", "sys_exit_clone", "ret")
    if ret is not None:
        flags.append(f"-DSYS_EXIT_RET_OFF={ret}")
    if not force_no_group_dead and kernel.tracepoint_has_field(
        "sched", "sched_process_exit", "group_dead"
    ):
        flags.append("-DEXIT_HAS_GROUP_DEAD")
    try:
        btf = BTF.from_file(btf_path) if btf_path else BTF.from_file()
        offsets = probe_offsets(btf)
    except BTFError as exc:
        log.warning(
            "kernel BTF unusable (%s): falling back to the installed kernel headers' struct "
            "layout, which is wrong if they are not this kernel's; parent names and lifetimes "
            "may be garbage (procmond_btf_offsets_in_use 0), and task-limit hits of cgroups "
            "removed between two scrapes are not counted",
            exc,
        )
        return flags, False
    flags.append("-DPROCMOND_BTF_OFFSETS")
    flags += [f"-D{name}={value}" for name, value in offsets.items()]
    if not force_probe_reads:
        flags += typed_read_flags(btf)
    flags += task_limit_flags(btf)
    return list(dict.fromkeys(flags)), True  # typed reads and task limits share two offsets


TASK_LIMIT_FLAG = "-DPIDS_EVENTS_OFF"


def task_limit_flags(btf: BTF, mountinfo: Path = MOUNTINFO) -> list[str]:
    """The offsets with which the probe reads a removed cgroup's refused forks, else nothing
    (those of cgroups removed between two scrapes then go uncounted, as logged)."""
    try:
        shown = shown_pids_event(parse_mountinfo(mountinfo.read_text(errors="surrogateescape")))
        offsets = pids_offsets(btf, shown)
    except (BTFError, OSError) as exc:
        log.warning(
            "task-limit hits of cgroups removed between two scrapes will not be counted: "
            "cannot find the pids controller's counts (%s)",
            exc,
        )
        return []
    return [f"-D{name}={value}" for name, value in offsets.items()]


# bpf_get_current_task_btf(), which makes the current task a typed pointer, came in 5.11.
TYPED_READS_SINCE = (5, 11)


def typed_read_flags(btf: BTF) -> list[str]:
    """-DPROCMOND_TASK_BTF and its offsets when the kernel lets the probe read the current task
    by plain loads (a few ns each, against ~60 ns a probe read), else nothing."""
    if kernel.kernel_version() < TYPED_READS_SINCE:
        log.info("kernel older than 5.11: the probe reads task fields with probe reads")
        return []
    try:
        offsets = typed_read_offsets(btf)
    except BTFError as exc:
        log.info("task fields read with probe reads: %s", exc)
        return []
    return ["-DPROCMOND_TASK_BTF"] + [f"-D{name}={value}" for name, value in offsets.items()]


def load(
    config: Config,
    watch: bool = False,
    btf_path: Path | None = None,
    force_no_group_dead: bool = False,
    source_dir: Path | None = None,
    force_probe_reads: bool = False,
    handover: tuple[list[str], int] = ([], 0),
) -> LoadedProbe:
    """Compile, load and attach. Raises PermissionDeniedError or BPFLoadError with the fix.

    ``source_dir`` holds procmond.bpf.c and procmond.h (default: the shipped ones).
    ``handover``: the flags and DUTY of a probe to be pinned (procmond/kernel/pins.py)."""
    missing = kernel.missing_capabilities()
    if missing:
        raise PermissionDeniedError(
            f"procmond needs {' and '.join(missing)} to load its eBPF probe",
            "run it as root (sudo), or through procmond.service which grants them",
        )
    if kernel.tracefs_root() is None:
        raise BPFLoadError(
            "tracefs is not mounted, so tracepoints cannot be attached",
            "mount -t tracefs nodev /sys/kernel/tracing",
        )
    try:
        import bcc
    except ImportError:
        raise BPFLoadError(
            "the BCC Python module (bcc) is not importable",
            "apt-get install python3-bpfcc, and run procmond with /usr/bin/python3 or a venv "
            "made with --system-site-packages",
        ) from None

    source_dir = source_dir or bpf_source_dir()
    cflags, btf_offsets = build_cflags(
        config, watch, btf_path, force_no_group_dead, source_dir, force_probe_reads
    )
    source = source_dir / "procmond.bpf.c"
    cflags += handover[0]
    try:
        bpf = bcc.BPF(src_file=str(source).encode(), cflags=cflags)
    except Exception as exc:  # BCC raises bare Exception for every compile/load failure
        build = kernel.kernel_build_dir()
        hint = (
            f"{build} is missing or unreadable: install kernel headers "
            "(apt-get install linux-headers-$(uname -r)), or run `procmond doctor`"
            if not os.path.isdir(build)  # never raises, unlike Path.exists()
            else "run `procmond doctor`"
        )
        raise BPFLoadError(f"cannot compile or load {source}: {exc}", hint) from None
    probe = LoadedProbe(bpf, {}, btf_offsets, getattr(bcc, "__version__", "unknown"), cflags)
    probe.duty = handover[1]
    try:
        probe.layouts = {name: layout_of(bpf[name.encode()]) for name in inventory.layout_maps()}
        probe.map_ids = map_ids(read_header(source_dir))
        check_layouts(probe.map, probe.layouts)
        probe.layouts.update(record_layouts(bpf))
        task_limits = any(f.startswith(TASK_LIMIT_FLAG + "=") for f in cflags)
        probe.attached = attach(bpf, config, watch, task_limits, probe.perf_links)
    except Exception:
        for fd in probe.perf_links.values():
            os.close(fd)
        bpf.cleanup()
        raise
    return probe


def layout_of(table: Any) -> MapLayout:
    """A BCC table's key and value layout; for a per-CPU map, one CPU's value (BCC's Leaf there
    is the array over CPUs, sLeaf one element of it)."""
    return MapLayout(describe(table.Key), describe(getattr(table, "sLeaf", table.Leaf)))


def record_layouts(bpf: Any) -> dict[str, MapLayout]:
    """The `watch` rings' records (struct creation_event), as BCC typed what the probe writes
    to them; a ring has no key. After check_layouts: a ring's map has no value size."""
    from bcc.table import _get_event_class

    return {
        name: MapLayout(Layout(0, ()), describe(_get_event_class(bpf[name.encode()])))
        for name in inventory.ring_maps()
    }


def wanted_probes(config: Config, watch: bool) -> list[Probe]:
    """The probes this config uses. Any syscall tracepoint puts every task of the host on the
    kernel's slower syscall path, so `syscall_probes: false` drops them all (and with them
    fork durations and failures); entry probes are only needed for their clock."""
    return [
        p
        for p in PROBES
        if (not p.for_attribution or config.cgroup_labels)
        and (not p.for_task_limits or not watch)
        and (
            watch
            or not p.syscall
            or (config.syscall_probes and (config.histograms or not p.only_for_timing))
        )
    ]


def attach(
    bpf: Any,
    config: Config,
    watch: bool,
    task_limits: bool = True,
    perf_links: dict[str, int] | None = None,
) -> dict[str, bool]:
    """Attach what this kernel has; a missing tracepoint is logged and reported, not fatal.
    Without ``task_limits`` (no pids offsets: logged by task_limit_flags) the program is not
    compiled in, and its probe is reported as not attached. Given ``perf_links``, plain
    tracepoints are attached as BPF links where the kernel can (procmond/kernel/perf_links.py), and
    their descriptors put there; elsewhere through BCC's perf events, as before."""
    attached: dict[str, bool] = {}
    for probe in wanted_probes(config, watch):
        if probe.for_task_limits and not task_limits:
            attached[probe.name] = False
            continue
        try:
            if probe.raw:
                bpf.attach_raw_tracepoint(tp=probe.name.encode(), fn_name=probe.function.encode())
            elif perf_links is not None and perf_link_supported():
                program = bpf.load_func(probe.function.encode(), bpf.TRACEPOINT)
                perf_links[probe.name] = tracepoint_link(program.fd, probe.target)
            else:
                bpf.attach_tracepoint(tp=probe.target.encode(), fn_name=probe.function.encode())
            attached[probe.name] = True
        except Exception as exc:
            log.error(
                "cannot attach probe %s: %s; its metrics will stay at zero", probe.target, exc
            )
            attached[probe.name] = False
    if not any(attached.values()):
        raise BPFLoadError("no probe could be attached", "run `procmond doctor`")
    return attached
