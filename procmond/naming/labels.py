"""The label values a cgroup gives its counts, and the one cgroup id → labels adapter."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple


class CgroupLabels(NamedTuple):
    """unit, namespace, pod, container, in procmond.config.CGROUP_LABELS's order; "" where
    there is no name. A plain tuple of four strings compares equal to it."""

    unit: str = ""
    namespace: str = ""
    pod: str = ""
    container: str = ""


EMPTY_LABELS = CgroupLabels()

Namer = Callable[[int], CgroupLabels]
# A namer made once a probe is loaded, from its cgroup_mkdir records
# (procmond.kernel.maps.MapReader): what `watch` and `top` take, so that a cgroup made while
# they run is named at once.
Naming = Callable[[Any], Namer]


def names_of(namer: Namer | None, cgroup_id: int) -> CgroupLabels:
    """A cgroup's labels for a report (storm lines, ``top``, ``watch``): empty without a namer,
    for id 0 (no cgroup), or when the files that name it cannot be read."""
    if namer is None or not cgroup_id:
        return EMPTY_LABELS
    try:
        return namer(cgroup_id)
    except OSError:
        return EMPTY_LABELS
