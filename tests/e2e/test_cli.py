"""The command line as an operator meets it: bad configs, busy ports, signals, privileges."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from procmond import __version__
from tests.e2e.harness import (
    PROCMOND_SCRIPT,
    REPO,
    free_port,
    own_comm,
    procmond,
    run_creator,
    start_daemon,
    unique_name,
)

BAD_CONFIGS = [
    ("max_entries: -5\n", "line 1: max_entries: must be from 1"),
    ("max_entries: lots\n", "line 1: max_entries: must be a whole number"),
    ("histograms: true\nlisten: '127.0.0.1:99999'\n", "line 2: listen: port must be"),
    ("listen: 'not an address:80'\n", "line 1: listen:"),
    ("labels: [comm, pid]\n", "line 1: labels: unknown label 'pid'"),
    (
        "log_level: info\nmax_entires: 10\n",
        "line 2: max_entires: unknown key; did you mean max_entries?",
    ),
    ("max_entries: [1, 2\n", "YAML syntax error"),
    ("- a\n- b\n", "expected a mapping"),
]


@pytest.mark.parametrize(("text", "message"), BAD_CONFIGS)
@pytest.mark.parametrize("command", ["run", "check-config"])
def test_bad_config_exits_78_naming_the_key(
    tmp_path: Path, command: str, text: str, message: str
) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    args = ["run", "--config", str(config)] if command == "run" else ["check-config", str(config)]
    started = time.monotonic()
    result = procmond(*args)
    assert result.returncode == 78, result.stderr
    assert message in result.stderr
    assert str(config) in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    assert time.monotonic() - started < 10  # nothing was loaded


def test_missing_config_file_is_a_config_error(tmp_path: Path) -> None:
    result = procmond("run", "--config", str(tmp_path / "nope.yaml"))
    assert result.returncode == 78
    assert "no such file" in result.stderr


def test_check_config_accepts_the_shipped_config() -> None:
    result = procmond("check-config", str(Path(__file__).parents[2] / "config/procmond.yaml"))
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout
    assert result.stderr == ""  # every interface: no warning about the listen address


def test_check_config_resolves_the_listen_host(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text('listen: "no-such-host.invalid:10057"\n')
    result = procmond("check-config", str(config))
    assert result.returncode == 78, result.stdout + result.stderr
    assert result.stderr == (
        f"procmond: config error: {config}: listen: host no-such-host.invalid does not "
        "resolve (Name or service not known); use an IP address of this host or a name it "
        "resolves\n"
    )


def test_check_config_counts_series_without_the_dropped_labels(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("labels: []\n")
    result = procmond("check-config", str(config))
    assert result.returncode == 0, result.stderr
    # 4 counters of one label set each and one label set of the lifetime histogram (19
    # series); the default has no syscall probes, so no failures nor fork durations
    assert result.stdout == f"{config}: OK; at most 23 series from the kernel maps\n"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--listen", "127.0.0.1:99999"], "command line: --listen: port must be a number"),
        (["--listen", "::1:80"], "command line: --listen: an IPv6 address needs brackets"),
        (["--log-level", "loud"], "command line: --log-level: must be one of debug, info"),
    ],
)
def test_bad_command_line_setting_is_a_config_error(
    tmp_path: Path, flags: list[str], message: str
) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("max_entries: 0\n")  # both the file's problem and the flag's are listed
    result = procmond("run", "--config", str(config), *flags)
    assert result.returncode == 78, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 2, lines
    assert lines[0] == (
        f"procmond: config error: {config}: line 1: max_entries: must be from 1 to 1048576, got 0"
    )
    assert lines[1].startswith(f"procmond: config error: {message}"), lines


def test_version() -> None:
    result = procmond("--version")
    assert result.stdout.strip() == f"procmond {__version__}"


def test_doctor_passes_on_this_machine() -> None:
    result = procmond("doctor")
    assert result.returncode == 0, result.stdout
    assert "procmond can run here" in result.stdout


LOADING = "loading the eBPF probe"  # logged just before the loader child starts


def test_taken_port_is_a_clear_error_and_loads_nothing(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        config = tmp_path / "c.yaml"
        config.write_text(f'listen: "127.0.0.1:{port}"\n')
        result = procmond("run", "--config", str(config))
    assert result.returncode == 69, result.stderr
    assert result.stderr.splitlines()[-1] == (
        f"procmond: error: cannot listen on 127.0.0.1:{port}: Address already in use; fix: "
        "another process holds the port (ss -ltnp), or change listen in the config"
    )
    # found before any probe was compiled or loaded, so nothing claims to be detached
    assert LOADING not in result.stderr
    assert "detached" not in result.stderr


def test_unresolvable_listen_host_fails_before_loading(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text('listen: "no-such-host.invalid:10057"\n')
    result = procmond("run", "--config", str(config))
    assert result.returncode == 69, result.stderr
    assert "cannot resolve listen address no-such-host.invalid" in result.stderr
    assert LOADING not in result.stderr
    assert "detached" not in result.stderr
    assert "Traceback" not in result.stderr


def test_unprivileged_user_gets_one_sentence() -> None:
    with tempfile.TemporaryDirectory() as public:  # pytest's tmp_path is root-only
        os.chmod(public, 0o755)
        config = Path(public) / "c.yaml"
        config.write_text(f'listen: "127.0.0.1:{free_port()}"\n')
        config.chmod(0o644)
        result = _run_as_nobody(config)
    assert result.returncode == 77, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("procmond: error: procmond needs CAP_BPF and CAP_PERFMON"), lines
    assert "Traceback" not in result.stderr


NOBODY = (
    "setpriv",
    "--reuid=65534",
    "--regid=65534",
    "--clear-groups",
    "--inh-caps=-all",
    "--bounding-set=-all",
)


def _run_as_nobody(config: Path) -> subprocess.CompletedProcess:
    return procmond("run", "--config", str(config), wrapper=NOBODY)


def test_doctor_as_an_unprivileged_user_answers_in_sentences() -> None:
    result = procmond("doctor", wrapper=NOBODY)
    assert result.returncode == 77, result.stdout + result.stderr
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert "[FAIL] capabilities: missing CAP_BPF, CAP_PERFMON" in lines
    # tracefs is root's alone: the check says it could not look, and how to fix that
    denied = "cannot read /sys/kernel/tracing/events: Permission denied"
    tracefs = lines.index(f"[FAIL] tracefs: {denied}")
    assert lines[tracefs + 1] == "       fix: run it as root: sudo procmond doctor"
    assert lines[-1].startswith("procmond cannot run as this user: it needs root")
    assert "sudo procmond doctor" in lines[-1]


def test_sigterm_and_sigint_exit_zero_within_a_second(tmp_path: Path) -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):
        daemon = start_daemon(tmp_path)
        started = time.monotonic()
        assert daemon.stop(sig) == 0, daemon.log()
        assert time.monotonic() - started < 1.0
        assert LOADING in daemon.log()
        assert "stopped: probes detached" in daemon.log()


def test_a_stop_signal_taken_by_any_thread_stops_the_daemon(tmp_path: Path) -> None:
    """kill(2) with a thread's id hands the process's signal to that thread first; a runtime
    that signals a container's tasks one by one does that. Python runs the handler only in
    the main thread, so the main loop must wake whichever thread took it."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        daemon = start_daemon(tmp_path)
        daemon.scrape()  # the HTTP threads are up
        main = daemon.process.pid
        others = sorted(int(t) for t in os.listdir(f"/proc/{main}/task") if int(t) != main)
        assert others, "the daemon has no thread but its main one"
        os.kill(others[-1], sig)
        try:
            assert daemon.process.wait(5) == 0, daemon.log()
        except subprocess.TimeoutExpired:
            daemon.process.kill()
            daemon.process.wait()
            raise AssertionError(f"{sig.name} to thread {others[-1]} was not acted on") from None
        assert f"received {sig.name}: stopping" in daemon.log()
        assert "stopped: probes detached" in daemon.log()


