"""What a container runtime's naming source is, and the reading all of them share.

A source answers two questions (:class:`ContainerRuntime`):

* ``container_id(names)``: is this cgroup path (its components, already text) one of my
  containers, by the path's structure (``docker-<id>.scope``, ``/docker/<id>``...)? The
  deepest matching component wins, so a process in a sub-cgroup of a container counts for it.
* ``labels(container_id)``: the container's labels from the runtime's own state on disk, read
  only, never through its API socket (a socket is root on the host); None while not found.

Everything read is untrusted: files are read only up to a size limit, JSON is parsed (never
text-matched), names are decoded (procmond.text.decoded) and cut to :data:`NAME_MAX` chars, and
every cache is a bounded LRU. A container never gets its 64-hex id as a name: where no name is
found, :func:`short_id` (12 hex), as the runtimes' own CLIs show it.
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Sequence
from typing import Any, Protocol

from procmond.naming.labels import CgroupLabels
from procmond.text import decoded

HEX_ID = re.compile(r"^[0-9a-f]{64}$")
NAME_MAX = 253  # a DNS name's length: longer names are cut
JSON_LIMIT = 1 << 20  # a container's own state file (config.v2.json, config.json)


class ContainerRuntime(Protocol):
    """A naming authority for one runtime's containers outside Kubernetes."""

    name: str

    def container_id(self, names: Sequence[str]) -> str | None:
        """The container this cgroup path belongs to (by its structure), or None."""
        ...

    def labels(self, container_id: str) -> CgroupLabels | None:
        """The container's labels from the runtime's state, or None if not found (yet)."""
        ...

    def sizes(self) -> dict[str, tuple[int, int]]:
        """Entries and capacity of each cache (procmond_table_entries)."""
        ...

    def watched(self) -> list[Any]:
        """What procmond.naming.watcher watches for it (itself, or a store it shares)."""
        ...


def short_id(container_id: str) -> str:
    """The 12-hex short id of a 64-hex id; any other id (ctr's chosen ids) as it is, cut."""
    return container_id[:12] if HEX_ID.match(container_id) else clean_name(container_id)


def clean_name(raw: Any) -> str:
    """A name from a runtime's state as a label value: text, no leading "/", cut; "" if it is
    not a string."""
    if not isinstance(raw, str | bytes):
        return ""
    return decoded(raw).lstrip("/")[:NAME_MAX]


def leaf_match(names: Sequence[str], pattern: re.Pattern[str]) -> str | None:
    """The ``id`` group of the deepest component matching ``pattern``, or None."""
    for name in reversed(names):
        match = pattern.match(name)
        if match:
            return match.group("id")
    return None


def read_limited(path: str, limit: int) -> bytes | None:
    """A file's bytes if it exists and is at most ``limit`` bytes; None otherwise (a bigger
    file is not read at all: a hostile state file cannot bloat procmond)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    return read_open(fd, limit)


def read_open(fd: int, limit: int) -> bytes | None:
    """The bytes of an open regular file of at most ``limit`` bytes, else None; closes ``fd``.
    Read to its end, not by its size: /proc and cgroup files say they hold 0 bytes."""
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > limit:
            return None
        chunks: list[bytes] = []
        size = 0
        while size <= limit:
            chunk = os.read(fd, limit + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError:
        return None
    finally:
        os.close(fd)
    return None if size > limit else b"".join(chunks)


def parse_json(data: bytes | None) -> Any:
    """JSON bytes parsed, or None if there are none or they are not JSON."""
    if data is None:
        return None
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        return None


def read_json(path: str, limit: int = JSON_LIMIT) -> Any:
    """A JSON file parsed, or None if missing, too big or not JSON."""
    return parse_json(read_limited(path, limit))


def stamp(path: str) -> tuple[int, int, int] | None:
    """What tells a file changed (inode, size, mtime), or None if it is not there."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)
