"""``procmond top``'s rows and rates, on fake maps with a fake clock (tests/e2e/test_top.py
runs it in a real terminal on the real probe)."""

from __future__ import annotations

from pathlib import Path

from procmond.kernel.maps import MapReader
from procmond.storms.creators import CreatorsReader
from procmond.storms.detector import Creator, CreatorRate
from procmond.tools.top import (
    FAILURES_NOT_COUNTED,
    RATE_COLUMNS,
    Frame,
    Row,
    RowKey,
    Sampler,
    Screen,
    build_rows,
    layout,
    sort_rows,
    view,
)
from tests.unit.creator_fakes import CREATOR_LAYOUT, FakeCreators, creator_entry
from tests.unit.fakes import LAYOUTS, MAP_IDS, FakeHash, exited, pair

NO_LABELS = ("", "", "", "")


def labels(cgroup_id: int) -> tuple[str, ...]:
    return {5: ("web.service", "", "", ""), 6: ("", "shop", "web-1", "app")}.get(
        cgroup_id, NO_LABELS
    )


def test_rows_are_by_command_unit_and_pod_with_the_main_parent() -> None:
    rows = build_rows(
        {
            "forks": [
                ({"cgroup_id": 5, "comm": b"sh", "parent_comm": b"bash"}, 10),
                ({"cgroup_id": 5, "comm": b"sh", "parent_comm": b"cron"}, 30),
                ({"cgroup_id": 6, "comm": b"sh", "parent_comm": b"bash"}, 4),
            ],
            "exits": [({"cgroup_id": 5, "comm": b"sh"}, 20)],
        },
        2.0,
        labels,
    )
    by_key = {r.key: r for r in rows}
    web = by_key[RowKey(b"sh", "web.service", "")]
    assert web.rates["forks"] == 20.0 and web.rates["exits"] == 10.0
    assert web.parent == b"cron"
    pod = by_key[RowKey(b"sh", "", "shop/web-1", "app")]
    assert pod.rates["forks"] == 2.0 and pod.parent == b"bash"


def test_sorting() -> None:
    a, b = Row(RowKey(b"a", "", "")), Row(RowKey(b"b", "", ""))
    a.rates["forks"], b.rates["forks"] = 1.0, 2.0
    a.rates["execs"], b.rates["execs"] = 5.0, 0.0
    assert [r.key.comm for r in sort_rows([a, b], "forks")] == [b"b", b"a"]
    assert [r.key.comm for r in sort_rows([a, b], "execs")] == [b"a", b"b"]
    assert [r.key.comm for r in sort_rows([b, a], "command")] == [b"a", b"b"]


class Maps:
    def __init__(self) -> None:
        self.tables = {name: FakeHash([]) for name in LAYOUTS}
        self.creators = FakeCreators()

    def set(self, forks: int, exits: int, creators: list[tuple[bytes, bytes]]) -> None:
        self.tables["forks_total"] = FakeHash([(pair(b"job", b"bash"), forks)])
        self.tables["exits_total"] = FakeHash([(exited(b"job"), exits)])
        self.creators.rows = creators


def test_rates_are_counts_over_the_measured_time(tmp_path: Path) -> None:
    maps = Maps()
    now = [10.0]
    stat = tmp_path / "stat"
    stat.write_text("processes 1000\n")
    maps.set(100, 90, [creator_entry(70, 100, 1, b"job")])
    sampler = Sampler(
        MapReader(lambda name: maps.tables[name], LAYOUTS, MAP_IDS),
        CreatorsReader(maps.creators, CREATOR_LAYOUT),
        labels,
        failures=False,
        clock=lambda: now[0],
        stat=stat,
    )
    now[0] += 2.5
    stat.write_text("processes 1500\n")
    maps.set(600, 590, [creator_entry(70, 600, 1, b"job")])
    frame = sampler.sample()
    assert frame.seconds == 2.5 and frame.host_rate == 200.0
    [row] = frame.rows
    assert row.key == RowKey(b"job", "", "")
    assert (row.rates["forks"], row.rates["exits"], row.parent) == (200.0, 200.0, b"bash")
    [(key, rate)] = frame.creators
    assert key == row.key and (rate.creator.pid, rate.forks_per_second) == (70, 200.0)
    text = view(frame, "forks", None).lines()
    assert text[1].split() == [
        *(f"{c}/s" for c in ("FORKS", "THREADS", "EXECS", "EXITS")),
        "COMMAND",
        "PARENT",
        "UNIT",
        "POD",
        "CONTAINER",
    ]  # no FAILURES/s: not counted
    assert text[2].split() == ["200.0", "0.0", "0.0", "200.0", "job", "bash", "-", "-", "-"]
    assert text[4] == "TOP CREATORS of job"
    assert text[6].split()[:5] == ["70", "200.0", "0.0", "1", "bash"]


