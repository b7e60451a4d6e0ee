"""The configurations compared, each a process the benchmark starts, measures and stops:
nothing, the procmond daemon (by default, with syscall probes, and counting per process as
during a fork storm), the prototype it replaces, and ``procmond watch``.

Each one says how many creations it saw under a command name, so the benchmark can compare
that with what the load generator really created.
"""

from __future__ import annotations

import json
import os
import re
import selectors
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import measures
from tests.support import launcher
from tests.support.exposition import Exposition
from tests.support.launcher import free_port, procmond_command

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PROTOTYPE = HERE / "prototype.py"

# Which counter of the daemon counts each load path.
DAEMON_METRIC = {
    "fork": "procmond_forks_total",
    "vfork": "procmond_forks_total",
    "clone3": "procmond_forks_total",
    "spawn": "procmond_forks_total",
    "thread": "procmond_threads_created_total",
}


def _read_line(stream: object, deadline: float) -> str:
    """One line from a child's pipe, or "" at the deadline (a child that never gets ready)."""
    with selectors.DefaultSelector() as selector:
        selector.register(stream, selectors.EVENT_READ)  # type: ignore[arg-type]
        if not selector.select(max(0.0, deadline - time.monotonic())):
            return ""
    return stream.readline()  # type: ignore[attr-defined,no-any-return]


@dataclass
class Started:
    """What one start of a configuration cost: time until it works, memory once it does."""

    ready_seconds: float
    memory: measures.Memory | None
    mappings: list[dict[str, object]]  # the largest, by RSS
    loader_file_kib: int | None  # compiler libraries' file pages still resident


class Configuration:
    """Base: no process at all (the ``none`` configuration)."""

    name = "none"

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def start(self, settle: float) -> Started:
        """Start, wait until it serves or watches, then ``settle`` seconds for its memory."""
        started = time.monotonic()
        try:
            self._launch()
        except BaseException:
            self.kill()  # never leave a probe behind: it would weigh on every later figure
            raise
        ready = time.monotonic() - started
        if self.pid is None:
            return Started(ready, None, [], None)
        time.sleep(settle)
        self._check_alive()
        mappings = measures.memory_by_mapping(self.pid)
        loader = sum(
            int(m["rss_kib"]) - int(m["anon_kib"])  # type: ignore[call-overload]
            for m in mappings
            if measures.LOADER_LIBRARIES.search(str(m["mapping"]))
        )
        return Started(ready, measures.memory(self.pid), mappings[:10], loader)

    def _launch(self) -> None:
        pass

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def _check_alive(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"{self.name} exited {self.process.returncode}: {self.log()}")

    def log(self) -> str:
        return ""

    def before_load(self, comm: str, path: str) -> None:
        """Called before each load, with the load's unique command name."""

    def after_load(self, comm: str, path: str) -> None:
        """Called once the load is over and the process is idle again."""

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                raise RuntimeError(f"{self.name} ignored SIGTERM: {self.log()}") from None
        if self.process.returncode != 0:
            raise RuntimeError(f"{self.name} exited {self.process.returncode}: {self.log()}")

    def counted(self) -> dict[str, int] | None:
        """After stop(): creations seen per command name; None if it counts nothing."""
        return None

    def overflowed(self, comm: str) -> int | None:
        """Events sent to the overflow counter while ``comm``'s load ran; None: no such thing."""
        return None

    def lost(self) -> int | None:
        """After stop(): events the process itself reported lost; None if it cannot tell."""
        return None


# The benchmark's loads are fork storms by the default threshold (2,000 a second), which would
# switch per-process counting on a fraction of a second into each load and blur the figure.
# The default rows raise the threshold above any load, so that they measure the steady state;
# procmond-storm is the same daemon while a storm lasts.
OUTSIDE_STORMS = "storm_threshold: 10000000\n"


