"""The metric contract: one table of every metric procmond derives from its kernel maps.

Each BPF map is named after its metric's stem (``forks_total`` → ``procmond_forks_total``); the
maps' names and roles are procmond/kernel/inventory.py's (from bpf/procmond.h).
The dashboard and alert rules rely on these names; change them only with a note to users.
"""

from __future__ import annotations

import errno
import functools
import itertools
import math
from dataclasses import dataclass

from prometheus_client.utils import floatToGoString

from procmond.config import CGROUP_LABELS, KNOWN_LABELS, Config
from procmond.kernel import inventory
from procmond.kernel.maps import Histogram
from procmond.text import decoded

OVERFLOW_LABEL_VALUE = "__overflow__"
# A failed clone, clone3, fork or vfork returns -errno, and errno values run from 1 to
# MAX_ERRNO (include/linux/err.h): the values the `error` key field can take.
MAX_ERRNO = 4095
# Key fields other than command names, and how many values each can take.
BOUNDED_KEY_FIELDS = {"error": MAX_ERRNO}


@dataclass(frozen=True)
class CounterMetric:
    name: str
    documentation: str
    map_name: str
    key_fields: tuple[str, ...]  # the map key's fields, in order; each is also a label
    needs_syscall_probes: bool = False


@dataclass(frozen=True)
class HistogramMetric:
    name: str
    documentation: str
    map_name: str
    # Bucket upper bounds are 2^k ns for each k here, then +Inf.
    bucket_exponents: tuple[int, ...]
    key_fields: tuple[str, ...] = ("comm",)
    needs_syscall_probes: bool = False


COUNTERS: tuple[CounterMetric, ...] = (
    CounterMetric(
        "procmond_forks_total",
        "Processes created (fork, vfork, clone and clone3 without CLONE_THREAD), by the "
        "creating process's command and its parent's command.",
        inventory.FORKS_TOTAL,
        ("cgroup_id", "comm", "parent_comm"),
    ),
    CounterMetric(
        "procmond_threads_created_total",
        "Threads created (clone or clone3 with CLONE_THREAD), by the process's command and its "
        "parent's command.",
        inventory.THREADS_CREATED_TOTAL,
        ("cgroup_id", "comm", "parent_comm"),
    ),
    CounterMetric(
        "procmond_execs_total",
        "Successful execs, by the new command and the command of the exec'ing process's parent.",
        inventory.EXECS_TOTAL,
        ("cgroup_id", "comm", "parent_comm"),
    ),
    CounterMetric(
        "procmond_exits_total",
        "Processes exited (once per process, when its last thread exits), by command.",
        inventory.EXITS_TOTAL,
        (
            "cgroup_id",
            "comm",
        ),
    ),
    CounterMetric(
        "procmond_fork_failures_total",
        "Failed clone, clone3, fork and vfork calls, by the caller's command and the error "
        "(EAGAIN: a task limit such as a cgroup's pids.max or RLIMIT_NPROC was hit).",
        inventory.FORK_FAILURES_TOTAL,
        ("cgroup_id", "comm", "error"),
        needs_syscall_probes=True,
    ),
)

HISTOGRAMS: tuple[HistogramMetric, ...] = (
    HistogramMetric(
        "procmond_process_lifetime_seconds",
        "Lifetime of exited processes (exit time minus start time), by command.",
        inventory.PROCESS_LIFETIME_SECONDS,
        tuple(range(16, 47, 2)),
    ),  # 65.5 us .. 19.5 h
    HistogramMetric(
        "procmond_fork_duration_seconds",
        "Time a thread spends in clone, clone3, fork or vfork, by command (for vfork this "
        "includes waiting until the child has exec'd or exited).",
        inventory.FORK_DURATION_SECONDS,
        tuple(range(10, 31, 2)),  # 1 us .. 1.07 s
        needs_syscall_probes=True,
    ),
)


def counters(config: Config) -> tuple[CounterMetric, ...]:
    """The counter metrics this config exposes."""
    return tuple(c for c in COUNTERS if config.syscall_probes or not c.needs_syscall_probes)


def histograms(config: Config) -> tuple[HistogramMetric, ...]:
    """The histogram metrics this config exposes."""
    if not config.histograms:
        return ()
    return tuple(h for h in HISTOGRAMS if config.syscall_probes or not h.needs_syscall_probes)


def attributed_fields(key_fields: tuple[str, ...]) -> tuple[str, ...]:
    """A counter map's key fields once the cgroup id has been turned into its labels
    (procmond/scrape/attribution.py): the cgroup labels first, in CGROUP_LABELS order."""
    if "cgroup_id" not in key_fields:
        return key_fields
    return (*CGROUP_LABELS, *(f for f in key_fields if f != "cgroup_id"))


