"""A cgroup made while ``watch`` or ``top`` runs is named from its first creation: they name
cgroups from the probe's cgroup_mkdir records, as the daemon does, not from a walk of the tree
that runs at most every 10 s (systemd makes a new cgroup at every start of a unit). And a
runtime installed after the daemon started (its data root made then) is named as well."""

from __future__ import annotations

import secrets
import shutil
import subprocess
import threading
import time
from pathlib import Path

from tests.e2e.cgroup_tree import CgroupTree
from tests.e2e.harness import PROCMOND, Watch, start_daemon, unique_name, wait_until
from tests.e2e.runtimes import Dockerd, import_image, make_root


def test_watch_names_a_new_unit_from_its_first_creation(creator: Path, tree: CgroupTree) -> None:
    """Two units made one after the other, both after watch started: the first makes watch
    look names up (and walk the tree), the second is made right after; every creation of both
    is shown, the second's within a second of its start."""
    tag = unique_name("nu").hex()[:10]
    watch = Watch("--unit", f"new-{tag}-*.service")
    made = {}
    for unit, count in (("a", 3), ("b", 14)):
        cgroup = tree.make(f"/test.slice/new-{tag}-{unit}.service")
        name = unique_name(f"nu{unit}")
        started = time.monotonic()
        inside = tree.start(cgroup, str(creator), "fork", str(count), name.hex())
        assert inside.wait(timeout=30) == 0
        mine = f"Process {name.decode()} "
        watch.wait_for(
            f"{count} lines of unit {unit}",
            lambda lines, mine=mine, count=count: sum(ln.startswith(mine) for ln in lines) >= count,
            timeout=15,
        )
        made[unit] = (mine, count, time.monotonic() - started)
    lines, err, code = watch.finish(17)
    assert code == 0, err
    for mine, count, seconds in made.values():
        assert sum(ln.startswith(mine) for ln in lines) == count
        print(f"{mine}: {count} of {count} shown, all within {seconds:.2f} s of the start")
    assert len(lines) == 17, lines


def test_top_names_a_new_unit_from_its_first_creation(creator: Path, tree: CgroupTree) -> None:
    """``top -b``: a first frame names the cgroups it saw (a walk of the tree), then a unit is
    made: the next frame shows its creations under its unit, never as "-"."""
    tag = unique_name("nt").hex()[:10]
    unit = f"new-{tag}.service"
    name = unique_name("ntop")
    top = subprocess.Popen(
        [*PROCMOND, "top", "-b", "-n", "3", "-d", "1", "-s", "command"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    frames: list[str] = []
    reader = threading.Thread(target=lambda: frames.extend(top.stdout or ()), daemon=True)
    reader.start()
    try:
        warm = tree.make(f"/test.slice/warm-{tag}.service")
        warm_name = unique_name("ntw")
        warming = tree.start(warm, str(creator), "fork", "100", "--rate", "50", warm_name.hex())
        wait_until(lambda: any(warm_name.decode() in ln for ln in frames), 30, "top's 1st frame")
        cgroup = tree.make(f"/test.slice/{unit}")
        started = time.monotonic()
        inside = tree.start(cgroup, str(creator), "fork", "30", "--rate", "30", name.hex())
        assert inside.wait(timeout=30) == 0 and warming.wait(timeout=30) == 0
        top.wait(timeout=30)
        reader.join(timeout=10)
    finally:
        if top.poll() is None:
            top.kill()
            top.wait()
    assert top.returncode == 0, top.stderr.read() if top.stderr else ""
    # the table's rows of the command (the creators' heading names it too when it is the
    # selected row: the first one, which it is whenever nothing else created in that second)
    rows = [
        ln.split()
        for ln in frames
        if name.decode() in ln.split() and not ln.startswith("TOP CREATORS of ")
    ]
    assert rows, "".join(frames)
    assert all(unit in row for row in rows), rows
    print(f"{unit}: named in every frame ({time.monotonic() - started:.1f} s of creations)")


def _probe_loaded(pid: int) -> bool:
    """Whether top holds BPF programs (its probe is attached): it then counts what follows."""
    fds = Path(f"/proc/{pid}/fd")
    try:
        return any("bpf-prog" in str(p.readlink()) for p in fds.iterdir())
    except OSError:
        return False


def test_a_docker_data_root_made_after_the_daemon_started_is_watched(tmp_path: Path) -> None:
    """The daemon first, its docker_root a folder that does not exist (nor its parent, under
    /tmp: a busy folder), then dockerd installed and started with that data root: a
    ``docker run --rm`` job that is removed before the next scrape is counted exactly under
    its name (read as dockerd wrote it), not under empty labels."""
    base = Path(f"/tmp/procmond-late-{secrets.token_hex(4)}")
    data_root = base / "data"
    assert not base.exists()
    daemon = start_daemon(
        tmp_path,
        f"docker_root: {data_root}\n"
        'containers_storage_root: ""\ncontainerd_state: ""\nnerdctl_root: ""\n',
    )
    docker = None
    try:
        started = time.monotonic()
        docker = Dockerd(base)  # makes base/, then dockerd makes data/ and containers/
        appeared = f"docker's state appeared at {data_root}: watching it"
        wait_until(lambda: appeared in daemon.log(), 30, "the data root to be watched")
        armed = time.monotonic() - started
        import_image(make_root(tmp_path / "box"), "docker", f"--host=unix://{docker.socket}")
        name, container = unique_name("lat"), f"late-{secrets.token_hex(4)}"
        ran = time.monotonic()
        docker.cli(
            "run", "--rm", f"--name={container}", "--network=none", "procmond-test-box:1",
            "/creator", "fork", "120", "--rate", "60", name.hex(),
        )  # fmt: skip
        assert docker.cli("ps", "-aq", f"--filter=name={container}").stdout == ""
        lived = time.monotonic() - ran
        forks = daemon.scrape().series("procmond_forks_total")
        mine = {
            (ls["unit"], ls["namespace"], ls["pod"], ls["container"]): value
            for ls, value in ((dict(k), v) for k, v in forks.items())
            if ls["comm"] == name.decode()
        }
        assert mine == {("", "", "", container): 120}
        print(
            f"dockerd started after the daemon: its data root watched {armed:.2f} s after "
            f"dockerd's start; {container} lived {lived:.2f} s, 120 of 120 named after it"
        )
    finally:
        if docker is not None:
            docker.stop()
        assert daemon.stop() == 0, daemon.log()
        shutil.rmtree(base, ignore_errors=True)
