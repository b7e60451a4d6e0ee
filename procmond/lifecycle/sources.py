"""The daemon's cgroup sources: naming, attribution and task limits, wired from the config.

Made once at start (so that what attribution and the task limits fold survives a reload that
rebinds the listener), then handed to the scrape (procmond/scrape/collector.py), the storm
reports and the state file. Every table of cgroups is capped at ``metrics.cgroups_capacity``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from procmond.config import Config
from procmond.kernel.maps import MapReader
from procmond.naming.cgroups import (
    CgroupLayout,
    CgroupNamer,
    CgroupResolver,
    read_layout,
    recorded_paths,
)
from procmond.naming.kubelet import KubeletNames
from procmond.naming.runtimes import runtimes, state_watcher
from procmond.naming.watcher import StateWatcher
from procmond.scrape.attribution import Attribution
from procmond.scrape.metrics import OVERFLOW_LABEL_VALUE, cgroups_capacity, folded_capacity
from procmond.scrape.tasklimits import TaskLimits, find_pids_hierarchy, gone_cgroups

log = logging.getLogger(__name__)


@dataclass
class CgroupSources:
    """Where the cgroup labels come from, and the pids controller's refused forks."""

    layout: CgroupLayout
    task_limits: TaskLimits
    attribution: Attribution | None  # None: no cgroup label is kept
    resolver: CgroupResolver  # cgroup id → labels, for attribution and storm reports
    namer: CgroupNamer | None = None  # whether cgroups are gone, for attribution


def cgroup_sources(config: Config, reader: MapReader) -> tuple[CgroupSources, StateWatcher | None]:
    """The cgroup sources, and the watcher that reads runtimes' names as they write them (to
    be started once capabilities are dropped)."""
    layout = read_layout()
    log.info("cgroups: %s", layout.describe())
    cgroups = cgroups_capacity(config)  # the caps on everything kept of cgroups
    kubelet = KubeletNames(capacity=cgroups)
    containers = runtimes(config, cgroups)
    watcher = state_watcher(containers, cgroups)
    resolver = CgroupResolver(
        layout.v2,
        kernel_path=recorded_paths(reader),
        kubelet=kubelet,
        runtimes=containers,
        capacity=cgroups,
        negative_capacity=cgroups,
        pending_capacity=cgroups,
    )
    task_limits = TaskLimits(find_pids_hierarchy(layout), resolver, gone=gone_cgroups(reader))
    if not config.cgroup_labels:
        return CgroupSources(layout, task_limits, None, resolver), watcher
    namer = CgroupNamer(resolver, layout.v2, capacity=cgroups)
    attribution = Attribution(
        namer, folded_capacity(config), OVERFLOW_LABEL_VALUE, max_cgroups=cgroups
    )
    return CgroupSources(layout, task_limits, attribution, resolver, namer), watcher
