"""procmond's configuration: one frozen dataclass, its defaults, and all of its validation.

The defaults here are the embedded config the daemon uses when no file exists; the documented
``config/procmond.yaml`` carries the same values (a test keeps the two equal). Settings given
on the command line (``run --listen``, ``--log-level``) go through the same validators.
"""

from __future__ import annotations

import difflib
import errno
import ipaddress
import re
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from procmond.errors import ConfigError

DEFAULT_CONFIG_PATH = Path("/etc/procmond/config.yaml")
DEFAULT_PORT = 10057

# Labels a config may keep. The cgroup ones come from the creating task's cgroup (its systemd
# unit, or its Kubernetes pod and container): an empty value where the task has none.
CGROUP_LABELS = ("unit", "namespace", "pod", "container")
KNOWN_LABELS = ("comm", "parent_comm", *CGROUP_LABELS)
LOG_LEVELS = ("debug", "info", "warning", "error")

# Kernel maps are preallocated: these caps keep a typo from asking for gigabytes.
MAX_ENTRIES_LIMIT = 1_048_576
HISTOGRAM_MAX_ENTRIES_LIMIT = 65_536
# Far above any host's creation rate (a 2-core VM forks ~10k/s): a bigger value is a typo.
STORM_THRESHOLD_LIMIT = 10_000_000

_HOSTNAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$")


@dataclass(frozen=True)
class Config:
    """Every setting, with its default. Field names are the YAML keys."""

    listen: str = f":{DEFAULT_PORT}"
    max_entries: int = 4096
    histograms: bool = True
    syscall_probes: bool = False
    histogram_max_entries: int = 256
    labels: tuple[str, ...] = KNOWN_LABELS
    log_level: str = "info"
    web_config_file: str = ""
    # Processes created per second by one command that make a fork storm, logged with the
    # creating PIDs (procmond/storms/detector.py); the ForkStorm alert's default threshold. 0: off.
    storm_threshold: int = 2000
    # A bpffs folder where the probe stays loaded between two runs of the daemon, so that a
    # restart misses no count (procmond/kernel/pins.py); "" to load a fresh probe at every start and
    # detach it at every stop. `procmond detach` removes it.
    pin_root: str = "/sys/fs/bpf/procmond"
    # Where the counts the daemon keeps in user space are saved for the next daemon that
    # adopts the pinned probe (procmond/lifecycle/state.py).
    state_dir: str = "/var/lib/procmond"
    # Where container runtimes keep their state, read-only, to name containers outside
    # Kubernetes (procmond/naming/); "" leaves that runtime's containers unnamed.
    docker_root: str = "/var/lib/docker"
    containers_storage_root: str = "/var/lib/containers/storage"  # Podman and CRI-O
    containerd_state: str = "/run/containerd"
    nerdctl_root: str = "/var/lib/nerdctl"

    @property
    def cgroup_labels(self) -> tuple[str, ...]:
        """The cgroup labels kept: any of them makes the probe key counters by cgroup."""
        return tuple(label for label in CGROUP_LABELS if label in self.labels)

    @property
    def listen_host(self) -> str:
        return split_listen(self.listen)[0]

    @property
    def listen_port(self) -> int:
        return split_listen(self.listen)[1]


def split_listen(listen: str) -> tuple[str, int]:
    """``host:port``, ``[v6]:port`` or ``:port`` (all interfaces) into (host, port)."""
    host, sep, port_text = listen.rpartition(":")
    if not sep:
        raise ValueError(f'expected "host:port" or ":port", got "{listen}"')
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        _check_ip(host, listen)
    elif ":" in host:
        raise ValueError(f'an IPv6 address needs brackets, as in "[::1]:{port_text}"')
    elif host and not (
        _HOSTNAME.match(host) and all(1 <= len(label) <= 63 for label in host.split("."))
    ):  # labels of 1 to 63 characters, or the resolver refuses the name (RFC 1035)
        raise ValueError(f'"{host}" is not an IP address or host name')
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f'port must be a number from 1 to 65535, got "{port_text}"')
    return host, int(port_text)


