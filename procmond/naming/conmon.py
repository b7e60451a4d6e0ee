"""A Podman container's name from its monitor process, ``conmon``, which needs no capability.

Podman runs every container under a ``conmon``, whose command line carries the container's id
(``-c <id>``) and name (``-n <name>``); ``conmon`` is the parent of the container's first
process (it is a subreaper), and that process is the ancestor of every other one. A rootless
user's store is 0700, but ``cgroup.procs``, ``/proc/<pid>/status`` and ``/proc/<pid>/cmdline``
are world-readable, so procmond reads the name from there (:class:`ConmonNames`):

* the container's cgroup's first :data:`PROCS_MAX` processes, each followed up its parents
  (``PPid``) at most :data:`DEPTH_MAX` steps, to a process whose command line is conmon's
  (:func:`conmon_args`) with ``-c`` this very container id;
* that process's real uid must be the uid the caller expects (for a rootless container, the
  ``user@<uid>.service`` its cgroup sits under): a user may name only their own cgroups, and a
  process of another uid posing as conmon names nothing;
* the child is read again after its parent: the same ``PPid`` means the parent lived all
  along, so its pid was not reused by another process in between.

Every read is size-limited and every argument is untrusted bytes: the name is decoded and cut
as the other runtimes' names are (procmond.naming.runtime.clean_name). Found names are kept in
a bounded LRU. A container that has exited (its conmon gone) is not named from here.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import NamedTuple

from procmond.naming.lru import BoundedLRU
from procmond.naming.runtime import clean_name, read_limited

PROCS_MAX = 16  # processes of a container's cgroup looked at
DEPTH_MAX = 8  # parents followed from each
PROCS_READ = 4096  # bytes of cgroup.procs read: more than PROCS_MAX pids
STATUS_LIMIT = 16384  # /proc/<pid>/status is ~1.5 KiB
CMDLINE_LIMIT = 65536  # podman 4.3's conmon command line is ~2-3 KiB; longer is not conmon's

# conmon 2.1's options (GLib's option parser): the short spellings, and which take no value.
_SHORT = {
    b"b": b"bundle", b"c": b"cid", b"P": b"conmon-pidfile", b"p": b"container-pidfile",
    b"u": b"cuuid", b"e": b"exec", b"l": b"log-path", b"n": b"name", b"0": b"persist-dir",
    b"r": b"runtime", b"i": b"stdin", b"s": b"systemd-cgroup", b"t": b"terminal",
    b"T": b"timeout", b"h": b"help",
}  # fmt: skip
_FLAGS = frozenset({
    b"exec", b"exec-attach", b"leave-stdin-open", b"no-new-keyring", b"no-pivot",
    b"no-sync-log", b"replace-listen-pid", b"stdin", b"sync", b"syslog", b"systemd-cgroup",
    b"terminal", b"version", b"full-attach", b"help", b"no-container-partial-message",
})  # fmt: skip
_VALUED = frozenset(_SHORT.values()) - _FLAGS | {
    b"api-version", b"exec-process-spec", b"exit-command", b"exit-command-arg", b"exit-delay",
    b"exit-dir", b"log-level", b"log-size-max", b"log-global-size-max", b"log-tag", b"restore",
    b"runtime-arg", b"runtime-opt", b"sdnotify-socket", b"socket-dir-path",
    b"seccomp-notify-socket", b"seccomp-notify-plugins",
}  # fmt: skip


def conmon_args(argv: Sequence[bytes]) -> tuple[bytes, bytes] | None:
    """The container id and name (``-c``/``--cid``, ``-n``/``--name``, the last of each, as
    GLib takes them) of a conmon command line, or None if it is not one or lacks either.

    Options are paired with their values as conmon parses them, so that a value (an
    ``--exit-command-arg -n``) is never taken for an option. An option newer than conmon 2.1
    takes the next argument as its value unless that starts with "-"."""
    if not argv or os.path.basename(argv[0]) != b"conmon":
        return None
    found: dict[bytes, bytes] = {}
    i = 1
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg == b"--":
            break  # the rest are operands, never options
        if arg.startswith(b"--"):
            key, eq, value = arg[2:].partition(b"=")
            if eq:
                found[key] = value
                continue
        elif len(arg) == 2 and arg[:1] == b"-" and arg[1:] in _SHORT:
            key = _SHORT[arg[1:]]
        else:
            continue  # an operand, or a grouping podman never writes: no option of ours
        if key in _FLAGS:
            continue
        if i < len(argv) and (key in _VALUED or not argv[i].startswith(b"-")):
            found[key] = argv[i]
            i += 1
    cid, name = found.get(b"cid"), found.get(b"name")
    return None if cid is None or name is None else (cid, name)


def cgroup_pids(directory: str, most: int = PROCS_MAX) -> list[int]:
    """The first ``most`` pids of a cgroup (one read of ``cgroup.procs``; a partial last line
    is left out)."""
    try:
        fd = os.open(os.path.join(directory, "cgroup.procs"), os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return []
    try:
        data = os.read(fd, PROCS_READ)
    except OSError:
        return []
    finally:
        os.close(fd)
    lines = data.split(b"\n")[:-1]  # the last is "" or cut off
    return [int(line) for line in lines[:most] if line.isdigit() and len(line) <= 10]


class ProcStatus(NamedTuple):
    """What /proc/<pid>/status says of a process's parent and real uid."""

    ppid: int
    uid: int


