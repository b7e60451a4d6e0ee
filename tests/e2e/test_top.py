"""``procmond top`` in a real terminal (tmux) and in batch mode, on the real probe: a workload of
known rate shows at that rate (±10 %), its creating process is named, ``q`` quits leaving no
process, probe or broken terminal behind."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tests.e2e.bpf_objects import MAP_IDS, PROG_IDS, held_by, loaded
from tests.e2e.harness import PROCMOND, REPO, own_comm, unique_name

RATE = 200  # forks a second, paced by the creator
TOLERANCE = 0.10


def paced(creator: Path, name: bytes, seconds: float) -> subprocess.Popen:
    """``name`` forking RATE times a second for ``seconds``."""
    return subprocess.Popen(
        [str(creator), "fork", str(int(RATE * seconds)), "--rate", str(RATE), name.hex()],
        stdout=subprocess.DEVNULL,
    )


@dataclass
class Frame:
    header: str
    columns: list[str]  # the table's titles
    rows: dict[str, dict[str, str]]  # command → the row's fields by title
    creators_of: str
    creators: list[list[str]]


def parse(text: str) -> list[Frame]:
    """Batch output (or a screen, with the selection mark taken off) → frames."""
    frames: list[Frame] = []
    section = ""
    for line in text.splitlines():
        if line.startswith("procmond top "):
            frames.append(Frame(line, [], {}, "", []))
            section = "head"
        elif not frames or not line.strip():
            section = "" if section == "rows" else section
        elif line.split()[0] == "FORKS/s":
            frames[-1].columns = line.split()
            section = "rows"
        elif line.startswith("TOP CREATORS of "):
            frames[-1].creators_of = line.removeprefix("TOP CREATORS of ")
            section = "creators"
        elif section == "rows":
            fields = line.lstrip(">").split()  # ">" marks the selected row on the screen
            row = dict(zip(frames[-1].columns, fields, strict=True))
            frames[-1].rows[row["COMMAND"]] = row
        elif section == "creators" and line.split()[0].isdigit():
            frames[-1].creators.append(line.split())
    return frames


def assert_rate(value: str) -> None:
    assert abs(float(value) - RATE) <= TOLERANCE * RATE, value


def test_batch_mode_prints_rates_and_the_top_creators_as_text(creator: Path) -> None:
    name = unique_name("!tb")  # "!" sorts before every other command name
    workload = paced(creator, name, 15)
    try:
        result = subprocess.run(
            [*PROCMOND, "top", "-b", "-n", "3", "-s", "command"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        frames = parse(result.stdout)
        assert len(frames) == 3, result.stdout
        for frame in frames:
            row = frame.rows[name.decode()]
            assert_rate(row.pop("FORKS/s"))
            assert_rate(row.pop("EXITS/s"))
            # no FAILURES/s column: failures need --syscall-probes
            assert row == {
                "THREADS/s": "0.0",
                "EXECS/s": "0.0",
                "COMMAND": name.decode(),
                "PARENT": own_comm(),
                "UNIT": "-",
                "POD": "-",
                "CONTAINER": "-",
            }
            assert frame.creators_of == name.decode()  # the first row is the selected one
            [top] = frame.creators
            assert top[0] == str(workload.pid) and top[3] == str(os.getpid())
            assert_rate(top[1])
            assert top[5:] == [
                str(creator),
                "fork",
                str(RATE * 15),
                "--rate",
                str(RATE),
                name.hex(),
            ]
        once = subprocess.run(
            [*PROCMOND, "top", "--once"], capture_output=True, text=True, timeout=60
        )
        assert once.returncode == 0, once.stderr
        assert len(parse(once.stdout)) == 1
        assert_rate(parse(once.stdout)[0].rows[name.decode()]["FORKS/s"])
    finally:
        workload.kill()
        workload.wait()


class Tmux:
    """A shell in a detached tmux session of its own."""

    def __init__(self, width: int = 200, height: int = 50) -> None:
        self.session = f"procmond-top-{secrets.token_hex(4)}"
        self._tmux(
            "new-session",
            "-d",
            "-s",
            self.session,
            "-x",
            str(width),
            "-y",
            str(height),
            "-c",
            str(REPO),
            "env",
            "PS1=$ ",
            "bash",
            "--norc",
            "--noprofile",
        )

    def _tmux(self, *args: str) -> str:
        return subprocess.run(["tmux", *args], capture_output=True, text=True, check=True).stdout

    def keys(self, *keys: str) -> None:
        self._tmux("send-keys", "-t", self.session, *keys)

    def screen(self) -> str:
        return self._tmux("capture-pane", "-p", "-t", self.session)

    def show(self, fmt: str) -> str:
        return self._tmux("display-message", "-p", "-t", self.session, fmt).strip()

    def wait_for(self, found, seconds: float = 30) -> str:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + seconds
        while True:
            screen = self.screen()
            if found(screen):
                return screen
            if time.monotonic() > deadline:
                raise AssertionError(f"not on the screen after {seconds} s:\n{screen}")
            time.sleep(0.1)

    def close(self) -> None:
        subprocess.run(["tmux", "kill-session", "-t", self.session], capture_output=True)


def ours_selected(screen: str, name: str) -> bool:
    """Our row is on the screen, marked selected, with its creators shown."""
    marked = any(ln.startswith(">") and f" {name} " in ln for ln in screen.splitlines())
    return marked and f"TOP CREATORS of {name}" in screen and bool(parse(screen)[0].creators)


def test_top_in_a_terminal_shows_the_rate_and_q_restores_everything(creator: Path) -> None:
    name = unique_name("!tt")
    workload = paced(creator, name, 40)
    tmux = Tmux()
    try:
        shell = int(tmux.show("#{pane_pid}"))
        tmux.keys(" ".join([sys.executable, "-m", "procmond", "top"]), "Enter")
        tmux.wait_for(lambda s: "FORKS/s" in s)
        top_pid = int(Path(f"/proc/{shell}/task/{shell}/children").read_text().split()[0])
        maps, programs = held_by(top_pid)
        assert maps and programs
        tmux.keys("c", *(["Up"] * 30))  # sort by command; the first row ("!...") selected
        rates: dict[str, str] = {}  # header (its clock) → our row's fork rate
        while len(rates) < 3:
            screen = tmux.wait_for(lambda s: ours_selected(s, name.decode()))
            [frame] = parse(screen)
            rates[frame.header] = frame.rows[name.decode()]["FORKS/s"]
            assert frame.creators[0][0] == str(workload.pid)
        for rate in rates.values():
            assert_rate(rate)
        tmux.keys("q")
        deadline = time.monotonic() + 10
        while Path(f"/proc/{top_pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not Path(f"/proc/{top_pid}").exists(), "top did not quit on q"
        assert tmux.show("#{alternate_on} #{cursor_flag}") == "0 1"  # the terminal restored
        tmux.keys("echo restored-$((6*7))", "Enter")
        tmux.wait_for(lambda s: "\nrestored-42" in s)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            left = (maps & loaded(MAP_IDS)) | (programs & loaded(PROG_IDS))
            if not left:
                break
            time.sleep(0.1)
        assert left == set(), "top left its probe loaded"
    finally:
        tmux.close()
        workload.kill()
        workload.wait()


def test_at_80x24_the_header_is_whole_and_question_mark_shows_the_keys() -> None:
    """A terminal of the classic size: the title line and every column title fit whole;
    ``-s failures`` without the syscall probes says why that order is empty; ``?`` and ``h``
    show the keys, any key returns."""
    tmux = Tmux(80, 24)
    try:
        shell = int(tmux.show("#{pane_pid}"))
        tmux.keys(" ".join([sys.executable, "-m", "procmond", "top", "-s", "failures"]), "Enter")
        screen = tmux.wait_for(lambda s: "FORKS/s" in s).splitlines()
        top_pid = int(Path(f"/proc/{shell}/task/{shell}/children").read_text().split()[0])
        assert re.fullmatch(
            r"procmond top \d\d:\d\d:\d\d  interval \d+\.\d\d s  "
            r"host \d+\.\d created/s  sort failures",
            screen[0],
        ), screen[0]
        assert screen[1] == (
            "failures are not counted without --syscall-probes: rows are by command"
        )
        assert screen[2].split() == [
            *("FORKS/s", "THREADS/s", "EXECS/s", "EXITS/s"),
            *("COMMAND", "PARENT", "UNIT", "POD"),
        ]
        assert all(len(line) < 80 for line in screen), screen
        assert "f t e x a c: sort  up/down: select  ?: keys  q: quit" in screen
        for key in ("?", "h"):
            tmux.keys(key)
            keys = tmux.wait_for(lambda s: s.startswith("procmond top: keys")).splitlines()
            assert "  q        quit" in keys and "  ?, h     show these keys" in keys, keys
            assert (
                "  a        sort by failed creation calls per second (with --syscall-probes)"
                in keys
            )
            tmux.keys("x")  # any key returns, and does nothing else
            back = tmux.wait_for(lambda s: "FORKS/s" in s).splitlines()
            assert back[0].endswith("sort failures"), back[0]
        tmux.keys("q")
        deadline = time.monotonic() + 10
        while Path(f"/proc/{top_pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not Path(f"/proc/{top_pid}").exists(), "top did not quit on q"
    finally:
        tmux.close()


def test_without_a_terminal_top_says_use_b_and_draws_nothing(tmp_path: Path) -> None:
    """Neither escape codes nor a curses error: one line, exit status 2 (a usage error),
    whether stdin, stdout or both are not a terminal."""
    expected = "procmond: error: not a terminal: use -b for plain text (or --once)\n"
    primary, secondary = os.openpty()  # a real terminal for the other end
    try:
        for case, keys_from_terminal, screen_is_terminal in (
            ("stdin not a terminal", False, True),
            ("stdout not a terminal", True, False),
            ("neither a terminal", False, False),
        ):
            out_file = tmp_path / f"{case}.out"
            with out_file.open("wb") as out:
                result = subprocess.run(
                    [*PROCMOND, "top"],
                    stdin=secondary if keys_from_terminal else subprocess.DEVNULL,
                    stdout=secondary if screen_is_terminal else out,
                    stderr=subprocess.PIPE,
                    text=True,
                    timeout=30,
                    env={**os.environ, "TERM": "xterm"},
                )
            assert (result.returncode, result.stderr) == (2, expected), case
            assert out_file.read_bytes() == b"", case
        os.set_blocking(primary, False)
        with contextlib.suppress(BlockingIOError):
            assert os.read(primary, 4096) == b""  # no escape code on the terminal either
    finally:
        os.close(primary)
        os.close(secondary)
