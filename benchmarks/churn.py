"""The daemon's memory under cgroup churn: RSS after tens and hundreds of thousands of unit
cgroups made and removed, each with a process that forks, against the config's bound.

    sudo .venv/bin/python -m benchmarks.churn [--cgroups 200000] [--checkpoints 40000]
        [--rate 600] [--scrape-interval 2] [--small-max-entries 1000] [--baseline main]
        [--out benchmarks/CHURN.md]

Every daemon runs at once, side by side, watching the same churn: this tree's code and the
``--baseline`` git ref's (extracted to a scratch directory), each with the default config and
with a small ``max_entries``; each is scraped every ``--scrape-interval`` seconds, as
Prometheus would. One process (named so that nothing else on the host shares its name) makes
the cgroups one after another under a slice of its own in the cgroup v2 hierarchy: it moves
itself in, forks a child that exits at once, moves back out and removes the cgroup. At each
checkpoint the daemons' RSS is read. The report (markdown) goes to ``--out``; everything the
benchmark made is removed, also on failure.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks import measures
from benchmarks.churner import write_file
from benchmarks.configurations import Daemon, extract, scratch_dir
from procmond.naming.cgroups import read_layout
from tests.support.exposition import Exposition
from tests.support.names import unique_name

HERE = Path(__file__).resolve().parent
CHURNER = HERE / "churner.py"


# ---- the churn --------------------------------------------------------------------------------


@dataclass
class Churner:
    """A process named ``name`` churning cgroups under ``top`` (benchmarks/churner.py)."""

    top: Path
    name: bytes
    forks_each: int = 1
    pid: int = 0
    done: int = 0  # cgroups made and removed so far
    forks: int | None = None  # forks made, once it has finished
    _pipe: int = -1
    _buffer: bytes = b""
    _first: int = field(default=0)

    def start(self, count: int, fork_every: int = 1, rate: float = 0.0) -> None:
        """Start churning ``count`` more cgroups, in a child process."""
        read, write = os.pipe()
        first = self._first
        self._first += count
        self.done, self.forks, self._buffer = 0, None, b""
        os.set_inheritable(write, True)
        try:
            args = (self.top, first, count, fork_every, self.forks_each, rate, write)
            pid = os.posix_spawn(
                sys.executable,
                [sys.executable, "-I", str(CHURNER), *map(str, args), self.name.hex()],
                os.environ,
            )
        finally:
            os.close(write)
        os.set_blocking(read, False)
        self.pid, self._pipe = pid, read

    def poll(self) -> bool:
        """Read its progress; True once it has finished (``forks`` is then set)."""
        try:
            chunk = os.read(self._pipe, 4096)
        except BlockingIOError:
            return False
        self._buffer += chunk
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            if line.startswith(b"done "):
                self.forks = int(line.split()[1])
            else:
                self.done = int(line)
        if chunk:
            return self.forks is not None and self._reap()
        return self._reap()

    def _reap(self) -> bool:
        pid, status = os.waitpid(self.pid, 0 if self.forks is not None else os.WNOHANG)
        if pid == 0:
            return False
        os.close(self._pipe)
        if os.waitstatus_to_exitcode(status) != 0 or self.forks is None:
            raise RuntimeError(f"the churner failed (status {status})")
        return True

    def stop(self) -> None:
        """Kill it if it still runs (on failure)."""
        if self.pid and self.forks is None:
            try:
                os.kill(self.pid, 9)
                os.waitpid(self.pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass


def remove_churn_slice(top: Path) -> None:
    """Remove ``top`` and whatever the churner left in it (it may have been killed between a
    mkdir and its rmdir); processes still in it are moved to the hierarchy's root first."""
    if not top.exists():
        return
    for cgroup in sorted(top.rglob("*"), key=lambda p: -len(p.parts)):
        if cgroup.is_dir():
            _evacuate(cgroup, top.parent)
            cgroup.rmdir()
    _evacuate(top, top.parent)
    top.rmdir()


def _evacuate(cgroup: Path, to: Path) -> None:
    for pid in (cgroup / "cgroup.procs").read_text().split():
        with contextlib.suppress(ProcessLookupError):
            write_file(str(to / "cgroup.procs"), pid.encode())


# ---- the daemons ------------------------------------------------------------------------------


@dataclass
class Watched:
    """One daemon under churn, and what was read of it."""

    label: str
    code: str
    max_entries: int | None  # None: the default config
    daemon: Daemon
    rss_kib: dict[str, int] = field(default_factory=dict)  # checkpoint → VmRSS
    anon_kib: dict[str, int] = field(default_factory=dict)
    series: dict[str, int] = field(default_factory=dict)  # checkpoint → forks_total series
    caches: dict[str, dict[str, tuple[int, int]]] = field(default_factory=dict)
    scrapes: int = 0

    def scrape(self) -> str:
        self.scrapes += 1
        return self.daemon.scrape_text()

    def record(self, checkpoint: str) -> None:
        memory = measures.memory(self.daemon.pid or 0)
        self.rss_kib[checkpoint] = memory.rss_kib
        self.anon_kib[checkpoint] = memory.anon_kib
        scraped = Exposition(self.scrape())
        entries = scraped.by_label("procmond_table_entries", "table")
        capacity = scraped.by_label("procmond_table_max_entries", "table")
        self.series[checkpoint] = len(scraped.series("procmond_forks_total"))
        self.caches[checkpoint] = {k: (int(v), int(capacity.get(k, 0))) for k, v in entries.items()}


def _config(max_entries: int | None) -> str:
    # the churn is far below the default storm threshold; keep storm reports out of the way
    text = "storm_threshold: 0\n"
    return text + (f"max_entries: {max_entries}\n" if max_entries else "")