def frame_of(*comms: bytes) -> Frame:
    rows = []
    for i, comm in enumerate(comms):
        row = Row(RowKey(comm, "", ""))
        row.rates["forks"] = 100.0 - i
        rows.append(row)
    creators = [
        (RowKey(comm, "", ""), CreatorRate(Creator(100 + i, comm, 1, b"x", 0, 1, 0, 1), 9.0, 0.0))
        for i, comm in enumerate(comms)
    ]
    return Frame(0.0, 1.0, 0.0, rows, creators, False)


def test_the_screen_selects_rows_and_shows_their_creators() -> None:
    screen = Screen("forks", frame_of(b"a", b"b", b"c"))
    lines = screen.lines(40, 120)
    assert lines[2].startswith(">") and lines[2].split()[-5] == "a"
    assert "TOP CREATORS of a" in lines
    screen.key(ord("j"))
    screen.key(ord("j"))
    lines = screen.lines(40, 120)
    assert lines[4].startswith(">") and "TOP CREATORS of c" in lines
    creators = lines[lines.index("TOP CREATORS of c") + 2 : -1]
    assert [ln.split()[0] for ln in creators] == ["102"]
    screen.key(ord("c"))
    assert screen.sort == "command"
    assert screen.key(ord("q")) is False


def test_a_short_screen_scrolls_to_the_selected_row() -> None:
    screen = Screen("forks", frame_of(*(bytes([ord("a") + i]) for i in range(20))))
    for _ in range(15):
        screen.key(ord("j"))
    lines = screen.lines(14, 120)
    marked = [ln for ln in lines if ln.startswith(">")]
    assert len(marked) == 1 and marked[0].split()[-5] == "p"  # the 16th row
    assert len(lines) <= 14


def test_the_table_fits_the_width_and_never_cuts_a_header() -> None:
    """From 20 to 200 columns, with and without FAILURES/s: every header word is whole, the
    header and a row of the longest values fit, and a cut value is marked."""
    row = Row(RowKey(b"x" * 15, "u" * 60 + ".service", "ns/" + "p" * 60))
    row.parents[b"y" * 15] = 1.0
    row.rates.update(dict.fromkeys(RATE_COLUMNS, 123456.7))
    for width in range(20, 201):
        for failures in (False, True):
            table = layout(width, failures)
            rates = [c for c in RATE_COLUMNS if failures or c != "failures"]
            if width >= 70:  # every rate and COMMAND fit; narrower, columns go from the right
                assert list(table.rates) == rates and table.widths, width
            assert list(table.rates) == rates[: len(table.rates)] and table.rates, width
            titles = [f"{c.upper()}/s" for c in table.rates]
            titles += ["COMMAND", "PARENT", "UNIT", "POD", "CONTAINER"][: len(table.widths)]
            assert table.head().split() == titles, (width, failures)
            assert len(table.head()) <= width and len(table.line(row)) <= width, width
            assert len(table.line(row).split()) == len(titles), (width, table.line(row))
    at_80 = layout(78, False)  # an 80-column terminal: the ">" mark and the last cell
    assert at_80.head().split()[-4:] == ["COMMAND", "PARENT", "UNIT", "POD"]
    assert at_80.line(row).split()[4:] == ["x" * 15, "yyyyy+", "uuuuu+", "ns/pp+"]
    assert layout(120, False).head().split()[-5:] == [
        *("COMMAND", "PARENT", "UNIT", "POD", "CONTAINER")
    ]
    assert layout(None, True).line(row).split()[5:] == [
        "x" * 15,
        "y" * 15,
        "u" * 60 + ".service",
        "ns/" + "p" * 60,
        "-",
    ]  # -b cuts nothing


def test_question_mark_and_h_show_the_keys_and_any_key_returns() -> None:
    for key in "?h":
        screen = Screen("forks", frame_of(b"a"))
        screen.key(ord(key))
        shown = screen.lines(24, 80)
        assert shown[0] == "procmond top: keys"
        assert "  q        quit" in shown and "  ?, h     show these keys" in shown
        assert all(len(line) < 80 for line in shown)
        assert screen.key(ord("q")) is True  # q closes the help, it does not quit
        assert screen.lines(24, 80)[1].split()[0] == "FORKS/s"
    assert any("?: keys" in line for line in Screen("forks", frame_of(b"a")).lines(24, 80))


def test_sorting_by_failures_without_the_syscall_probes_says_why_it_is_empty() -> None:
    screen = Screen("forks", frame_of(b"b", b"a"))
    assert FAILURES_NOT_COUNTED not in screen.lines(24, 80)
    screen.key(ord("a"))
    shown = screen.lines(24, 80)
    assert shown[1] == FAILURES_NOT_COUNTED
    assert "--syscall-probes" in FAILURES_NOT_COUNTED
    rows = shown[shown.index(" " + layout(78, False).head()) + 1 :][:2]
    assert [row.split()[-4] for row in rows] == ["a", "b"]
