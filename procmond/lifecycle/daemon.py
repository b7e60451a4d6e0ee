"""The daemon's lifecycle: load and attach, listen, READY=1, then a signal loop.

Signal handlers only queue the signal; the main loop acts on it, woken by the signals' wake-up
descriptor whichever thread the kernel handed the signal to. Between signals the loop
proves the kernel side still answers (it reads a map) before each watchdog ping, so a hung
daemon stops pinging and systemd restarts it. Without a watchdog it has no timer at all: an
idle daemon wakes up for nothing (benchmarks/README.md, idle CPU).
"""

from __future__ import annotations

import logging
import queue
import select
import signal
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from prometheus_client.process_collector import ProcessCollector

from procmond import __version__, signals
from procmond.config import Config, load_config
from procmond.errors import ProcmondError
from procmond.kernel import features as kernel
from procmond.kernel import handoff, pins, privileges
from procmond.kernel.inventory import FORKS_TOTAL
from procmond.kernel.maps import Histogram, MapReader
from procmond.lifecycle import state
from procmond.lifecycle.sources import CgroupSources, cgroup_sources
from procmond.lifecycle.state import StateFile
from procmond.lifecycle.systemd import Notifier
from procmond.logs import setup_logging
from procmond.naming.watcher import StateWatcher
from procmond.scrape.collector import ProcmondCollector
from procmond.scrape.metrics import series_budget
from procmond.scrape.selfmetrics import ProbeStatus, ReloadState
from procmond.storms.monitor import StormMonitor
from procmond.web.negotiation import negotiated
from procmond.web.server import MetricsServer, Render
from procmond.web.webconfig import WebSettings, load_web_config

log = logging.getLogger(__name__)


