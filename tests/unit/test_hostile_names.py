"""Arbitrary bytes in every name that reaches a label, through to a rendered exposition.

Names are any bytes but "/" and NUL, up to 255 (a comm: any but NUL, up to 15): a cgroup's
(its unit), a pids cgroup's (its task-limit hits), the kubelet's log file names (namespace, pod
and container) and the creating command's. Each example lays them out for real in a temporary
directory (a cgroup tree, a pids tree, the kubelet's two directories), fake maps count under
them, and both renderers' output must parse, pass promtool and show every count exactly,
under the name decoded as UTF-8 with invalid bytes replaced by U+FFFD. The real cgroup
hierarchies and the real daemon: tests/e2e/test_hostile_cgroup_names.py.
"""

from __future__ import annotations

import logging
import os
import secrets
import struct
import subprocess
import tempfile
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from prometheus_client.core import Metric
from prometheus_client.openmetrics import exposition as openmetrics
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families as parse_text

from procmond.config import Config
from procmond.kernel.header import read_header
from procmond.kernel.layout import CHARS, UINT, Field, Layout, MapLayout
from procmond.kernel.maps import MapReader
from procmond.lifecycle.sources import CgroupSources
from procmond.logs import _OneLineFormatter
from procmond.naming.cgroups import (
    CgroupLabels,
    CgroupLayout,
    CgroupNamer,
    CgroupResolver,
    Hierarchy,
    unit_of,
)
from procmond.naming.kubelet import KubeletNames
from procmond.scrape.attribution import Attribution
from procmond.scrape.collector import ProbeStatus, ProcmondCollector
from procmond.scrape.tasklimits import PidsHierarchy, TaskLimits
from tests.unit.fakes import LAYOUTS, MAP_IDS, FakeHash, FakePerCpuArray, exited, hist, pair

STATUS = ProbeStatus({"task_newtask": True}, True, "9.9", "0.26.0", "6.18.0")
PATH_LEN = read_header().define("CGROUP_PATH_LEN")  # the probe keeps PATH_LEN - 1 bytes
PATH_LAYOUT = MapLayout(
    Layout(8, (Field("", 0, 8, UINT),)), Layout(PATH_LEN, (Field("path", 0, PATH_LEN, CHARS),))
)
BAD_PATH = os.fsdecode(b"/sys/fs/cgroup/pids/x\xff.service\nnext")  # as os.scandir makes it
NAME_BYTES = [b for b in range(1, 256) if b != ord("/")]


def names(max_size: int = 255, alphabet: list[int] = NAME_BYTES) -> st.SearchStrategy[bytes]:
    """A directory entry's name: any bytes but "/" and NUL (and not "." or "..")."""
    return (
        st.lists(st.sampled_from(alphabet), min_size=1, max_size=max_size)
        .map(bytes)
        .filter(lambda b: b not in (b".", b".."))
    )


def unit_names() -> st.SearchStrategy[bytes]:
    """A unit's name: any bytes, then ".service", 255 bytes at most."""
    return names(255 - len(b".service")).map(lambda b: b + b".service")


COMMS = st.lists(st.integers(1, 255), min_size=1, max_size=15).map(bytes)


def text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


def empty(key_size: int) -> FakeHash:
    """A map with no entry yet."""
    table = FakeHash([])
    table.key_size = key_size
    return table


class PathRecords(FakeHash):
    """cgroup_paths as the probe fills it: each new cgroup's path, cut to 255 bytes."""

    def __init__(self) -> None:
        super().__init__([], max_entries=100)
        self.key_size, self.value_size = 8, PATH_LEN
        self.paths: dict[bytes, bytes] = {}

    def record(self, cgroup_id: int, path: bytes) -> None:
        self.paths[struct.pack("=Q", cgroup_id)] = path[: PATH_LEN - 1].ljust(PATH_LEN, b"\0")

    def lookup(self, key: bytes) -> bytes | None:
        return self.paths.get(key)


