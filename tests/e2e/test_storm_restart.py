"""A fork storm going on through a daemon restart that adopts the pinned probe (SIGTERM or
SIGKILL, then start): one start line across both daemons' logs, the end line's duration and
total from the storm's real start, procmond_storms_total never lower after the restart. A
daemon that loads a fresh probe starts from nothing. Real kernel, real storm, a bpffs of the
test's own (tests/e2e/test_pins.py)."""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path

from tests.e2e import test_pins, test_storms
from tests.e2e.harness import Daemon, procmond, start_daemon, unique_name

pin_root = test_pins.pin_root  # the fixture: a private bpffs, emptied and unmounted after
THRESHOLD = test_storms.THRESHOLD
wait_for, start_storm, finish = test_storms.wait_for, test_storms.start_storm, test_storms.finish
STORM_SECONDS = 10.0
UPGRADE_STORM_SECONDS = 15.0


def start(tmp: Path, root: Path, run: str) -> Daemon:
    folder = tmp / run
    folder.mkdir()
    config = f"pin_root: {root}\nstate_dir: {tmp / 'state'}\nstorm_threshold: {THRESHOLD}\n"
    return start_daemon(folder, config)


def storms_total(daemon: Daemon, name: bytes) -> float | None:
    return daemon.scrape().get("procmond_storms_total", comm=name.decode())


def restart_mid_storm(
    tmp: Path, root: Path, creator: Path, sig: int, build: Path | None = None
) -> None:
    """A storm of STORM_SECONDS (more for an upgrade: the new build compiles its probe), its
    daemon stopped by ``sig`` once it has logged the start, and a daemon of this tree (which
    adopts the probe) or of ``build`` (which loads its own and retires this one) started."""
    name = unique_name("sr")
    first = start(tmp, root, "first")
    daemons = [first]
    process = None
    seconds = STORM_SECONDS if build is None else UPGRADE_STORM_SECONDS
    try:
        process, started = start_storm(creator, name, seconds)
        line = wait_for(first, rf'^.*fork storm: "{name.decode()}" is creating.*$', started + 3)
        assert line, first.log()
        rate = int(re.search(r"is creating (\d+) processes/s", line[0])[1])  # type: ignore[index]
        assert storms_total(first, name) == 1
        before = test_pins.forks_of(first, name)  # made so far, those before detection too
        first.stop(sig)
        if build is None:
            second = start(tmp, root, "second")
        else:
            second = test_pins.start_build(
                tmp, root, "second", build, f"storm_threshold: {THRESHOLD}\n"
            )
        daemons.append(second)
        assert time.monotonic() < started + seconds - 3, "the storm ended before the restart"
        adopted = "adopted the probe pinned at" in second.log()
        assert adopted is (build is None), second.log()
        assert "fork storms going on before this start, reported on" in second.log()
        exposition = second.scrape()
        assert exposition.value("procmond_storms_total", comm=name.decode()) == 1  # not lower
        assert exposition.value("procmond_storm_active", comm=name.decode()) == 1
        made = finish(process)
        end = test_storms.end_line(second, name)
        # As from one daemon (tests/e2e/test_storms.py): from the first second found above the
        # threshold, the seconds while no daemon ran included: at most the seconds before
        # detection short of all the creator made, never more.
        if build is None:
            assert made - 3 * rate <= int(end[1]) <= made, (made, rate, end[0])
        else:  # another probe: counted from the new daemon's first read of its own map on
            assert before - 3 * rate <= int(end[1]) <= made, (before, made, rate, end[0])
        # From the start of the first window found above the threshold to the end of the last
        # one: each may reach up to a tick (a second) beyond the storm.
        assert seconds - 3 <= int(end[2]) <= seconds + 2, end[0]
        print(f"signal {sig}: the creator made {made}, the end line says {end[1]} in {end[2]} s")
        lines = [ln for d in daemons for ln in test_storms.storm_lines(d, name)]
        assert [ln for ln in lines if "fork storm:" in ln] == [line[0]], lines
        assert [ln for ln in lines if "fork storm over:" in ln] == [end[0]], lines
        exposition = second.scrape()
        assert exposition.value("procmond_storms_total", comm=name.decode()) == 1
        assert exposition.value("procmond_storm_active", comm=name.decode()) == 0
    finally:
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()
        for daemon in daemons:
            daemon.stop()


def test_a_storm_goes_on_through_a_restart(tmp_path: Path, pin_root: Path, creator: Path) -> None:
    restart_mid_storm(tmp_path, pin_root, creator, signal.SIGTERM)


def test_a_storm_goes_on_through_sigkill_and_start(
    tmp_path: Path, pin_root: Path, creator: Path
) -> None:
    restart_mid_storm(tmp_path, pin_root, creator, signal.SIGKILL)


def test_a_storm_goes_on_through_an_upgrade(tmp_path: Path, pin_root: Path, creator: Path) -> None:
    """Another build (another map layout): its daemon takes over the retired daemon's storm
    state with its counts."""
    build = test_pins.another_build(tmp_path)
    restart_mid_storm(tmp_path, pin_root, creator, signal.SIGTERM, build)


def a_short_storm(daemon: Daemon, creator: Path, name: bytes) -> None:
    """Two seconds of storm, logged as started by ``daemon``, which counts it."""
    process, started = start_storm(creator, name, 2.0)
    assert wait_for(daemon, f'fork storm: "{name.decode()}"', started + 3), daemon.log()
    finish(process)
    assert storms_total(daemon, name) == 1


def test_after_detach_a_new_daemon_starts_from_nothing(
    tmp_path: Path, pin_root: Path, creator: Path
) -> None:
    """The storm counted by the first daemon is the detached probe's: the next one loads a
    fresh probe, logs the next storm as its own and counts from zero."""
    name = unique_name("sd")
    first = start(tmp_path, pin_root, "first")
    try:
        a_short_storm(first, creator, name)
    finally:
        assert first.stop() == 0
    result = procmond("detach", "--config", str(tmp_path / "first" / "procmond.yaml"))
    assert result.returncode == 0, result.stderr
    second = start(tmp_path, pin_root, "second")
    try:
        assert "adopted the probe" not in second.log()
        assert storms_total(second, name) is None
        a_short_storm(second, creator, name)
    finally:
        assert second.stop() == 0