# ---- the run ----------------------------------------------------------------------------------


def run(args: argparse.Namespace, workdir: Path) -> tuple[list[Watched], float]:
    """The daemons as watched, and how long the churn itself took (seconds)."""
    layout = read_layout()
    if layout.v2 is None:
        raise SystemExit(f"needs cgroup v2: {layout.describe()}")
    codes = [("this tree", None)]
    if args.baseline:
        codes.append((args.baseline, extract(args.baseline, workdir / "baseline")))
    watched: list[Watched] = []
    top = layout.v2.mount_point / f"procmond-churn-{os.getpid()}.slice"
    churner = Churner(top, unique_name("churn")[:13])
    try:
        for code, source in codes:
            for max_entries in (None, args.small_max_entries):
                daemon = Daemon(workdir, _config(max_entries), source=source)
                label = f"{code}, max_entries {max_entries or 'default'}"
                watched.append(Watched(label, code, max_entries, daemon))
                daemon.start(settle=0)
        top.mkdir()
        for w in watched:
            w.scrape()  # the first scrape's allocations are start-up, not churn
        time.sleep(1)
        for w in watched:
            w.record("start")
        checkpoints = sorted(set(args.checkpoints) | {args.cgroups})
        churned = 0
        started = time.monotonic()
        churning = 0.0
        for checkpoint in checkpoints:
            began = time.monotonic()
            churner.start(checkpoint - churned, rate=args.rate)
            next_scrape = time.monotonic()
            while not churner.poll():
                if time.monotonic() >= next_scrape:
                    for w in watched:
                        w.scrape()
                    next_scrape += args.scrape_interval
                    print(
                        f"{time.monotonic() - started:6.0f} s: {churned + churner.done} cgroups",
                        file=sys.stderr,
                    )
                time.sleep(0.05)
            churning += time.monotonic() - began
            churned = checkpoint
            for _ in range(3):  # the last cgroups seen gone, then reclaimed
                time.sleep(args.scrape_interval)
                for w in watched:
                    w.scrape()
            for w in watched:
                w.record(f"{checkpoint}")
            rss = _rss_line(watched, str(checkpoint))
            print(f"checkpoint {checkpoint}: {rss}", file=sys.stderr)
        for w in watched:
            w.daemon.stop()
    except BaseException:
        for w in watched:
            print(f"--- {w.label}: its log's end\n{w.daemon.log()[-3000:]}", file=sys.stderr)
        raise
    finally:
        churner.stop()
        for w in watched:
            w.daemon.kill()
        remove_churn_slice(top)
    return watched, churning


def _rss_line(watched: list[Watched], checkpoint: str) -> str:
    return ", ".join(f"{w.label}: {w.rss_kib[checkpoint] / 1024:.1f} MiB" for w in watched)


def report(
    args: argparse.Namespace, watched: list[Watched], seconds: float, churning: float
) -> str:
    checkpoints = ["start", *(str(c) for c in sorted(set(args.checkpoints) | {args.cgroups}))]
    head = " | ".join(["daemon", *(_checkpoint_title(c) for c in checkpoints), "series at end"])
    lines = [
        "# The daemon's memory under cgroup churn",
        "",
        f"Made by `{' '.join(['sudo .venv/bin/python -m benchmarks.churn', *args.argv])}`"
        f" on {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC "
        f"(a {os.cpu_count()}-core machine, Linux {platform.release()}),"
        f" one run of {seconds / 60:.0f} minutes.",
        "",
        f"{args.cgroups:,} unit cgroups made and removed one after another under one slice, "
        f"{args.cgroups / churning:.0f} a second on average"
        + (f" (at most {args.rate:.0f})" if args.rate else "")
        + ", each with a process that forks once; "
        f"every daemon scraped every {args.scrape_interval:g} s, all running at once on the "
        "same churn. RSS is `VmRSS` (MiB) at each checkpoint, once the last cgroups' entries "
        "have been given back; series are those of `procmond_forks_total` at the end.",
        "",
        f"| {head} |",
        "| --- |" + " ---: |" * (len(checkpoints) + 1),
    ]
    for w in watched:
        cells = [f"{w.rss_kib[c] / 1024:.1f}" for c in checkpoints]
        lines.append(f"| {w.label} | {' | '.join(cells)} | {w.series[checkpoints[-1]]:,} |")
    lines += ["", "Daemon tables at the end (entries / cap), where the code reports them:", ""]
    for w in watched:
        caches = w.caches.get(checkpoints[-1])
        if caches:
            shown = ", ".join(f"{k} {n:,}/{cap:,}" for k, (n, cap) in sorted(caches.items()))
            lines.append(f"- {w.label}: {shown}")
    return "\n".join(lines) + "\n"


def _checkpoint_title(checkpoint: str) -> str:
    return "RSS after start" if checkpoint == "start" else f"after {int(checkpoint):,}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cgroups", type=int, default=200_000)
    parser.add_argument("--checkpoints", type=int, nargs="*", default=[40_000])
    parser.add_argument("--rate", type=float, default=600.0, help="cgroups a second at most")
    parser.add_argument("--scrape-interval", type=float, default=2.0)
    parser.add_argument("--small-max-entries", type=int, default=1000)
    parser.add_argument("--baseline", default="main", help='a git ref; "" for none')
    parser.add_argument("--out", type=Path, default=HERE / "CHURN.md")
    args = parser.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else argv
    started = time.monotonic()
    with tempfile.TemporaryDirectory(dir=scratch_dir()) as workdir:
        watched, churning = run(args, Path(workdir))
    text = report(args, watched, time.monotonic() - started, churning)
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