class Daemon(Configuration):
    """``procmond run`` with the default config outside fork storms, on a free loopback port."""

    name = "procmond"

    def __init__(
        self, workdir: Path, config_text: str = OUTSIDE_STORMS, source: Path | None = None
    ) -> None:
        super().__init__(workdir)
        self.port = free_port()
        self.config_text = config_text
        self.source = source  # a tree whose procmond to run (python -m, from there); None: ours
        self.log_path = workdir / f"procmond-{self.port}.log"
        self.served: launcher.Daemon | None = None
        self._before: dict[str, tuple[float, float]] = {}
        self._counted: dict[str, int] = {}
        self._overflowed: dict[str, int] = {}

    def _launch(self) -> None:
        daemon = launcher.launch(
            self.workdir,
            self.config_text,
            self.port,
            command=launcher.PROCMOND if self.source else procmond_command(),
            cwd=self.source,
            # each configuration loads its own probe and none is left behind; a tree from
            # before pinning knows no pin_root (and pins nothing)
            pinned=not _pins(self.source),
            name=f"procmond-{self.port}",
        )
        self.process, self.served = daemon.process, daemon
        launcher.wait_serving(daemon, timeout=60, poll=0.01)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def scrape_text(self) -> str:
        assert self.served is not None, "scraped before it started"
        return self.served.scrape_text(timeout=30)

    def scrape(self) -> Exposition:
        return Exposition(self.scrape_text())

    def creations(self, comm: str, path: str) -> tuple[float, float]:
        """procmond's count for this command and path, summed over parent_comm, and its
        overflow count for that map. Fails if the scrape could not read every map."""
        metric = DAEMON_METRIC[path]
        scraped = self.scrape()
        if scraped.get("procmond_scrape_success") not in (None, 1):
            raise RuntimeError(f"procmond could not read its maps: {self.log()}")
        total = scraped.by_label(metric, "comm").get(comm, 0.0)
        overflow = scraped.value(
            "procmond_map_overflow_events_total", map=metric.removeprefix("procmond_")
        )
        return total, overflow

    def before_load(self, comm: str, path: str) -> None:
        self._before[comm] = self.creations(comm, path)

    def program_stats(self) -> dict[str, tuple[float, float]]:
        """{probe: (run time in ns, runs)} of each of its BPF programs, as it serves them
        (counted while BPF statistics are on)."""
        scraped = self.scrape()
        seconds = scraped.by_label("procmond_bpf_program_run_seconds_total", "probe")
        runs = scraped.by_label("procmond_bpf_program_runs_total", "probe")
        probes = {*seconds, *runs}
        return {p: (seconds.get(p, 0.0) * 1e9, runs.get(p, 0.0)) for p in probes}

    def counting_per_process(self) -> bool:
        """Whether a storm is suspected or going on (the probe counts per process)."""
        return 1 in self.scrape().series("procmond_storm_process_counting").values()

    def wait_for_counting(self, on: bool, timeout: float, poke: bool = False) -> None:
        """Until per-process counting is ``on`` (or off); ``poke``: create a process at each
        look, as counting starts only once the host creates something."""
        deadline = time.monotonic() + timeout
        while self.counting_per_process() != on:
            if time.monotonic() > deadline:
                state = "start" if on else "end"
                raise RuntimeError(
                    f"counting per process did not {state} in {timeout:.0f} s: {self.log()}"
                )
            if poke:
                subprocess.run(["/bin/true"], check=True)
            time.sleep(0.1 if poke else 0.5)

    def after_load(self, comm: str, path: str) -> None:
        count, overflow = self.creations(comm, path)
        count_before, overflow_before = self._before.pop(comm)
        self._counted[comm] = int(count - count_before)
        self._overflowed[comm] = int(overflow - overflow_before)

    def counted(self) -> dict[str, int]:
        return dict(self._counted)

    def overflowed(self, comm: str) -> int | None:
        return self._overflowed.get(comm)


def wait_for_storms_end(daemons: Iterable[Daemon], timeout: float = 120.0) -> None:
    """Until every daemon has seen the end of any storm the benchmark's own load made. Each is
    asked (scraped) at every look until all are done, so that daemons compared afterwards have
    been scraped about as often: a daemon's first scrapes after a storm are its slowest."""
    daemons = list(daemons)
    deadline = time.monotonic() + timeout
    while counting := [d for d in daemons if d.counting_per_process()]:
        if time.monotonic() > deadline:
            logs = "\n".join(f"{d.name}: {d.log()}" for d in counting)
            raise RuntimeError(f"counting per process did not end in {timeout:.0f} s: {logs}")
        time.sleep(0.5)


class DaemonWithSyscallProbes(Daemon):
    """``procmond run`` with ``syscall_probes: true`` (opt-in): what the syscall tracepoints
    (fork durations and failures by errno) cost, beside the default config in the same run."""

    name = "procmond-sys"

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir, f"syscall_probes: true\n{OUTSIDE_STORMS}")


class DaemonWithStormCounting(Daemon):
    """``procmond run`` with ``storm_threshold: 1``: every load is a fork storm, so the probe
    counts per creating process throughout (what storm reports cost while a storm lasts),
    beside the default config, where that counting is off until a storm is suspected."""

    name = "procmond-storm"

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir, "storm_threshold: 1\n")

    def before_load(self, comm: str, path: str) -> None:
        """Counting per process starts once the host creates anything: make sure it is on
        before the load starts, so that all of the load is measured with it."""
        self.wait_for_counting(True, 10, poke=True)
        super().before_load(comm, path)