class Host:
    """A cgroup v2 tree, a v1 pids tree and the kubelet's directories, laid out for real
    under ``root``, with fake maps that count under their cgroups' ids."""

    def __init__(self, root: Path) -> None:
        self.root = os.fsencode(root)
        self.records = PathRecords()
        self.forks: list[tuple[bytes, int]] = []
        self.exits: list[tuple[bytes, int]] = []
        for d in (b"v2", b"pids", b"pods", b"containers"):
            os.mkdir(os.path.join(self.root, d))

    def cgroup(self, *components: bytes) -> int:
        """Make a v2 cgroup (and its parents); its id, recorded as the probe would."""
        path = b""
        for name in components:
            path += b"/" + name
            if not os.path.isdir(self.root + b"/v2" + path):
                os.mkdir(self.root + b"/v2" + path)
        cgroup_id = os.stat(self.root + b"/v2" + path).st_ino
        self.records.record(cgroup_id, path)
        return cgroup_id

    def fork(self, cgroup_id: int, comm: bytes, count: int) -> None:
        self.forks.append((pair(comm, b"init", cgroup_id), count))
        self.exits.append((exited(comm, cgroup_id), count))

    def refused(self, name: bytes, count: int) -> None:
        """A pids cgroup /test.slice/NAME whose forks were refused ``count`` times."""
        d = self.root + b"/pids/test.slice"
        os.makedirs(d + b"/" + name)
        with open(d + b"/" + name + b"/pids.events", "w") as f:
            f.write(f"max {count}\n")

    def pod(self, namespace: bytes, pod: bytes, container: bytes) -> int:
        """A pod's container as the kubelet lays it out; its cgroup id."""
        uid, container_id = str(uuid.uuid4()).encode(), secrets.token_hex(32).encode()
        os.mkdir(b"%s/pods/%s_%s_%s" % (self.root, namespace, pod, uid))
        link = b"%s/containers/%s_%s_%s-%s.log" % (
            self.root,
            pod,
            namespace,
            container,
            container_id,
        )
        open(link, "w").close()
        return self.cgroup(b"kubepods", b"pod" + uid, container_id)

    def collector(self) -> ProcmondCollector:
        tables: dict[str, Any] = {
            "forks_total": FakeHash(self.forks),
            "threads_created_total": empty(len(pair(b""))),
            "execs_total": empty(len(pair(b""))),
            "exits_total": FakeHash(self.exits),
            "process_lifetime_seconds": FakeHash([]),
            "overflow_events": FakePerCpuArray([[0]] * len(MAP_IDS)),
            "overflow_hist": FakePerCpuArray([[hist({}, 0)]] * len(MAP_IDS)),
            "cgroup_paths": self.records,
            "gone_task_limit_hits": empty(8),
        }
        reader = MapReader(tables.__getitem__, {**LAYOUTS, "cgroup_paths": PATH_LAYOUT}, MAP_IDS)
        v2 = Hierarchy(Path(os.fsdecode(self.root + b"/v2")))
        pids = Hierarchy(Path(os.fsdecode(self.root + b"/pids")))
        kubelet = KubeletNames(
            Path(os.fsdecode(self.root + b"/pods")), Path(os.fsdecode(self.root + b"/containers"))
        )
        resolver = CgroupResolver(v2, kernel_path=reader.cgroup_path, kubelet=kubelet)
        attribution = Attribution(CgroupNamer(resolver, v2), 100, "__overflow__")
        sources = CgroupSources(
            CgroupLayout(v2, frozenset({"pids"}), pids),
            TaskLimits(PidsHierarchy(pids, 1), resolver),
            attribution,
            resolver,
        )
        return ProcmondCollector(reader, Config(), STATUS, sources)


