"""Names read the moment a runtime writes them: inotify on each runtime's state directories.

A container that lives 2 s (a CI job's ``docker run --rm``) is often gone before the next
scrape asks for its name, and its state goes with it. So the names are read as the runtime
writes them: each runtime names its data root (``state_dirs``), how deep below it new entries
matter (``watch_depth``) and which directories lead there (``descend``: a root's image layers
are never watched), and is told of every entry made there (``noticed``); it reads what it
needs then (a size-limited file) into its bounded cache. The directories between the root and
the names are watched too, so that a runtime used for the first time after procmond started
(its ``containers/`` made then) is followed all the same.

A root that does not exist yet (dockerd installed and started after procmond, containerd's
state made at its first start) is waited for: its nearest existing ancestor is watched for
the next component of the root's path only, one watch per missing root, moved down as the
path is made and back up if a directory on it goes; when the root appears its real watch is
armed and what is already in it read. A root removed later is waited for again. Names of
other entries made in an ancestor are compared with that one component, never used.

One thread blocks in ``read`` on one inotify descriptor (no timer, no polling); watches on a
container's own directory go when the directory does (IN_IGNORED), and at most
``max_watches`` are held, waiting ones included. inotify is called through libc (ctypes): no
dependency.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os
import struct
import threading
from collections.abc import Sequence
from typing import Protocol

log = logging.getLogger(__name__)

IN_CLOSE_WRITE = 0x00000008
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_ISDIR = 0x40000000
IN_IGNORED = 0x00008000
IN_MASK_ADD = 0x20000000
IN_NONBLOCK = 0x800
IN_CLOEXEC = 0x80000
_MASK = IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE
# An ancestor of a missing root: only entries made (or moved) there matter. Added to the
# mask a watch of the same directory may already have, never replacing it.
_WAIT_MASK = IN_MOVED_TO | IN_CREATE | IN_MASK_ADD
ARM_TRIES = 64  # folders made or removed on a root's path while it is being armed
_EVENT = struct.Struct("iIII")


class Watched(Protocol):
    name: str

    def state_dirs(self) -> list[str]:
        """The roots to watch (absolute paths), whether they exist yet or not."""
        ...

    watch_depth: int

    def descend(self, relative: Sequence[str]) -> bool:
        """Whether the directory at ``relative`` can lead to names (and is watched)."""
        ...

    def noticed(self, relative: Sequence[str]) -> None:
        """An entry was made or written at ``relative`` (path components below a state dir)."""
        ...


def nearest_existing(path: str) -> tuple[str, str]:
    """The deepest existing directory on an absolute ``path`` that is not ``path`` itself, and
    the component below it that leads on to ``path``."""
    parent, child = os.path.split(path)
    while parent != path and not os.path.isdir(parent):
        path = parent
        parent, child = os.path.split(parent)
    return parent, child


class StateWatcher:
    def __init__(self, watched: Sequence[Watched], max_watches: int = 16384) -> None:
        self._runtimes = [r for r in watched if r.state_dirs()]
        self._max_watches = max_watches
        self._watches: dict[int, tuple[Watched, tuple[str, ...], str]] = {}
        # missing roots: ancestor's wd → {(runtime, root): the component awaited there}
        self._waiting: dict[int, dict[tuple[Watched, str], str]] = {}
        self._fd = -1
        self._thread: threading.Thread | None = None
        self._stop_r, self._stop_w = -1, -1
        self.noticed = 0

    def start(self) -> bool:
        """Watch every state directory, or wait for those not made yet (module docstring);
        False (and a line in the log) if inotify is not available."""
        libc_name = ctypes.util.find_library("c")
        if not self._runtimes or libc_name is None:
            return False
        self._libc = ctypes.CDLL(libc_name, use_errno=True)
        self._fd = self._libc.inotify_init1(IN_CLOEXEC)
        if self._fd < 0:
            problem = os.strerror(ctypes.get_errno())
            log.warning("cannot watch the container runtimes' state: %s", problem)
            return False
        for runtime in self._runtimes:
            for directory in runtime.state_dirs():
                self._arm(runtime, directory)
        self._stop_r, self._stop_w = os.pipe()
        self._thread = threading.Thread(target=self._run, name="container-names", daemon=True)
        self._thread.start()
        return True

    def _arm(self, runtime: Watched, root: str, waited: bool = False) -> None:
        """Watch ``root`` if it is there, else wait for it from its nearest existing ancestor
        (made between the look and the watch: the watch's own look at the ancestor sees it).
        A folder on the way made or removed meanwhile is followed, a bounded number of times.
        A root that was ``waited`` for is logged as it appears."""
        for _ in range(ARM_TRIES):
            if os.path.isdir(root):
                if self._add(runtime, (), root, runtime.watch_depth):
                    if waited:
                        log.info("%s's state appeared at %s: watching it", runtime.name, root)
                    return
                continue  # removed meanwhile: wait for it again
            if self._held() >= self._max_watches:
                return
            ancestor, child = nearest_existing(root)
            wd = self._libc.inotify_add_watch(self._fd, os.fsencode(ancestor), _WAIT_MASK)
            if wd < 0:
                error = ctypes.get_errno()
                if error in (errno.ENOENT, errno.ENOTDIR):
                    continue  # the ancestor went meanwhile: look again, higher
                log.warning("cannot wait for %s: %s", root, os.strerror(error))
                return
            self._waiting.setdefault(wd, {})[(runtime, root)] = child
            if not os.path.isdir(os.path.join(ancestor, child)):
                return  # the watch tells when it is made (a file there: when it is replaced)
            del self._waiting[wd][(runtime, root)]  # made meanwhile: look again, deeper
            self._release(wd)
        log.warning("stopped waiting for %s: the folders on its path keep changing", root)

    def _release(self, wd: int) -> None:
        """A waiting watch goes once it waits for no root, unless it is also a watch of a
        state directory (inotify gives one wd per directory)."""
        if wd in self._waiting and not self._waiting[wd]:
            del self._waiting[wd]
            if wd not in self._watches:
                self._libc.inotify_rm_watch(self._fd, wd)

    def _held(self) -> int:
        return len(self._watches) + len(self._waiting)

    def _add(self, runtime: Watched, relative: tuple[str, ...], directory: str, depth: int) -> bool:
        """Watch ``directory`` and what is in it; False if it is gone (True at the cap)."""
        if self._held() >= self._max_watches:
            return True
        wd = self._libc.inotify_add_watch(self._fd, os.fsencode(directory), _MASK)
        if wd < 0:
            return False
        self._watches[wd] = (runtime, relative, directory)
        # what is there already (made before the watch, or between a mkdir and its watch)
        try:
            with os.scandir(directory) as entries:
                children = [(e.name, e.is_dir(follow_symlinks=False)) for e in entries]
        except OSError:
            return True  # removed since: its watch's IN_IGNORED follows
        for name, is_dir in children[: self._max_watches]:
            path = (*relative, name)
            if not is_dir or depth == 1:
                self._notice(runtime, path)
            elif runtime.descend(path):
                self._add(runtime, path, os.path.join(directory, name), depth - 1)
        return True

    def _notice(self, runtime: Watched, path: tuple[str, ...]) -> None:
        self.noticed += 1
        try:
            runtime.noticed(path)
        except Exception:  # a name read ahead is a bonus: never end the thread
            log.exception("reading %s's state at %s", runtime.name, "/".join(path))

    def _run(self) -> None:
        import select

        poller = select.poll()
        poller.register(self._fd, select.POLLIN)
        poller.register(self._stop_r, select.POLLIN)
        while True:
            ready = {fd for fd, _ in poller.poll()}
            if self._stop_r in ready:
                return
            try:
                data = os.read(self._fd, 64 * 1024)
            except OSError:
                continue
            self._handle(data)

    def _handle(self, data: bytes) -> None:
        offset = 0
        while offset + _EVENT.size <= len(data):
            wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
            raw = data[offset + _EVENT.size : offset + _EVENT.size + length].rstrip(b"\0")
            offset += _EVENT.size + length
            if wd in self._waiting:
                self._awaited(wd, mask, raw)
            watched = self._watches.get(wd)
            if watched is None:
                continue
            if mask & IN_IGNORED:
                del self._watches[wd]
                if not watched[1]:  # a root removed: wait for it to come back
                    self._arm(watched[0], watched[2], waited=True)
                continue
            runtime, relative, directory = watched
            name = os.fsdecode(raw)
            path = (*relative, name)
            if not mask & IN_ISDIR or len(path) == runtime.watch_depth:
                self._notice(runtime, path)
            elif runtime.descend(path):
                depth = runtime.watch_depth - len(path)
                self._add(runtime, path, os.path.join(directory, name), depth)

    def _awaited(self, wd: int, mask: int, raw: bytes) -> None:
        """An entry made in an ancestor of missing roots (or the ancestor gone): look again
        for each root that entry leads to."""
        if mask & IN_IGNORED:
            roots = list(self._waiting.pop(wd))
        elif mask & (IN_CREATE | IN_MOVED_TO):
            name = os.fsdecode(raw)
            roots = [key for key, child in self._waiting[wd].items() if child == name]
            for key in roots:
                del self._waiting[wd][key]
        else:
            return  # a state directory's own event, on a directory waited at too
        for runtime, root in roots:
            self._arm(runtime, root, waited=True)  # here again (same wd) or deeper
        self._release(wd)

    def stop(self) -> None:
        if self._thread is not None:
            os.write(self._stop_w, b"x")
            self._thread.join(timeout=5)
            self._thread = None
        for fd in (self._fd, self._stop_r, self._stop_w):
            if fd >= 0:
                os.close(fd)
        self._fd = self._stop_r = self._stop_w = -1

    def sizes(self) -> dict[str, tuple[int, int]]:
        return {"container_state_watches": (self._held(), self._max_watches)}