class _StderrTold(Configuration):
    """A process whose first stderr line says it is ready, and whose stderr is its log."""

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self._stderr = ""

    def _spawn(
        self, command: list[str], stdout: Any, ready: Callable[[str], bool], what: str
    ) -> None:
        self.process = subprocess.Popen(command, stdout=stdout, stderr=subprocess.PIPE, text=True)
        line = _read_line(self.process.stderr, time.monotonic() + 120)
        if not ready(line):
            self.process.kill()
            _, rest = self.process.communicate()
            raise RuntimeError(f"{what} did not start: {line}{rest}")

    def log(self) -> str:
        return self._stderr

    def stop(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            _, self._stderr = self.process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        super().stop()


class Prototype(_StderrTold):
    """The baseline in prototype.py: a perf-buffer event per clone() to a Python callback."""

    name = "prototype"

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.counts_path = workdir / f"prototype-{id(self)}.json"

    def _launch(self) -> None:
        self._spawn(
            [sys.executable, str(PROTOTYPE), "--counts", str(self.counts_path)],
            subprocess.DEVNULL,
            lambda line: line.strip() == "ready",
            "prototype",
        )

    def _result(self) -> dict[str, object]:
        return json.loads(self.counts_path.read_text())  # type: ignore[no-any-return]

    def counted(self) -> dict[str, int]:
        return dict(self._result()["counts"])  # type: ignore[call-overload]

    def lost(self) -> int:
        return int(self._result()["lost"])  # type: ignore[call-overload]


class Watch(_StderrTold):
    """``procmond watch``. Its lines go to a file on tmpfs rather than /dev/null, so that they
    can be counted; a tmpfs write costs about what a /dev/null one does (no disk involved)."""

    name = "watch"
    _LINE = re.compile(r"^Process (.*) \(PID:\d+, PPID: \d+\) called \S+$")
    _LOST = re.compile(r"lost (\d+) events")

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.output_path = workdir / f"watch-{id(self)}.out"
        self._counts: dict[str, int] = {}

    def _launch(self) -> None:
        with self.output_path.open("wb") as out:
            self._spawn(
                [*procmond_command(), "watch"],
                out,
                lambda line: "watching" in line,
                "procmond watch",
            )

    def stop(self) -> None:
        super().stop()
        counts: Counter[str] = Counter()
        with self.output_path.open(errors="replace") as lines:
            for line in lines:
                match = self._LINE.match(line.rstrip("\n"))
                if match:
                    counts[match.group(1)] += 1
        self.output_path.unlink()
        self._counts = dict(counts)

    def counted(self) -> dict[str, int]:
        return self._counts

    def lost(self) -> int:
        return sum(int(n) for n in self._LOST.findall(self._stderr))


CONFIGURATIONS: dict[str, type[Configuration]] = {
    c.name: c
    for c in (
        Configuration,
        Daemon,
        DaemonWithSyscallProbes,
        DaemonWithStormCounting,
        Prototype,
        Watch,
    )
}


def baseline_name(ref: str) -> str:
    """``procmond@<short commit>`` of a git ref of this repository (an unknown ref fails here,
    before anything runs): the commit, not the ref, so that a saved run names what it ran."""
    short = _git("rev-parse", "--short", "--verify", "--end-of-options", f"{ref}^{{commit}}")
    return f"procmond@{short.strip()}"


def baseline_configuration(name: str, tree: Path) -> type[Daemon]:
    """The ``procmond`` configuration (same config, same port rules, pins off) run from
    ``tree``, another build's checkout (see ``extract``), under the configuration ``name``."""

    class Baseline(Daemon):
        __doc__ = f"``procmond run`` of {name}, as ``procmond``'s config."

        def __init__(self, workdir: Path, config_text: str = OUTSIDE_STORMS) -> None:
            super().__init__(workdir, config_text, source=tree)

    Baseline.name = name
    return Baseline


def extract(ref: str, into: Path) -> Path:
    """The tree of git ref ``ref``, extracted to ``into`` (``git archive``: the user's tree,
    index and worktree list stay untouched), runnable with ``python -m procmond`` from there
    (its probe's C sources placed where the package looks for them). Fails unless Python,
    started there, imports that tree's procmond rather than the installed one."""
    into.mkdir(parents=True)
    archive = subprocess.Popen(
        ["git", "-C", str(REPO), "archive", "--format=tar", ref], stdout=subprocess.PIPE
    )
    subprocess.run(["tar", "-x", "-C", str(into)], stdin=archive.stdout, check=True)
    if archive.wait() != 0:
        raise SystemExit(f"git archive {ref} failed")
    shutil.copytree(into / "bpf", into / "procmond" / "bpf")
    imported = subprocess.run(
        [sys.executable, "-c", "import procmond.bpf, procmond; print(procmond.__file__)"],
        cwd=into,
        capture_output=True,
        text=True,
    )
    if Path(imported.stdout.strip()).parent != into / "procmond":
        raise RuntimeError(f"{ref} extracted to {into} imports {imported.stdout}{imported.stderr}")
    return into


def _git(*args: str) -> str:
    done = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"git {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def scratch_dir() -> Path:
    """Where the benchmark's files go while it runs: tmpfs when there is one."""
    shm = Path("/dev/shm")
    return shm if shm.is_dir() and os.access(shm, os.W_OK) else Path("/tmp")


def _pins(source: Path | None) -> bool:
    """Whether the procmond of ``source`` (None: this tree) pins its probe (has pin_root)."""
    return source is None or "pin_root" in (source / "procmond" / "config.py").read_text()