def scraped(collector: ProcmondCollector) -> Iterator[dict[tuple, float]]:
    """The text exposition, checked by promtool, then the OpenMetrics one, each parsed by
    prometheus_client's parser: {(name, labels): value}."""
    text = collector.render_text().decode("utf-8")
    lint = subprocess.run(
        ["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
    )
    assert (lint.returncode, lint.stdout + lint.stderr) == (0, ""), text
    yield samples(parse_text(text))
    om = collector.render(openmetrics.generate_latest).decode("utf-8")
    assert om.endswith("# EOF\n") and om.count("# EOF") == 1
    yield samples(parse_openmetrics(om))


def samples(families: Iterable[Metric]) -> dict[tuple, float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families for s in f.samples}


def total(samples: dict[tuple, float], name: str, **labels: str) -> float:
    """The sum of ``name`` over the series with these label values."""
    return sum(
        v for (n, ls), v in samples.items() if n == name and labels.items() <= dict(ls).items()
    )


def kube_names() -> st.SearchStrategy[bytes]:
    """A name inside a kubelet file name: the three of a container link fit 255 bytes."""
    return names(60)


@settings(
    max_examples=60,
    deadline=None,
    database=None,  # nothing written to the tree
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    parents=st.lists(names(), max_size=2),
    unit=unit_names(),
    comm=COMMS,
    pids_unit=unit_names(),
    namespace=kube_names(),
    pod=kube_names(),
    container=kube_names(),
)
def test_any_bytes_in_any_name_give_a_valid_exposition_with_exact_counts(
    parents: list[bytes],
    unit: bytes,
    comm: bytes,
    pids_unit: bytes,
    namespace: bytes,
    pod: bytes,
    container: bytes,
) -> None:
    assume(not any(b"kubepods" in p for p in (*parents, unit)))
    with tempfile.TemporaryDirectory() as tmp:
        host = Host(Path(tmp))
        host.fork(host.cgroup(*parents, unit), comm, 3)
        host.fork(host.pod(namespace, pod, container), b"app", 5)
        host.refused(pids_unit, 7)
        collector = host.collector()
        for samples in scraped(collector):
            assert samples[("procmond_scrape_success", ())] == 1
            assert total(samples, "procmond_forks_total", unit=text(unit), comm=text(comm)) == 3
            assert total(samples, "procmond_exits_total", unit=text(unit), comm=text(comm)) == 3
            assert total(samples, "procmond_forks_total", comm=text(comm)) == 3
            parsed = all(b"_" not in n for n in (namespace, pod, container))
            kube = (
                {"namespace": text(namespace), "pod": text(pod), "container": text(container)}
                if parsed  # a name with "_" cannot be told from its neighbours: left unnamed
                else {"namespace": "", "pod": "", "container": ""}
            )
            assert total(samples, "procmond_forks_total", unit="", comm="app", **kube) == 5
            assert total(samples, "procmond_forks_total", comm="app") == 5
            hits = total(samples, "procmond_task_limit_hits_total", unit=text(pids_unit))
            assert hits == 7


CUT = [  # names whose path the probe cuts (issue examples): a wrong unit, or none
    (b"z" * 235 + b".service-real.scope", "z" * 235 + ".service"),
    (b"L" * 240 + b".service", ""),
]


@pytest.mark.parametrize(("name", "cut_unit"), CUT, ids=["wrong-unit", "no-unit"])
def test_a_cut_path_record_is_never_taken_for_the_name(
    tmp_path: Path, name: bytes, cut_unit: str
) -> None:
    host = Host(tmp_path)
    cgroup_id = host.cgroup(b"test.slice", name)
    cut = host.records.paths[struct.pack("=Q", cgroup_id)].rstrip(b"\0")
    assert len(cut) == PATH_LEN - 1  # what the probe left
    assert unit_of(os.fsdecode(cut)) == cut_unit
    reader = MapReader(
        {"cgroup_paths": host.records}.__getitem__, {"cgroup_paths": PATH_LAYOUT}, ()
    )
    assert reader.cgroup_path(cgroup_id) is None  # a full buffer: maybe cut, so no record
    whole = b"y" * (PATH_LEN - 2 - len(b"/test.slice/"))  # its path: one byte short of full
    assert reader.cgroup_path(host.cgroup(b"test.slice", whole)) == "/test.slice/" + whole.decode()
    v2 = Hierarchy(Path(os.fsdecode(host.root + b"/v2")))
    resolver = CgroupResolver(v2, kernel_path=reader.cgroup_path)
    assert resolver.labels(cgroup_id) == CgroupLabels(unit=text(name))  # found in the tree
    os.rmdir(host.root + b"/v2/test.slice/" + name)
    gone = host.cgroup(b"test.slice", name)  # made and removed before it is asked about
    os.rmdir(host.root + b"/v2/test.slice/" + name)
    later = CgroupResolver(v2, kernel_path=reader.cgroup_path)
    assert later.labels(gone) is None  # not found: unnamed (counted under empty labels)


def test_a_log_line_about_a_hostile_path_is_decoded_as_labels_are() -> None:
    record = logging.LogRecord(
        "procmond", logging.WARNING, __file__, 1, "cannot read %s", (BAD_PATH,), None
    )
    line = _OneLineFormatter("%(message)s").format(record)
    assert line == "cannot read /sys/fs/cgroup/pids/x\ufffd.service | next"
    line.encode("utf-8")  # no surrogate left