class Daemon:
    def __init__(
        self,
        config: Config,
        config_path: Path | None,
        source: str,
        web: WebSettings,
        overrides: Mapping[str, str] | None = None,
    ) -> None:
        self.config = config
        self.web = web
        self.config_path = config_path
        self.overrides = dict(overrides or {})  # command-line settings: they win at reload too
        self.source = source
        self.notifier = Notifier()
        self.reload_state = ReloadState(True, time.time())
        self.signals: queue.SimpleQueue[int] = queue.SimpleQueue()
        self.probe: handoff.HandedOffProbe | None = None
        self.server: MetricsServer | None = None
        self.reader: MapReader | None = None
        self.cgroups: CgroupSources | None = None
        self.collector: ProcmondCollector | None = None
        self._serving: Render | None = None
        self._loaded = threading.Event()  # set once _serving is, or when stopping
        self.storms: StormMonitor | None = None
        self.state_watcher: StateWatcher | None = None
        self._last_status = ""
        self.pinned: Path | None = None  # where the probe stays loaded after the daemon
        self.adopted = False
        self.carried: pins.Carried = {}  # counts of retired probes, by key field
        self.retired_states: list[dict] = []  # what their daemons kept in user space
        self.state: StateFile | None = None  # user-space counts, kept with a pinned probe

    def start(self) -> None:
        started = time.monotonic()
        self.notifier.status("opening HTTP listener")
        # Bind before loading: a taken port or a host that does not resolve fails at once,
        # not after the probe's compile. Connections wait in the listen backlog until the
        # server starts, once the probe is loaded and every capability is given up: the
        # serving threads must never hold any (capabilities are per thread).
        self.server = MetricsServer(
            self._reporting(self._serve), self.config.listen_host, self.config.listen_port, self.web
        )
        self.probe = self._adopt_or_load()
        self.reader = self.probe.reader()
        self._carry_on()
        self.cgroups, self.state_watcher = cgroup_sources(self.config, self.reader)
        self.storms = StormMonitor(self.probe, self.cgroups.resolver.names)
        self._keep_state()
        self._serving = self._render()
        self._loaded.set()
        privileges.drop_all(self.reader.overflow_events)  # bound and loaded; before any thread
        if self.state_watcher is not None:
            self.state_watcher.start()
        self.storms.configure(self.config)
        self.server.start()
        attached = sum(self.probe.attached.values())
        log.info(
            "procmond %s: %d/%d probes attached, BTF offsets %s, config from %s, at most "
            "%d series; serving %s://%s/metrics (ready in %.2f s)",
            __version__,
            attached,
            len(self.probe.attached),
            "in use" if self.probe.btf_offsets else "NOT in use (headers' layout)",
            self.source,
            series_budget(self.config),
            self.server.scheme,
            self.server.address,
            time.monotonic() - started,
        )
        self.notifier.ready(self._status_line())

    def _adopt_or_load(self) -> handoff.HandedOffProbe:
        """The probe pinned by an earlier run with this identity, or a new one (pinned). Then
        it is put on duty, and the probes of other builds and configs retired: their counts
        carry on (self.carried). Before capabilities go."""
        root = pins.pin_root(self.config)
        name = pins.identity(self.config) if root else ""
        probe = self._adopt(root / name) if root else None
        if probe is not None:
            log.info("adopted the probe pinned at %s: no compile, counts continue", root / name)
            self.pinned, self.adopted = root / name, True
        else:
            self.notifier.status("loading eBPF probe")
            log.info("loading the eBPF probe (compiling takes a second or two)")
            probe = handoff.load(self.config, pins.handover_flags(self.config))
            if root and probe.pinnable:
                try:
                    self.pinned = pins.pin(probe, root, name)
                except OSError as exc:
                    log.warning(
                        "cannot pin the probe in %s (%s): it goes with the daemon", root, exc
                    )
            elif root:
                log.warning(
                    "the probe will not outlive the daemon: this kernel attaches tracepoints "
                    "only through perf events (BPF links for them came in 5.15)"
                )
        if root and self.pinned is not None:
            duty = int(probe.manifest.get("duty", 0))
            self.carried, self.retired_states = pins.hand_over(root, name, duty, self._saved)
        return probe

    def _saved(self, name: str, probe_id: int) -> dict | None:
        """What the daemon of a retired probe saved (procmond/lifecycle/state.py), taken: its
        file goes."""
        saved = StateFile(Path(self.config.state_dir) / f"state-{name}.json", probe_id)
        data = saved.load()
        saved.path.unlink(missing_ok=True)
        return data

    def _adopt(self, folder: Path) -> handoff.HandedOffProbe | None:
        try:
            return pins.adopt(folder)
        except (OSError, ValueError, KeyError, ProcmondError) as exc:
            log.warning("cannot adopt the probe pinned at %s (%s): removing it", folder, exc)
            pins.remove(folder)
            return None

    def _serve(self, accept: str) -> tuple[bytes, str]:
        """What the first listener serves. It opens before the probe is loaded: a scrape that
        arrives meanwhile waits for it; if loading fails, its connection is closed."""
        self._loaded.wait()
        if self._serving is None:
            raise ConnectionAbortedError("procmond stopped before its probe was loaded")
        return self._serving(accept)

    def _reporting(self, render: Render) -> Render:
        """``render``, then STATUS= brought up to date (it names the series of the last
        scrape): at the scrape that changes it, not at a timer's next tick."""

        def serve(accept: str) -> tuple[bytes, str]:
            answer = render(accept)
            self._save_state()
            if self.notifier.enabled:
                self._report_status()
            return answer

        return serve

    def _report_status(self) -> None:
        status = self._status_line()
        if status != self._last_status:
            self.notifier.status(status)
            self._last_status = status

    def _carry_on(self) -> None:
        """Counts of the retired probes, under this probe's keys (procmond/kernel/maps.py)."""
        assert self.probe is not None and self.reader is not None
        for map_name, rows in self.carried.items():
            if map_name not in self.probe.layouts:
                continue
            key = self.probe.layouts[map_name].key
            for fields, value in rows:
                raw = key.encode(fields)
                if isinstance(value, Histogram):
                    histograms = self.reader.carried_histograms.setdefault(map_name, {})
                    known = histograms.get(raw)
                    histograms[raw] = value if known is None else known + value
                else:
                    counts = self.reader.carried.setdefault(map_name, {})
                    counts[raw] = counts.get(raw, 0) + value

    def _keep_state(self) -> None:
        """With a pinned probe: the state file, and the counts it holds if this daemon adopted
        the probe they belong to."""
        if self.pinned is None or self.probe is None or self.cgroups is None:
            return
        probe_id = self.probe.map(FORKS_TOTAL).id
        self.state = StateFile(
            Path(self.config.state_dir) / f"state-{self.pinned.name}.json", probe_id
        )
        for retired in self.retired_states:
            state.take_over_retired(self.cgroups, retired)
        data = self.state.load() if self.adopted else None
        if self.storms is not None:  # storm state: counters, and the storms going on
            for saved in [*self.retired_states, data or {}]:
                self.storms.restore(saved.get("storms"), same_probe=saved is data)
            self.storms.keep_with(self._keep_storms)
        if data is not None:
            self.cgroups.task_limits.restore(data["task_limits"])
            if self.cgroups.attribution is not None and "attribution" in data:
                self.cgroups.attribution.restore(data["attribution"])
            if self.reader is not None:
                state.restore_carried(self.reader, data.get("carried", {}))
            log.info("restored the counts kept in user space from %s", self.state.path)
        # at once: counts carried from a retired probe, and whole parts beside the storm
        # monitor's own saves
        self._save_state()

    def _keep_storms(self, storms: dict) -> None:
        if self.state is not None:
            self.state.save({"storms": storms})

    def _save_state(self) -> None:
        if self.state is None or self.cgroups is None:
            return
        parts = {"task_limits": self.cgroups.task_limits.state()}
        if self.reader is not None and (self.reader.carried or self.reader.carried_histograms):
            parts["carried"] = state.carried_state(self.reader)
        if self.cgroups.attribution is not None:
            parts["attribution"] = self.cgroups.attribution.state()
        self.state.save(parts)

    def _render(self) -> Render:
        """What /metrics serves: this probe's scrape, in the format the client accepts
        (procmond/web/negotiation.py)."""
        assert self.probe is not None and self.reader is not None and self.storms is not None
        status = ProbeStatus(
            self.probe.attached,
            self.probe.btf_offsets,
            __version__,
            self.probe.bcc_version,
            kernel.kernel_release(),
            self.probe.programs,
        )
        collector = self.collector = ProcmondCollector(
            self.reader, self.config, status, self.cgroups
        )
        others = (self.reload_state, self.storms, ProcessCollector(registry=None))
        return negotiated(
            lambda: collector.render_text(others), lambda encode: collector.render(encode, others)
        )

    def _status_line(self) -> str:
        assert self.probe is not None and self.server is not None
        attached = sum(self.probe.attached.values())
        series = self.collector.last_series if self.collector else None
        return (
            f"{attached}/{len(self.probe.attached)} probes attached; "
            f"serving {self.server.scheme}://{self.server.address}/metrics; "
            + (f"{series} series at the last scrape" if series is not None else "no scrape yet")
        )

    def install_signal_handlers(self) -> None:
        """Queue SIGTERM, SIGINT and SIGHUP from now on, those held since the entry
        (procmond/signals.py) included: a SIGHUP that came while loading is a reload once
        started, a SIGTERM stops the daemon as soon as it holds the probe, and detaches it."""
        for sig in signals.HELD:
            signal.signal(sig, lambda signum, _frame: self.signals.put(signum))
        signals.release()

    def loop(self) -> int:
        """Until SIGTERM or SIGINT (which it returns): reload on SIGHUP; check the maps and
        ping the watchdog if systemd set one, else wait for signals with no timeout."""
        tick = self.notifier.watchdog_interval
        with _signal_wakeup() as wakeup:
            while True:
                try:
                    signum = self.signals.get_nowait()
                except queue.Empty:
                    if select.select([wakeup], [], [], tick)[0]:
                        wakeup.recv(64)  # the handlers run as this returns to Python code
                    else:
                        self.heartbeat()
                    continue
                if signum == signal.SIGHUP:
                    self.reload()
                else:
                    log.info("received %s: stopping", signal.Signals(signum).name)
                    return signum

    def heartbeat(self) -> None:
        """Ping the watchdog only if a kernel map can still be read."""
        assert self.reader is not None
        try:
            self.reader.overflow_events()
        except Exception as exc:
            log.error("cannot read the kernel maps (%s): not pinging the watchdog", exc)
            return
        self.notifier.watchdog()

    def reload(self) -> None:
        """Re-read the config. Invalid: keep the old one. Valid: apply what can change live."""
        self.notifier.reloading()
        try:
            new, source = load_config(self.config_path, self.overrides)
            web = load_web_config(new.web_config_file)
            new, kept = pins.kernel_settings_kept(self.config, new)
            if kept:
                log.warning(
                    "reload: %s change(s) the kernel maps and take(s) effect at the "
                    "next restart, so that no count is lost",
                    ", ".join(kept),
                )
            if new.listen != self.config.listen:
                self._rebind(new, web)
            else:
                assert self.server is not None
                self.server.update_web(web)
            self.web = web
        except ProcmondError as exc:
            self.reload_state.successful = False
            log.error("reload failed, keeping the running config: %s", exc)
            self.notifier.ready(self._status_line())
            return
        logging.getLogger().setLevel(new.log_level.upper())
        self.config, self.source = new, source
        if self.storms is not None:
            self.storms.configure(new)
        self.reload_state.successful = True
        self.reload_state.success_time = time.time()
        log.info("reloaded config from %s", source)
        self.notifier.ready(self._status_line())

    def _rebind(self, new: Config, web: WebSettings) -> None:
        """Open the new listener before closing the old one, so a failure changes nothing."""
        assert self.server is not None
        server = MetricsServer(
            self._reporting(self._render()), new.listen_host, new.listen_port, web
        )
        server.start()
        self.server.close()
        self.server = server

    def stop(self, unpin: bool = False) -> None:
        """Close the listener and detach the probes side by side: both wait on the kernel or
        on the HTTP loop's poll interval, and systemd expects a prompt exit. A pinned probe
        keeps counting for the next start (a restart or a crash: a stop for good runs
        `procmond detach`), unless ``unpin``: a Ctrl-C at the terminal means stop, all of it."""
        self.notifier.stopping()
        self._loaded.set()  # scrapes waiting for a probe that never came give up
        closing = threading.Thread(target=self.server.close) if self.server else None
        if closing is not None:
            closing.start()
        if self.storms is not None:
            self.storms.stop()
        if unpin and self.pinned is not None:
            pins.unpin(self.pinned)
            if self.state is not None:
                self.state.path.unlink(missing_ok=True)
            self.pinned = None
        elif self.server is not None:
            with self.server.scrape_lock:  # a scrape in progress folds no more meanwhile
                self._save_state()
        if self.state_watcher is not None:
            self.state_watcher.stop()
        if self.probe is not None:
            self.probe.close()
        if closing is not None:
            closing.join()
        if self.pinned is not None:
            log.info("stopped: the probe keeps counting, pinned at %s", self.pinned)
        elif self.probe is not None:
            log.info("stopped: probes detached")