def _check_ip(host: str, listen: str) -> None:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f'"{listen}" has an invalid IP address') from None


def load_config(
    path: Path | None, overrides: Mapping[str, Any] | None = None
) -> tuple[Config, str]:
    """The config to run with, and where it came from.

    An explicit ``path`` must exist. Without one, ``/etc/procmond/config.yaml`` is used if it
    exists, else the embedded defaults. ``overrides`` (key → value, from command-line flags)
    win over the file; every problem, in the file or in a flag, is reported at once.
    """
    flags, flag_problems = _validate(
        (
            (key, value, f"command line: {flag_name(key)}")
            for key, value in (overrides or {}).items()
        )
    )
    try:
        config, source = _load_file(path)
    except ConfigError as exc:
        raise ConfigError(exc.problems + flag_problems) from None
    if flag_problems:
        raise ConfigError(flag_problems)
    if not flags:
        return config, source
    given = ", ".join(flag_name(key) for key in flags)
    return replace(config, **flags), f"{source} ({given} from the command line)"


def flag_name(key: str) -> str:
    """The command-line flag that sets a config key: ``log_level`` → ``--log-level``."""
    return "--" + key.replace("_", "-")


def _load_file(path: Path | None) -> tuple[Config, str]:
    if path is None:
        if not DEFAULT_CONFIG_PATH.exists():
            return Config(), "embedded defaults"
        path = DEFAULT_CONFIG_PATH
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{path}: no such file"]) from None
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{path}: not UTF-8 text"]) from None
    return parse_config(text, str(path)), str(path)