REQUEST_LOGGED = '"GET /metrics HTTP/1.1" 200'  # a debug line, one per request


def test_sighup_reload_good_and_bad(tmp_path: Path, creator: Path) -> None:
    daemon = start_daemon(tmp_path, "log_level: info\n")
    name = unique_name("hup")
    labels = {"comm": name.decode(), "parent_comm": own_comm()}
    try:
        run_creator(creator, "fork", 5, [name])
        loaded = daemon.scrape().value("procmond_config_last_reload_success_timestamp_seconds")
        assert loaded > 0
        assert REQUEST_LOGGED not in daemon.log()  # scraped already, but at info
        daemon.config_path.write_text(f'listen: "127.0.0.1:{daemon.port}"\nlog_level: debug\n')
        daemon.process.send_signal(signal.SIGHUP)
        daemon.wait_for_log(f"reloaded config from {daemon.config_path}")
        run_creator(creator, "fork", 5, [name])
        m = daemon.scrape()
        assert m.value("procmond_config_last_reload_successful") == 1
        reloaded = m.value("procmond_config_last_reload_success_timestamp_seconds")
        assert reloaded > loaded
        assert m.value("procmond_forks_total", **labels) == 10  # nothing lost meanwhile
        daemon.wait_for_log(REQUEST_LOGGED)  # the reloaded log_level applies

        daemon.config_path.write_text("max_entries: -1\n")
        daemon.process.send_signal(signal.SIGHUP)
        daemon.wait_for_log("reload failed")
        m = daemon.scrape()  # still serving, on the old config
        assert m.value("procmond_config_last_reload_successful") == 0
        assert m.value("procmond_config_last_reload_success_timestamp_seconds") == reloaded
        errors = [ln for ln in daemon.log().splitlines() if "reload failed" in ln]
        assert len(errors) == 1 and "max_entries" in errors[0]
    finally:
        assert daemon.stop() == 0


