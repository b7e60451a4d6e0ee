"""The loader child hands the daemon its descriptors: the daemon holds the probe without BCC,
reads the maps by descriptor, and frees everything in the kernel when it stops."""

from __future__ import annotations

import re
import time
from pathlib import Path

from procmond.config import Config
from procmond.kernel import bpf_loader, inventory
from procmond.kernel.bpfmap import BPFMap, possible_cpus
from tests.e2e.bpf_objects import MAP_IDS, PROG_IDS, held_by, loaded
from tests.e2e.harness import launch, run_creator, start_daemon, unique_name


def test_the_daemon_holds_the_probe_without_bcc(tmp_path: Path, creator: Path) -> None:
    daemon = start_daemon(tmp_path)
    pid = daemon.process.pid
    try:
        mapped = Path(f"/proc/{pid}/maps").read_text()
        assert not re.search(r"lib(bcc|LLVM|clang)", mapped), "the daemon loaded BCC"
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        assert children == [], "the loader child is still there"
        maps, progs = held_by(pid)
        assert len(maps) == len(inventory.handed_maps())
        assert maps <= loaded(MAP_IDS)
        attached = sum(ok for ok in (daemon.scrape().series("procmond_probe_attached").values()))
        assert attached == 5 and len(progs) == attached  # it holds every program it runs
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
        alive = (maps & loaded(MAP_IDS)) | (progs & loaded(PROG_IDS))
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
        comm = probe.layouts["forks_total"].key.field("comm").decoder()

        def ours(rows: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
            """This test's rows: the host's other processes change theirs meanwhile."""
            return sorted(row for row in rows if comm(row[0]) in names)

        batched = ours(forks.items())
        assert len(batched) >= 300
        one_by_one = BPFMap(forks.fd)
        one_by_one._batch = False
        assert ours(one_by_one.items()) == batched
        in_steps = BPFMap(forks.fd)
        in_steps.batch_entries = 1  # many calls, and hash buckets larger than a batch
        assert ours(in_steps.items()) == batched
        counts = probe.reader().counters("forks_total", ("comm", "parent_comm"))
        assert all(sum(v for k, v in counts.items() if k[0] == n) == 3 for n in names)
        overflow = probe.map("overflow_events")
        assert overflow.per_cpu
        assert len(overflow.per_cpu_values(bytes(4))) == possible_cpus()
        assert probe.map("forks_total").lookup(b"\xff" * forks.key_size) is None
    finally:
        probe.close()


def test_a_daemon_killed_while_loading_leaves_nothingloaded(tmp_path: Path) -> None:
    """SIGKILL while the loader child compiles: whichever side is left frees the probe."""
    before = loaded(MAP_IDS)
    daemon = launch(tmp_path).process
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
    while time.monotonic() < deadline and loaded(MAP_IDS) - before:
        time.sleep(0.1)
    assert loaded(MAP_IDS) - before == set()


def test_a_map_that_grew_since_the_last_read_is_read_whole(creator: Path) -> None:
    """A read sizes its batches by what the map held at the previous one: after the map grew
    from a few entries to thousands, the next read still returns every entry, as a fresh
    reader's does."""
    probe = bpf_loader.load(Config())
    try:
        forks = probe.map("forks_total")
        comm = probe.layouts["forks_total"].key.field("comm").decoder()
        reused = BPFMap(forks.fd)
        before = len(reused.items())
        # the next read's first batch holds what the map held and a quarter more, not 4096
        assert reused._batch_capacity() == before + before // 4 + 64 < reused.max_entries
        names = [unique_name("gr") for _ in range(3000)]
        run_creator(creator, "fork", 1, names)

        def ours(rows: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
            return sorted(row for row in rows if comm(row[0]) in names)

        grown = ours(reused.items())
        assert len(grown) == len(names)
        assert grown == ours(BPFMap(forks.fd).items())
    finally:
        probe.close()


def test_key_by_key_reads_give_each_key_once_when_keys_go_meanwhile(creator: Path) -> None:
    """Without batch lookups, a key deleted during the read makes the kernel start over from
    the first key: the keys already read come again, and are kept once (a series shown twice
    would make the scrape invalid)."""
    probe = bpf_loader.load(Config())
    try:
        run_creator(creator, "fork", 1, [unique_name("kk") for _ in range(50)])
        forks = BPFMap(probe.map("forks_total").fd)
        forks._batch = False
        lookup, looked = forks.lookup, []

        def lookup_deleting_the_tenth(key: bytes) -> bytes | None:
            looked.append(key)
            if len(looked) == 10:
                forks.take(key)  # gone before its value is read
            return lookup(key)

        forks.lookup = lookup_deleting_the_tenth  # type: ignore[method-assign]
        keys = [key for key, _ in forks.items()]
        assert len(looked) > len(set(looked))  # the read started over: keys came twice
        assert len(keys) == len(set(keys))
        assert looked[9] not in keys
    finally:
        probe.close()
