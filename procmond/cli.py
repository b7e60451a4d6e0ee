"""Command line: ``procmond run | watch | top | detach | check-config | doctor`` and
``--version``."""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace
from pathlib import Path

from procmond import __version__, signals
from procmond.config import (
    DEFAULT_CONFIG_PATH,
    Config,
    check_listen_resolves,
    listen_address_warnings,
    load_config,
)
from procmond.errors import ConfigError, ProcmondError
from procmond.naming.labels import Namer, Naming
from procmond.scrape.metrics import series_budget
from procmond.web.webconfig import load_web_config

WATCH_HELP = """\
One line per process or thread creation, live, as
  Process <comm> (PID:<pid>, PPID: <ppid>) called <syscall>

With --json, one JSON object a line, with these fields:
  time          wall-clock time of the creation: RFC 3339, UTC, microseconds
  timestamp_ns  the same instant on the kernel's CLOCK_MONOTONIC: nanoseconds since
                boot, not counting suspend (for ordering events and timing intervals)
  comm, pid     the creating process: its command and process id
  ppid          the creating process's parent's process id
  parent_comm   that parent's command
  syscall       sys_clone, sys_clone3, sys_fork, sys_vfork, or kernel_clone (a task
                the kernel made)
  kind          process or thread: what was created
  child_pid     the new task's process id (its creator's, for a thread)
  child_tid     the new task's thread id
  cgroup_id     the creating task's cgroup v2 id: the inode number of its cgroup's
                directory in the v2 hierarchy (stat -c %i DIR)
  unit          that cgroup's systemd unit: the nearest .service or .scope on its path
  namespace, pod, container
                its Kubernetes pod and container, from the kubelet's files on this node
                (as the daemon labels them; "" where there is none or none known yet)
Control characters in text lines are escaped; lost events are reported on stderr.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="procmond", description="Process-creation metrics from eBPF, for Prometheus."
    )
    parser.add_argument("--version", action="version", version=f"procmond {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    config_help = (
        f"YAML config file (default: {DEFAULT_CONFIG_PATH} if it exists, else the "
        "embedded defaults)"
    )

    run = sub.add_parser("run", help="run the daemon in the foreground, serving /metrics")
    run.add_argument("--config", type=Path, help=config_help)
    # No argparse choices or types: the values go through the config file's validation.
    run.add_argument(
        "--listen",
        metavar="ADDR",
        help='address to serve on, "host:port", "[v6]:port" or ":port"; overrides listen '
        "in the config file, also after a reload",
    )
    run.add_argument(
        "--log-level",
        metavar="LEVEL",
        help="debug, info, warning or error; overrides log_level in the config file, also "
        "after a reload",
    )

    watch = sub.add_parser(
        "watch",
        help="print one line per process or thread creation",
        description=WATCH_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    watch.add_argument("--config", type=Path, help=config_help)
    watch.add_argument("--json", action="store_true", help="one JSON object per line")
    watch.add_argument(
        "--comm",
        action="append",
        default=[],
        metavar="NAME",
        help="only events of this command (the creating process's; repeat for several)",
    )
    watch.add_argument(
        "--pid",
        action="append",
        default=[],
        type=_pid,
        metavar="PID",
        help="only events of this creating process (repeat for several)",
    )
    watch.add_argument(
        "--unit",
        action="append",
        default=[],
        metavar="UNIT",
        help="only events in this systemd unit (repeat for several); as with systemctl, a "
        "name without a suffix means NAME.service, and a glob (*, ?, [...]) matches several",
    )
    watch.add_argument(
        "--pod",
        action="append",
        default=[],
        metavar="[NAMESPACE/]POD",
        help="only events in this Kubernetes pod (repeat for several)",
    )
    watch.add_argument(
        "--container",
        action="append",
        default=[],
        metavar="NAME",
        help="only events in this container (its name, or short id where it has none; repeat "
        "for several)",
    )
    watch.add_argument(
        "--exec", action="store_true", help="execs too: 'Process <new command> ... called exec'"
    )
    watch.add_argument(
        "--timestamp",
        action="store_true",
        help="start each line with its wall-clock time in UTC (RFC 3339, microseconds)",
    )

    detach = sub.add_parser(
        "detach",
        help="unpin the probe a stopped daemon left counting (pin_root), so nothing stays loaded",
        description="Remove every probe pinned under the config's pin_root: what no running "
        "daemon holds is detached and freed at once; a running daemon's probe goes when it "
        "stops. The service runs this when it is stopped for good, and the package on removal.",
    )
    detach.add_argument("--config", type=Path, help=config_help)

    top = sub.add_parser(
        "top",
        help="a live view of creations by command, and the busiest creating processes",
        description="A live view of process and thread creation on this host, by command, in "
        "a terminal (-b or --once print plain text instead). Keys: f t e x a c sort by "
        "forks, threads, execs, exits, failures or command; up/down (k/j) select a row, whose "
        "busiest creating processes show below the table; ? or h show the keys; q quits.",
    )
    top.add_argument("--config", type=Path, help=config_help)
    top.add_argument(
        "-b", "--batch", action="store_true", help="print plain text refreshes (for scripts)"
    )
    top.add_argument(
        "-n", "--iterations", type=_positive, metavar="N", help="stop after N refreshes"
    )
    top.add_argument("--once", action="store_true", help="one refresh as plain text: -b -n 1")
    top.add_argument(
        "-d",
        "--delay",
        type=_interval,
        default=1.0,
        metavar="SECONDS",
        help="time between refreshes (default 1)",
    )
    top.add_argument(
        "-s",
        "--sort",
        default="forks",
        metavar="COLUMN",
        help="forks (default), threads, execs, exits, failures (counted only with "
        "--syscall-probes) or command",
    )
    top.add_argument(
        "--syscall-probes",
        action="store_true",
        help="also count failed creation calls (attaches the syscall tracepoints, which slow "
        "every syscall on the host a little while top runs)",
    )

    check = sub.add_parser("check-config", help="validate a config file without loading BPF")
    check.add_argument("file", nargs="?", type=Path, help=config_help)

    sub.add_parser("doctor", help="check that this host can run procmond, and say how to fix it")
    return parser


def _pid(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a process id (a positive number)")
    return int(text)


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return int(text)


def _interval(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = 0.0
    if not 0.1 <= seconds <= 3600:
        raise argparse.ArgumentTypeError(f"{text!r}: give seconds from 0.1 to 3600")
    return seconds


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command != "run":  # held since the entry; the daemon frees them itself
            signals.release()
        return _dispatch(args)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"procmond: config error: {problem}", file=sys.stderr)
        return exc.exit_code
    except ProcmondError as exc:
        fix = f"; fix: {exc.hint}" if exc.hint else ""
        print(f"procmond: error: {exc.message}{fix}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if os.environ.get("PROCMOND_DEBUG"):
            raise
        print(
            f"procmond: internal error: {type(exc).__name__}: {exc} "
            "(set PROCMOND_DEBUG=1 for a traceback)",
            file=sys.stderr,
        )
        return 1


def host_naming(config: Config) -> Naming:
    """How `watch` and `top` name cgroups: as the daemon does, from the probe they load (its
    mkdir records) on, with the container runtimes the config points at."""
    from procmond.naming.cgroups import host_namer
    from procmond.naming.runtimes import runtimes, state_watcher
    from procmond.scrape.metrics import cgroups_capacity

    capacity = cgroups_capacity(config)
    sources = runtimes(config, capacity)

    def naming(records: object) -> Namer:
        state_watcher(sources, capacity).start()  # a thread for the command's life
        return host_namer(records, sources)  # type: ignore[arg-type]

    return naming


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "run":
        from procmond.lifecycle.daemon import run

        flags = {"listen": args.listen, "log_level": args.log_level}
        return run(args.config, {key: value for key, value in flags.items() if value is not None})
    if args.command == "watch":
        from procmond.tools.watch import Selection, command_name, unit_pattern, watch

        config, _ = load_config(args.config)
        selection = Selection(
            frozenset(command_name(c) for c in args.comm),
            frozenset(args.pid),
            frozenset(unit_pattern(u) for u in args.unit),
            frozenset(args.pod),
            args.exec,
            frozenset(args.container),
        )
        naming = host_naming(config) if selection.by_cgroup or args.json else None
        return watch(
            config, args.json, selection=selection, timestamps=args.timestamp, naming=naming
        )
    if args.command == "top":
        from procmond.tools.top import SORT_NAMES, top

        if args.sort not in SORT_NAMES:
            raise ProcmondError(
                f"cannot sort by {args.sort!r}", f"use --sort with one of {', '.join(SORT_NAMES)}"
            )
        config, _ = load_config(args.config)
        config = replace(config, histograms=False, syscall_probes=args.syscall_probes)
        batch = args.batch or args.once
        count = 1 if args.once else args.iterations
        return top(config, args.delay, count, batch, args.sort, naming=host_naming(config))
    if args.command == "detach":
        from procmond.kernel.pins import detach

        config, _ = load_config(args.config)
        if not config.pin_root:
            print("procmond: pin_root is empty: nothing is pinned")
            return 0
        removed = detach(Path(config.pin_root))
        if config.state_dir:  # the saved counts of the probes just unpinned
            for saved in Path(config.state_dir).glob("state-*.json"):
                saved.unlink(missing_ok=True)
        print(f"procmond: unpinned {len(removed)} probe(s) from {config.pin_root}")
        return 0
    if args.command == "check-config":
        config, source = load_config(args.file)
        load_web_config(config.web_config_file)
        check_listen_resolves(config, source)
        for warning in listen_address_warnings(config, source):
            print(f"procmond: config warning: {warning}", file=sys.stderr)
        print(f"{source}: OK; at most {series_budget(config)} series from the kernel maps")
        return 0
    if args.command == "doctor":
        from procmond.tools.doctor import doctor

        return doctor(sys.stdout)
    raise AssertionError(args.command)