def test_command_line_settings_win_over_the_file_and_after_reload(tmp_path: Path) -> None:
    file_port, flag_port = free_port(), free_port()
    daemon = start_daemon(
        tmp_path,
        f'listen: "127.0.0.1:{file_port}"\nlog_level: warning\n',
        port=flag_port,
        listen_in_file=False,
        args=["--listen", f"127.0.0.1:{flag_port}", "--log-level", "debug"],
    )
    try:
        assert (
            f"config from {daemon.config_path} (--listen, --log-level from the command line)"
            in (
                daemon.wait_for_log(REQUEST_LOGGED)  # started serving on the flag's port, at debug
            )
        )
        assert not _listening(file_port)
        # the file changes both; a reload re-reads it, and the flags still win
        daemon.config_path.write_text(f'listen: "127.0.0.1:{file_port}"\nlog_level: error\n')
        daemon.process.send_signal(signal.SIGHUP)
        log = daemon.wait_for_log("reloaded config from")  # an info line: still at debug
        daemon.scrape()
        daemon.wait_for_log(REQUEST_LOGGED, count=log.count(REQUEST_LOGGED) + 1)
        assert daemon.scrape().value("procmond_config_last_reload_successful") == 1
        assert not _listening(file_port)
    finally:
        assert daemon.stop() == 0, daemon.log()


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def test_run_from_the_folder_holding_a_clone_named_procmond(tmp_path: Path) -> None:
    """`git clone .../procmond && procmond run`: the clone's folder must not be imported in
    place of the installed package, by the daemon or by its loader child."""
    shutil.copytree(
        REPO,
        tmp_path / "procmond",
        ignore=shutil.ignore_patterns(".venv", ".git", "__pycache__", "*_cache", "out", "dist"),
    )
    config_dir = tmp_path / "etc"
    config_dir.mkdir()
    daemon = start_daemon(config_dir, command=PROCMOND_SCRIPT, cwd=tmp_path)
    try:
        assert daemon.scrape().value("procmond_probe_attached", probe="task_newtask") == 1
    finally:
        assert daemon.stop() == 0, daemon.log()


def test_dev_script_run_skips_what_is_done_and_says_how_to_stop(tmp_path: Path) -> None:
    dev = REPO / "scripts" / "dev.sh"
    subprocess.run([str(dev), "setup", "--test"], check=True, capture_output=True, timeout=600)
    # what pip writes for an editable install: rewritten if pip runs again
    installed = list((REPO / ".venv").glob("lib/python3*/site-packages/__editable__*procmond*"))
    assert installed
    written = {path: path.stat().st_mtime_ns for path in installed}
    daemon = start_daemon(tmp_path, command=[str(dev)], ready_timeout=60)
    try:
        log = daemon.log()
        assert "dev.sh: procmond is installed in" in log and "from this tree: skipping pip" in log
        assert (
            f"dev.sh: starting procmond run --config {daemon.config_path}; Ctrl-C stops it" in log
        )
        assert {path: path.stat().st_mtime_ns for path in installed} == written
    finally:
        assert daemon.stop(signal.SIGINT) == 0, daemon.log()  # what Ctrl-C sends