def status_of(proc: str, pid: int) -> ProcStatus | None:
    data = read_limited(f"{proc}/{pid}/status", STATUS_LIMIT)
    if data is None:
        return None
    ppid = uid = None
    for line in data.split(b"\n"):
        key, _, value = line.partition(b":")
        fields = value.split()
        if key == b"PPid" and fields and fields[0].isdigit():
            ppid = int(fields[0])
        elif key == b"Uid" and fields and fields[0].isdigit():
            uid = int(fields[0])
    return None if ppid is None or uid is None else ProcStatus(ppid, uid)


class ConmonNames:
    """Container id → name from its running conmon, as the module docstring says."""

    def __init__(self, capacity: int, proc: str = "/proc") -> None:
        self._proc = proc
        self._names: BoundedLRU[str, str] = BoundedLRU(capacity)

    def name_of(self, container_id: str, directory: str, uid: int) -> str | None:
        """The name of the container whose cgroup is ``directory``, from a conmon of ``uid``
        with ``-c container_id`` above one of its processes; None if there is none."""
        known = self._names.get(container_id)
        if known is not None:
            return known
        seen: set[int] = set()
        for pid in cgroup_pids(directory):
            name = self._walk_up(pid, container_id.encode(), uid, seen)
            if name:
                self._names.put(container_id, name)
                return name
        return None

    def _walk_up(self, pid: int, cid: bytes, uid: int, seen: set[int]) -> str | None:
        child = status_of(self._proc, pid)
        for _ in range(DEPTH_MAX):
            if child is None or child.ppid <= 1 or child.ppid in seen:
                return None  # pid 1 is never conmon; a parent seen led nowhere already
            parent_pid = child.ppid
            seen.add(parent_pid)
            parent = status_of(self._proc, parent_pid)
            if parent is None:
                return None
            cmdline = read_limited(f"{self._proc}/{parent_pid}/cmdline", CMDLINE_LIMIT)
            args = None if cmdline is None else conmon_args(cmdline.split(b"\0")[:-1])
            if args is not None and args[0] == cid:
                again = status_of(self._proc, pid)  # still its child: not a reused pid
                if parent.uid != uid or again is None or again.ppid != parent_pid:
                    return None
                return clean_name(args[1]) or None
            pid, child = parent_pid, parent
        return None

    def sizes(self) -> dict[str, tuple[int, int]]:
        return {"conmon_names": (len(self._names), self._names.capacity)}
