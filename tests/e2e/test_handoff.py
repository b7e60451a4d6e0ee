"""The loader child hands the daemon its descriptors: the daemon holds the probe without BCC,
reads the maps by descriptor, and frees everything in the kernel when it stops."""

from __future__ import annotations

import ctypes
import os
import re
import subprocess
import time
from pathlib import Path

from procmond import bpf_loader
from procmond.bpfmap import BPFMap, bpf, possible_cpus
from procmond.config import Config
from procmond.metrics import daemon_maps
from tests.e2e.harness import PROCMOND, free_port, run_creator, start_daemon, unique_name

BPF_PROG_GET_NEXT_ID = 11
BPF_MAP_GET_NEXT_ID = 12


class _GetNextId(ctypes.Structure):
    _fields_ = [("start_id", ctypes.c_uint32), ("next_id", ctypes.c_uint32)]


def _loaded(cmd: int) -> set[int]:
    """Ids of every BPF program or map loaded in the kernel now."""
    ids, attr = set(), _GetNextId(0)
    while True:
        try:
            bpf(cmd, attr)
        except FileNotFoundError:
            return ids
        ids.add(attr.next_id)
        attr = _GetNextId(attr.next_id)


def _kernel_objects(pid: int) -> tuple[set[int], set[int]]:
    """Ids of the BPF maps and programs the process holds descriptors to (from fdinfo)."""
    maps, progs = set(), set()
    for fd in os.listdir(f"/proc/{pid}/fdinfo"):
        try:
            info = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
        except FileNotFoundError:
            continue
        maps |= {int(x) for x in re.findall(r"^map_id:\s+(\d+)", info, re.M)}
        progs |= {int(x) for x in re.findall(r"^prog_id:\s+(\d+)", info, re.M)}
    return maps, progs


def test_the_daemon_holds_the_probe_without_bcc(tmp_path: Path, creator: Path) -> None:
    daemon = start_daemon(tmp_path)
    pid = daemon.process.pid
    try:
        mapped = Path(f"/proc/{pid}/maps").read_text()
        assert not re.search(r"lib(bcc|LLVM|clang)", mapped), "the daemon loaded BCC"
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        assert children == [], "the loader child is still there"
        maps, progs = _kernel_objects(pid)
        assert len(maps) == len(daemon_maps())
        assert maps <= _loaded(BPF_MAP_GET_NEXT_ID)
        attached = sum(ok for ok in (daemon.scrape().series("procmond_probe_attached").values()))
        assert attached == 4 and len(progs) == attached  # it holds every program it runs
        name = unique_name("ho")
        run_creator(creator, "fork", 7, [name])
        assert daemon.scrape().total("procmond_forks_total") > 0
        forks = daemon.scrape().series("procmond_forks_total")
        assert sum(v for labels, v in forks.items() if dict(labels)["comm"] == name.decode()) == 7
    finally:
        assert daemon.stop() == 0, daemon.log()
    # Closing the descriptors detached and freed everything (freeing waits for RCU).
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        alive = (maps & _loaded(BPF_MAP_GET_NEXT_ID)) | (progs & _loaded(BPF_PROG_GET_NEXT_ID))
        if not alive:
            break
        time.sleep(0.1)
    assert alive == set()


def test_batched_and_key_by_key_reads_agree(creator: Path) -> None:
    """One batch, many small batches, and key by key (kernels before 5.6 have no batch
    lookups) read the same rows."""
    probe = bpf_loader.load(Config())
    try:
        names = [unique_name("kb") for _ in range(300)]  # so that some hash bucket holds two
        run_creator(creator, "fork", 3, names)
        forks = probe.map("forks_total")
        batched = sorted(forks.items())
        assert len(batched) >= 300
        one_by_one = BPFMap(forks.fd)
        one_by_one._batch = False
        assert sorted(one_by_one.items()) == batched
        in_steps = BPFMap(forks.fd)
        in_steps.batch_entries = 1  # many calls, and hash buckets larger than a batch
        assert sorted(in_steps.items()) == batched
        counts = probe.reader().counters("forks_total", ("comm", "parent_comm"))
        assert all(sum(v for k, v in counts.items() if k[0] == n) == 3 for n in names)
        overflow = probe.map("overflow_events")
        assert overflow.per_cpu
        assert len(overflow.per_cpu_values(bytes(4))) == possible_cpus()
        assert probe.map("forks_total").lookup(b"\xff" * 32) is None
    finally:
        probe.close()


def test_a_daemon_killed_while_loading_leaves_nothing_loaded(tmp_path: Path) -> None:
    """SIGKILL while the loader child compiles: whichever side is left frees the probe."""
    before = _loaded(BPF_MAP_GET_NEXT_ID)
    config = tmp_path / "c.yaml"
    config.write_text(f'listen: "127.0.0.1:{free_port()}"\n')
    daemon = subprocess.Popen(
        [*PROCMOND, "run", "--config", str(config)], stderr=subprocess.DEVNULL
    )
    children: list[str] = []
    deadline = time.monotonic() + 30
    while not children and time.monotonic() < deadline:
        children = Path(f"/proc/{daemon.pid}/task/{daemon.pid}/children").read_text().split()
        time.sleep(0.005)
    assert children, "no loader child appeared"
    daemon.kill()
    daemon.wait()
    deadline = time.monotonic() + 30
    while Path(f"/proc/{children[0]}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(f"/proc/{children[0]}").exists(), "the loader child outlived the daemon"
    while time.monotonic() < deadline and _loaded(BPF_MAP_GET_NEXT_ID) - before:
        time.sleep(0.1)
    assert _loaded(BPF_MAP_GET_NEXT_ID) - before == set()
