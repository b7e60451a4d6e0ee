"""bpf/procmond.h as Python reads it: the one source of the probe's constants."""

from __future__ import annotations

import pytest

from procmond.config import Config
from procmond.kernel import inventory
from procmond.kernel.header import HeaderError, map_ids, parse_header, read_header, syscall_names


def test_the_headers_defaults_are_the_configs() -> None:
    """The #ifndef defaults only let the C compile alone; they must not tell another story."""
    header, config = read_header(), Config()
    assert header.define("MAX_ENTRIES") == config.max_entries
    assert header.define("HISTOGRAM_MAX_ENTRIES") == config.histogram_max_entries
    assert header.define("HISTOGRAMS") == int(config.histograms)
    assert header.define("SYSCALL_PROBES") == int(config.syscall_probes)
    assert header.define("LABEL_COMM") == int("comm" in config.labels) == 1
    assert header.define("LABEL_PARENT_COMM") == int("parent_comm" in config.labels) == 1
    assert header.define("LABEL_CGROUP") == int(bool(config.cgroup_labels)) == 1
    assert header.define("CGROUP_PATHS_MAX_ENTRIES") == config.max_entries


def test_every_overflow_slot_names_a_map_the_daemon_reads() -> None:
    ids = map_ids(read_header())
    assert set(ids) - {"inflight"} <= set(inventory.handed_maps())
    assert set(ids) <= set(inventory.roles())
    assert ids[0] == "forks_total"


def test_map_ids_follow_the_header_order() -> None:
    text = (
        "enum map_id {\n MAP_ID_EXITS_TOTAL, /* x */\n MAP_ID_FORKS_TOTAL = 1,\n MAP_ID_COUNT,\n};"
    )
    assert map_ids(parse_header(text)) == ("exits_total", "forks_total")


def test_syscall_names() -> None:
    assert syscall_names(read_header()) == {
        0: "kernel_clone",
        1: "sys_clone",
        2: "sys_clone3",
        3: "sys_fork",
        4: "sys_vfork",
        5: "unknown",
    }


@pytest.mark.parametrize(
    "text",
    [
        "enum map_id { MAP_ID_A = 1, MAP_ID_COUNT, };",  # does not start at 0
        "enum map_id { MAP_ID_A, MAP_ID_B, };",  # no MAP_ID_COUNT
        "enum map_id { OTHER_A, MAP_ID_COUNT };",  # breaks the naming rule
        "enum map_id { MAP_ID_A = x, MAP_ID_COUNT };",  # not an integer
        "#define X 1",  # no enum at all
    ],
)
def test_a_header_that_breaks_the_rules_is_refused(text: str) -> None:
    with pytest.raises(HeaderError):
        map_ids(parse_header(text))