def counter_fields(spec: CounterMetric, config: Config) -> tuple[str, ...]:
    """The fields of a counter's rows as they are placed: with a cgroup label kept,
    the cgroup id becomes the cgroup labels; without, the probe zeroes it and it is left out."""
    if config.cgroup_labels:
        return attributed_fields(spec.key_fields)
    return tuple(f for f in spec.key_fields if f != "cgroup_id")


def folded_capacity(config: Config) -> int:
    """Series per counter metric, besides __overflow__ (procmond/scrape/attribution.py): live kernel
    entries and gone cgroups' label sets kept in user space share ``max_entries``; a gone
    cgroup's counts go to __overflow__ when the live ones leave no room."""
    return config.max_entries


def cgroups_capacity(config: Config) -> int:
    """Cgroups the daemon keeps anything of (names, paths, attribution records, the kubelet's
    names): as many as the counter maps can hold entries of at once, each its own cgroup.
    Caches of that size keep every cgroup a scrape asks about; gone cgroups are forgotten
    first, so memory does not grow with churn."""
    return config.max_entries * max(1, len(counters(config)))


def label_names(key_fields: tuple[str, ...], config: Config) -> tuple[str, ...]:
    """The labels a metric carries under this config: comm and parent_comm only if configured
    (a dropped one is zeroed in the kernel), any other key field always. The one place the
    ``labels`` setting is read outside the probe's build flags and ``config.cgroup_labels``."""
    return tuple(f for f in key_fields if f not in KNOWN_LABELS or f in config.labels)


def label_value(raw: bytes | int | str) -> str:
    """A key field as a label value. A comm: procmond.text.decoded (invalid UTF-8 → U+FFFD).
    An error number: its symbolic name (EAGAIN), or the number if the name is unknown. A
    cgroup label (unit, pod...) is already text, decoded where it was read."""
    if isinstance(raw, str):
        return raw
    if isinstance(raw, int):
        return errno.errorcode.get(raw, str(raw))
    return decoded(raw)


@functools.cache
def bucket_bounds(exponents: tuple[int, ...]) -> tuple[str, ...]:
    """The ``le`` label values, in seconds, for buckets of 2^k ns."""
    return tuple(floatToGoString(2.0**k / 1e9) for k in exponents)


def cumulative_buckets(hist: Histogram, exponents: tuple[int, ...]) -> list[tuple[str, int]]:
    """Prometheus buckets (le in seconds, cumulative) from log2 slots; +Inf is the count."""
    running = list(itertools.accumulate(hist.slots))
    buckets = [(le, running[k]) for le, k in zip(bucket_bounds(exponents), exponents, strict=True)]
    buckets.append(("+Inf", hist.count))
    return buckets


def series_budget(config: Config) -> int:
    """Worst-case series from the kernel maps, exactly: every map as full as it can get.

    A map holds at most its capacity in label sets, and fewer when its key cannot take that
    many values: a dropped label is zeroed in the kernel, so with neither comm nor
    parent_comm a counter map holds 1 label set (all events share the zeroed key), and the
    fork-failure map 1 per error (at most MAX_ERRNO). Each labelled metric can also show the
    __overflow__ label set (events whose update failed, a full map being the usual reason);
    a metric left with no labels at all folds those events into its one series. Gone cgroups'
    label sets kept in user space share the map's capacity with its live entries
    (folded_capacity), so a counter shows at most max_entries + 1 series. A histogram label
    set is len(buckets) + 3 series (+Inf, _sum and _count).
    """
    return sum(
        sets * (len(m.bucket_exponents) + 3 if isinstance(m, HistogramMetric) else 1)
        for m, sets in _metric_label_sets(config)
    )


def label_sets_budget(config: Config) -> int:
    """Worst-case label sets over every map family: what the scrape's label text cache
    (procmond/scrape/exposition.py) holds at most."""
    return sum(sets for _, sets in _metric_label_sets(config))


def _metric_label_sets(config: Config) -> list[tuple[CounterMetric | HistogramMetric, int]]:
    """Each family's worst-case label sets (see series_budget)."""
    sets: list[tuple[CounterMetric | HistogramMetric, int]] = []
    for c in counters(config):
        # max_entries: the kernel map's live entries and, with a cgroup label, the label sets
        # of gone cgroups together (folded_capacity, procmond/scrape/attribution.py)
        sets.append((c, _label_sets(counter_fields(c, config), config.max_entries, config)))
    for h in histograms(config):
        sets.append((h, _label_sets(h.key_fields, config.histogram_max_entries, config)))
    return sets


def _label_sets(key_fields: tuple[str, ...], capacity: int, config: Config) -> int:
    """Label sets a map's metric can show under this config (see series_budget)."""
    names = label_names(key_fields, config)
    keys = capacity
    if not any(name in KNOWN_LABELS for name in names):  # no command name: bounded keys
        keys = min(capacity, math.prod(BOUNDED_KEY_FIELDS[name] for name in names))
    return keys + (1 if names else 0)
