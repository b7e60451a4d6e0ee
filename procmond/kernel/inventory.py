"""The one inventory of the probe's maps: their names and what procmond does with each.

bpf/procmond.h lists every map procmond.bpf.c declares in ``enum probe_map``, each with its
roles (``enum map_role`` bits): which are counters or histograms, which the daemon holds and
pins, which the storm alarm, the watch stream and the storm reports use. Every other module
takes map names and groups from here, never as string literals of its own, so a map added,
renamed or given another role is changed in the header and, where Python must name it, once
here (each name below is checked against the header when this module is imported).

The scalars the probe keeps in its arrays (a u64 count, a u32 index or switch) are read and
written through ``COUNT`` and ``SLOT``; structs are decoded by the layouts the compiled
program reports (procmond/kernel/layout.py).
"""

from __future__ import annotations

import functools
import struct

from procmond.kernel.header import HeaderError, read_header

_MEMBER_PREFIX = "PROBE_MAP_"
_ROLE_PREFIX = "MAP_ROLE_"

# The u64 of a counter map's value, of an overflow slot, of storm_alarm, watch_leases and
# watch_lost; and the u32 of an array's index, of storm_watch's generation and of handover's
# DUTY.
COUNT = struct.Struct("=Q")
SLOT = struct.Struct("=I")
FIRST = SLOT.pack(0)  # the key of a one-entry array


@functools.cache
def roles() -> dict[str, int]:
    """Map name → its role bits, in the header's order."""
    header = read_header()
    out: dict[str, int] = {}
    for member, bits in header.enum("probe_map").items():
        if not member.startswith(_MEMBER_PREFIX):
            raise HeaderError(f"enum probe_map: {member} does not start with {_MEMBER_PREFIX}")
        out[member[len(_MEMBER_PREFIX) :].lower()] = bits
    return out


def _bit(role: str) -> int:
    try:
        return read_header().enum("map_role")[_ROLE_PREFIX + role.upper()]
    except KeyError:
        raise HeaderError(f"procmond.h has no map role {_ROLE_PREFIX}{role.upper()}") from None


def having(*wanted: str, without: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The maps that have every role of ``wanted`` and none of ``without``, in header order."""
    need = functools.reduce(lambda a, b: a | b, (_bit(r) for r in wanted), 0)
    refuse = functools.reduce(lambda a, b: a | b, (_bit(r) for r in without), 0)
    return tuple(
        name for name, bits in roles().items() if bits & need == need and not bits & refuse
    )


def _named(name: str) -> str:
    if name not in roles():
        raise HeaderError(f"procmond.h's enum probe_map lists no map {name}")
    return name


# The maps Python names one by one.
FORKS_TOTAL = _named("forks_total")
THREADS_CREATED_TOTAL = _named("threads_created_total")
EXECS_TOTAL = _named("execs_total")
EXITS_TOTAL = _named("exits_total")
FORK_FAILURES_TOTAL = _named("fork_failures_total")
PROCESS_LIFETIME_SECONDS = _named("process_lifetime_seconds")
FORK_DURATION_SECONDS = _named("fork_duration_seconds")
OVERFLOW_EVENTS = _named("overflow_events")
OVERFLOW_HIST = _named("overflow_hist")
CGROUP_PATHS = _named("cgroup_paths")
GONE_TASK_LIMIT_HITS = _named("gone_task_limit_hits")
INFLIGHT = _named("inflight")  # task-local storage of fork-duration starts (syscall probes)
STORM_WATCH = _named("storm_watch")
CREATORS = _named("creators")
STORM_ALARM = _named("storm_alarm")
STORM_WAKE = _named("storm_wake")
WATCH_LEASES = _named("watch_leases")
WATCH_LOST = _named("watch_lost")
HANDOVER = _named("handover")


def counter_maps() -> tuple[str, ...]:
    """The counter metrics' maps (procmond/scrape/metrics.py COUNTERS names each once)."""
    return having("counter")


def histogram_maps() -> tuple[str, ...]:
    """The histogram metrics' maps."""
    return having("histogram")


def handed_maps() -> tuple[str, ...]:
    """Every map the loader hands to the daemon, which holds and pins them."""
    return having("handed")


def layout_maps() -> tuple[str, ...]:
    """The handed maps whose key and value layouts are handed with them (not the rings)."""
    return having("handed", "layout", without=("ring",))


def ring_maps() -> tuple[str, ...]:
    """`procmond watch`'s rings, one per reader: their records' layouts are handed."""
    return having("ring")


def alarm_maps() -> tuple[str, ...]:
    """The storm alarm's maps (fixed sizes, no layout)."""
    return having("alarm")


def stream_maps() -> tuple[str, ...]:
    """Every map of `procmond watch`'s event stream."""
    return having("stream")