def parse_config(text: str, source: str = "<config>") -> Config:
    """Parse and validate YAML text; raise ConfigError listing every problem."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}: line {mark.line + 1}" if mark else source
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError([f"{where}: YAML syntax error: {problem}"]) from None
    if data is None:
        return Config()
    if not isinstance(data, dict):
        raise ConfigError([f"{source}: expected a mapping of keys to values at the top level"])
    lines = _key_lines(root)
    values, problems = _validate(
        (key, value, f"{source}: line {lines[key]}: {key}" if key in lines else f"{source}: {key}")
        for key, value in data.items()
    )
    if problems:
        raise ConfigError(problems)
    return Config(**values)


def _validate(items: Iterable[tuple[Any, Any, str]]) -> tuple[dict[str, Any], list[str]]:
    """Validate (key, value, where) triples, ``where`` naming the setting as the person wrote
    it (file, line and key, or the flag): the good values by key, and a line per problem."""
    values: dict[str, Any] = {}
    problems: list[str] = []
    for key, value, where in items:
        if key not in _VALIDATORS:
            problems.append(f"{where}: unknown key{_suggestion(str(key))}")
            continue
        try:
            values[key] = _VALIDATORS[key](value)
        except ValueError as exc:
            problems.append(f"{where}: {exc}")
    return values, problems


def _suggestion(key: str) -> str:
    """For an unknown key: the known key it is probably a typo of, else the known keys."""
    close = difflib.get_close_matches(key, _VALIDATORS, n=1)
    if close:
        return f"; did you mean {close[0]}?"
    return f" (known keys: {', '.join(sorted(_VALIDATORS))})"


def check_listen_resolves(config: Config, source: str) -> None:
    """Raise ConfigError if the listen host does not resolve (``procmond check-config``).

    Not part of load_config: a reload re-reads the config in the main loop, which must not
    wait on DNS (a resolver timing out takes tens of seconds, longer than the watchdog
    allows); ``run`` resolves the host when it binds, before it loads anything.
    """
    host = config.listen_host
    if not host:
        return
    try:
        socket.getaddrinfo(host, config.listen_port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise ConfigError(
            [
                f"{source}: listen: host {host} does not resolve ({reason}); use an IP address "
                "of this host or a name it resolves"
            ]
        ) from None


def address_on_host(family: int, sockaddr: tuple[Any, ...]) -> bool:
    """Whether an interface of this host has the address. The listener binds with IP_FREEBIND
    (at boot the address may not be up yet), so its own bind says nothing: a throwaway socket
    bound to (address, port 0) without it fails with EADDRNOTAVAIL when no interface has the
    address. Wildcards and loopback always bind."""
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((sockaddr[0], 0, *sockaddr[2:]))
        except OSError as exc:
            return exc.errno != errno.EADDRNOTAVAIL
    return True


def not_on_host(address: str, port: int) -> str:
    """What to say of a listen address no interface has, in one line: what and what to do."""
    return (
        f"listen address {address} is not on any interface of this host: nothing reaches "
        "procmond there until the address is added (it is bound anyway, so that procmond can "
        "start before the network at boot); if it is a mistake, set listen to an address of "
        f'this host (ip -brief address) or to ":{port}" for every interface'
    )


def listen_address_warnings(config: Config, source: str) -> list[str]:
    """``procmond check-config``'s warnings about the listen address: not on this host.
    Warnings, not errors: a config for a daemon that starts before the network must pass
    (the unit runs check-config before it starts)."""
    if not config.listen_host:
        return []
    try:
        infos = socket.getaddrinfo(config.listen_host, config.listen_port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        return []  # check_listen_resolves says so
    family, _, _, _, sockaddr = infos[0]  # the address the daemon binds
    if address_on_host(family, sockaddr):
        return []
    return [f"{source}: {not_on_host(str(sockaddr[0]), config.listen_port)}"]


def _key_lines(root: yaml.Node | None) -> dict[Any, int]:
    if not isinstance(root, yaml.MappingNode):
        return {}
    return {k.value: k.start_mark.line + 1 for k, _ in root.value if isinstance(k, yaml.ScalarNode)}


def _whole_number(minimum: int, limit: int, minimum_means: str = ""):
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"must be a whole number, got {value!r}")
        if not minimum <= value <= limit:
            raise ValueError(f"must be from {minimum}{minimum_means} to {limit}, got {value}")
        return value

    return check


def _positive_int(limit: int):
    return _whole_number(1, limit)


def _listen(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f'must be a string like ":{DEFAULT_PORT}", got {value!r}')
    split_listen(value)
    return value


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false, got {value!r}")
    return value


def _labels(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"must be a list drawn from {list(KNOWN_LABELS)}, got {value!r}")
    unknown = [v for v in value if v not in KNOWN_LABELS]
    if unknown:
        raise ValueError(f"unknown label {unknown[0]!r} (choose from {list(KNOWN_LABELS)})")
    if len(set(value)) != len(value):
        raise ValueError("lists a label twice")
    return tuple(label for label in KNOWN_LABELS if label in value)


def _log_level(value: Any) -> str:
    if not isinstance(value, str) or value.lower() not in LOG_LEVELS:
        raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}, got {value!r}")
    return value.lower()


def _path(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"must be a file path (or empty), got {value!r}")
    return value


def _state_root(value: Any) -> str:
    if value is None or value == "":
        return ""
    if not isinstance(value, str) or not value.startswith("/") or "\0" in value:
        raise ValueError(f"must be an absolute directory path (or empty), got {value!r}")
    return value.rstrip("/") or "/"


_VALIDATORS = {
    "listen": _listen,
    "max_entries": _positive_int(MAX_ENTRIES_LIMIT),
    "histograms": _bool,
    "syscall_probes": _bool,
    "histogram_max_entries": _positive_int(HISTOGRAM_MAX_ENTRIES_LIMIT),
    "labels": _labels,
    "log_level": _log_level,
    "web_config_file": _path,
    "storm_threshold": _whole_number(0, STORM_THRESHOLD_LIMIT, " (off)"),
    "pin_root": _path,
    "state_dir": _path,
    "docker_root": _state_root,
    "containers_storage_root": _state_root,
    "containerd_state": _state_root,
    "nerdctl_root": _state_root,
}
