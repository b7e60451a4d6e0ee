"""The inventory of the probe's maps (procmond/kernel/inventory.py, from bpf/procmond.h): the
one list of map names and roles, kept equal to what procmond.bpf.c declares."""

from __future__ import annotations

import re
import sys

import pytest

from procmond.errors import BPFLoadError
from procmond.kernel import inventory
from procmond.kernel.header import HeaderError, bpf_source_dir, parse_header, read_header
from procmond.kernel.layout import UINT, Field, Layout, MapLayout
from procmond.kernel.maps import check_layouts
from procmond.scrape.metrics import COUNTERS, HISTOGRAMS

# BPF_HASH(name, ...), BPF_ARRAY(name, ...), BPF_RINGBUF_OUTPUT(name, ...), BPF_TASK_STORAGE...
_DECLARED = re.compile(r"^\s*BPF_(?!TABLE)\w+\(\s*(\w+)\s*,", re.M)
# BPF_TABLE("lru_hash", key, value, name, entries) and BPF_TABLE_PINNED(..., name, entries, path)
_TABLE = re.compile(r"^\s*BPF_TABLE(?:_PINNED)?\(\s*\"\w+\"\s*,[^,]+,[^,]+,\s*(\w+)\s*,", re.M)


def declared_maps() -> set[str]:
    source = (bpf_source_dir() / "procmond.bpf.c").read_text()
    return set(_DECLARED.findall(source)) | set(_TABLE.findall(source))


def test_the_inventory_lists_every_map_the_probe_declares_and_no_other() -> None:
    assert set(inventory.roles()) == declared_maps()
    assert len(inventory.roles()) == 25


def test_the_metric_table_names_each_metric_map_of_the_inventory_once() -> None:
    assert tuple(c.map_name for c in COUNTERS) == inventory.counter_maps()
    assert tuple(h.map_name for h in HISTOGRAMS) == inventory.histogram_maps()


def test_groups() -> None:
    assert inventory.alarm_maps() == ("storm_alarm", "storm_wake")
    assert inventory.ring_maps() == tuple(f"watch_events_{i}" for i in range(4))
    assert len(inventory.ring_maps()) == read_header().define("WATCH_READERS")
    assert inventory.stream_maps() == ("watch_leases", *inventory.ring_maps(), "watch_lost")
    handed = set(inventory.handed_maps())
    # What only the kernel uses, and the handover map (shared, pinned by the probe itself),
    # are not handed; everything else is, with a layout unless it is the alarm's.
    assert set(inventory.roles()) - handed == {"inflight", "hist_zero", "alarm_pending", "handover"}
    assert set(inventory.layout_maps()) == handed - set(inventory.ring_maps()) - {
        "storm_alarm",
        "storm_wake",
    }


def test_role_bits_combine_members_read_before() -> None:
    header = parse_header(
        "enum r { R_A = 1, R_B = 4 };\nenum m { M_X = R_A | R_B, M_Y = 2 | R_A };"
    )
    assert header.enum("m") == {"M_X": 5, "M_Y": 3}
    with pytest.raises(HeaderError):
        parse_header("enum m { M_X = R_LATER };\nenum r { R_LATER = 1 };")


def test_a_counter_map_whose_value_is_not_one_count_is_refused() -> None:
    class Table:
        key_size, value_size = 8, 16

    u64 = Layout(8, (Field("", 0, 8, UINT),))
    wide = Layout(16, (Field("a", 0, 8, UINT), Field("b", 8, 8, UINT)))
    check_layouts(lambda _name: Table(), {"storm_alarm": MapLayout(u64, wide)})  # no counter
    with pytest.raises(BPFLoadError, match="not one u64 count"):
        check_layouts(lambda _name: Table(), {inventory.FORKS_TOTAL: MapLayout(u64, wide)})


def test_a_key_laid_out_already_is_taken_as_it_is() -> None:
    key = Layout(8, (Field("cgroup_id", 0, 8, UINT),))
    assert key.encode(b"\x01" * 8) == b"\x01" * 8
    assert key.encode({"cgroup_id": 1}) == (1).to_bytes(8, sys.byteorder)
