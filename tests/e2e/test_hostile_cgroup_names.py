"""Cgroup names chosen by a neighbour, on the real hierarchies, against the real daemon: a name
that is not UTF-8 (v2, and the pids controller's hierarchy) is counted under its decoded name
(U+FFFD for each invalid byte) and every scrape stays whole, in both formats, also after the
cgroup is gone; a path longer than the probe records is named from the tree, never by its cut.
"""

from __future__ import annotations

import inspect
import os
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)

from procmond.naming.cgroups import CgroupResolver, read_layout
from tests.e2e.cgroup_tree import CgroupTree, TaskLimitedUnit
from tests.e2e.harness import Daemon, start_daemon, unique_name

OPENMETRICS = "application/openmetrics-text; version=1.0.0"
BAD_UNIT = os.fsdecode(b"bad\xff.service")  # the str os functions make of these bytes
BAD_PIDS_UNIT = os.fsdecode(b"x\xff.service")


class Scrape:
    """One scrape in each format: the text one parsed (and checked by promtool), the
    OpenMetrics one parsed by prometheus_client's OpenMetrics parser."""

    def __init__(self, daemon: Daemon) -> None:
        self.text = daemon.scrape()
        lint = subprocess.run(
            ["promtool", "check", "metrics"],
            input=self.text.text,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert (lint.returncode, lint.stdout + lint.stderr) == (0, ""), lint.stdout + lint.stderr
        request = urllib.request.Request(f"{daemon.url}/metrics", headers={"Accept": OPENMETRICS})
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.headers["Content-Type"].startswith("application/openmetrics-text")
            body = response.read().decode()
        self.openmetrics = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in parse_openmetrics(body)
            for s in family.samples
        }

    def formats(self) -> Iterator[dict[tuple, float]]:
        yield self.text.samples
        yield self.openmetrics


def total(samples: dict[tuple, float], name: str, **labels: str) -> float:
    """The sum of ``name`` over the series with these label values."""
    return sum(
        v for (n, ls), v in samples.items() if n == name and labels.items() <= dict(ls).items()
    )


def fork_in(tree: CgroupTree, cgroup: Path, creator: Path, forks: int, name: bytes) -> None:
    """The creator, moved into ``cgroup`` before it starts, forks ``forks`` times."""
    p = tree.start(cgroup, str(creator), "fork", str(forks), name.hex())
    out, err = p.communicate(timeout=60)
    assert (p.returncode, out.split()) == (0, ["done", str(forks)]), err


def test_a_unit_whose_name_is_not_utf8_is_counted_under_its_decoded_name(
    daemon: Daemon, tree: CgroupTree, creator: Path
) -> None:
    name, forks = unique_name("bad"), 37
    fork_in(tree, tree.make(f"/test.slice/{BAD_UNIT}"), creator, forks, name)
    for samples in Scrape(daemon).formats():
        assert samples[("procmond_scrape_success", ())] == 1
        comm = name.decode()
        assert total(samples, "procmond_forks_total", unit="bad\ufffd.service", comm=comm) == forks
        assert total(samples, "procmond_forks_total", comm=comm) == forks


def test_a_pids_cgroup_whose_name_is_not_utf8_keeps_every_scrape_whole(
    daemon: Daemon, tree: CgroupTree, creator: Path
) -> None:
    unit = TaskLimitedUnit(tree, BAD_PIDS_UNIT, limit=3)
    try:
        made, refused = unit.bomb(creator, 12, unique_name("lim"))
        assert refused > 0 and made + refused == 12
        for _ in range(2):
            for samples in Scrape(daemon).formats():
                assert samples[("procmond_scrape_success", ())] == 1
                hits = total(samples, "procmond_task_limit_hits_total", unit="x\ufffd.service")
                assert hits == refused
    finally:
        unit.remove()
        tree.remove()
    for samples in Scrape(daemon).formats():  # gone: its count stays, every scrape whole
        assert samples[("procmond_scrape_success", ())] == 1
        assert total(samples, "procmond_task_limit_hits_total", unit="x\ufffd.service") == refused


# Paths the probe cuts at 255 bytes (under /test.slice/): the cut would name the first
# "zzz…z.service", and leave the second with no unit.
CUT_NAMES = ["z" * 235 + ".service-real.scope", "L" * 240 + ".service"]


@pytest.fixture
def fresh_daemon(tmp_path: Path) -> Iterator[Daemon]:
    """A daemon of its own: its first walk of the cgroup tree is at its first scrape, and no
    storm report asks for names in between."""
    d = start_daemon(tmp_path, "storm_threshold: 0\n")
    yield d
    assert d.stop() == 0, d.log()


def test_a_path_longer_than_the_probe_records_is_named_from_the_tree(
    fresh_daemon: Daemon, tree: CgroupTree, creator: Path
) -> None:
    walked = time.monotonic()  # start_daemon's scrape walked the tree (or no walk was needed)
    layout = read_layout()
    assert layout.v2 is not None
    counts = {}
    for i, unit in enumerate(CUT_NAMES):
        name, forks = unique_name("cut"), 20 + i
        path = f"/test.slice/{unit}"
        assert len(path) > 255
        fork_in(tree, tree.make(path), creator, forks, name)
        counts[name.decode()] = (unit, forks)
    # The next walk is allowed walk_interval after the last: until then a cut path is unnamed.
    interval = inspect.signature(CgroupResolver).parameters["walk_interval"].default
    time.sleep(max(0.0, walked + interval + 0.5 - time.monotonic()))
    for samples in Scrape(fresh_daemon).formats():
        assert samples[("procmond_scrape_success", ())] == 1
        for comm, (unit, forks) in counts.items():
            assert total(samples, "procmond_forks_total", unit=unit, comm=comm) == forks
            assert total(samples, "procmond_forks_total", comm=comm) == forks
        assert total(samples, "procmond_forks_total", unit="z" * 235 + ".service") == 0