@contextmanager
def _signal_wakeup() -> Iterator[socket.socket]:
    """A socket that becomes readable when a signal with a Python handler arrives.

    The kernel hands a signal sent to the process to any thread that does not block it, and
    Python runs the handler only in the main thread, once that thread runs Python code again.
    Waiting on the queue alone, a SIGTERM that an HTTP thread took was never acted on
    (`podman stop` of the image run as the DaemonSet runs it: 3 of 8 stops ended in SIGKILL
    after the grace period). The interpreter writes to this descriptor from whichever thread
    took the signal, so the main loop wakes."""
    reader, writer = socket.socketpair()
    writer.setblocking(False)
    previous = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
    try:
        yield reader
    finally:
        signal.set_wakeup_fd(previous)
        reader.close()
        writer.close()


def run(config_path: Path | None, overrides: Mapping[str, str] | None = None) -> int:
    """``procmond run``: raises ProcmondError (with its exit code) if it cannot start.
    ``overrides``: config keys set on the command line, over the file's."""
    config, source = load_config(config_path, overrides)
    web = load_web_config(config.web_config_file)
    setup_logging(config.log_level)
    daemon = Daemon(config, config_path, source, web, overrides)
    daemon.install_signal_handlers()
    stopped_by = None
    try:
        daemon.start()
        stopped_by = daemon.loop()
    finally:
        daemon.stop(unpin=stopped_by == signal.SIGINT)
    return 0
