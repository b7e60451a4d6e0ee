"""Rootless Podman's containers: ``libpod-<id>.scope`` below a user's ``user@<uid>.service``,
named from that user's own container store, ``<home>/.local/share/containers/storage``, and
where that cannot be read, from the container's running ``conmon`` (procmond/naming/conmon.py).

The uid comes from the path (``user@<uid>.service``), the home from the passwd database. A
user's home is theirs to shape, so their store is read more warily than a runtime's root:
every folder from the home down and the container list itself must be owned by that user and
none may be a symlink (opened one at a time, ``O_NOFOLLOW``, checked with ``fstat``): a user
cannot make procmond read, and show as names, a file that is not theirs. Reads are
size-limited as for the rootful store; at most ``users`` stores are kept (LRU), each with a
share of the names' capacity.

Podman makes the store's folders 0700, and procmond keeps no capability once its probe is
loaded, so as Podman leaves it the store cannot be read (only where the user lets uid 0 in:
``chmod`` or an ACL). Then the name comes from the container's ``conmon``, found from its
cgroup's processes up their parents, whose command line (world-readable) carries ``-c <id>
-n <name>``; its real uid must be the path's uid, so that a user names only their own
cgroups. The store is asked first: it is Podman's record (``podman rename`` changes it, not a
running conmon's arguments), and it still names a container whose conmon is gone.

Not looked for: a store moved by the user's ``XDG_DATA_HOME`` or ``storage.conf``
(``graphroot``), and the names of rootless Podman pods. A container whose store cannot be read
and whose conmon is gone (or whose cgroup path is not valid UTF-8, so that its directory
cannot be found from the path's text) gets its short id.
"""

from __future__ import annotations

import os
import pwd
from collections.abc import Callable, Sequence

from procmond.naming.cgroups import Hierarchy, read_layout
from procmond.naming.conmon import ConmonNames
from procmond.naming.containers_storage import STORE_LIMIT, ContainerStore
from procmond.naming.labels import CgroupLabels
from procmond.naming.lru import BoundedLRU
from procmond.naming.podman import CGROUP, USER_SERVICE
from procmond.naming.runtime import leaf_match, parse_json, read_open

STORE = (".local", "share", "containers", "storage")
USERS = 64  # user stores kept at once
DRIVERS_MAX = 16  # <driver>-containers folders looked at in one store
ENTRIES_MAX = 256  # entries of the store's folder listed to find them
UID_MAX = (1 << 32) - 2  # (uid_t)-1 is no uid
# Folders on the way are only searched (O_PATH: no read permission needed); the store's own
# folder is listed, its list read.
_DIR = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_LISTED = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


def home_of(uid: int) -> str:
    """The user's home from the passwd database, or "" for no such user."""
    try:
        return pwd.getpwuid(uid).pw_dir
    except (KeyError, OverflowError):
        return ""


def open_owned(parts: Sequence[str], start: int, uid: int, last: int = _DIR) -> int | None:
    """A descriptor of ``start``/``parts...``, each opened below the last without following a
    symlink and owned by ``uid`` (the last with flags ``last``); None otherwise."""
    opened: list[int] = []
    try:
        fd = start
        for i, part in enumerate(parts):
            fd = os.open(part, last if i == len(parts) - 1 else _DIR, dir_fd=fd)
            opened.append(fd)
            if os.fstat(fd).st_uid != uid:
                return None
        return opened.pop() if opened else None
    except OSError:
        return None
    finally:
        for fd in opened:
            os.close(fd)


class UserStore(ContainerStore):
    """One user's rootless container store, read as the module docstring says."""

    def __init__(self, home: str, uid: int, capacity: int, refresh_interval: float = 1.0) -> None:
        super().__init__(os.path.join(home, *STORE), capacity, refresh_interval)
        self.home = home
        self.uid = uid

    def _storage(self, last: int = _DIR) -> int | None:
        """The store's folder (opened with flags ``last``), if the home and each folder down to
        it are the user's."""
        try:
            home = os.open(self.home, _DIR & ~os.O_NOFOLLOW)  # the passwd database's path
        except OSError:
            return None
        try:
            if os.fstat(home).st_uid != self.uid:
                return None
            return open_owned(STORE, home, self.uid, last)
        except OSError:
            return None
        finally:
            os.close(home)

    def lists(self) -> list[str]:
        fd = self._storage(_LISTED)
        if fd is None:
            return []
        try:
            with os.scandir(fd) as entries:
                drivers = [
                    e.name
                    for e, _ in zip(entries, range(ENTRIES_MAX), strict=False)
                    if e.name.endswith("-containers") and e.is_dir(follow_symlinks=False)
                ]
        except OSError:
            return []
        finally:
            os.close(fd)
        return [
            os.path.join(self.root, d, "containers.json") for d in sorted(drivers)[:DRIVERS_MAX]
        ]

    def _open_list(self, path: str) -> int | None:
        storage = self._storage()
        if storage is None:
            return None
        try:
            driver = os.path.basename(os.path.dirname(path))
            return open_owned((driver, "containers.json"), storage, self.uid, _FILE)
        finally:
            os.close(storage)

    def _load(self, path: str) -> object:
        fd = self._open_list(path)
        return None if fd is None else parse_json(read_open(fd, STORE_LIMIT))

    def _stamp(self, path: str) -> tuple[int, int, int] | None:
        fd = self._open_list(path)
        if fd is None:
            return None
        try:
            st = os.fstat(fd)
        except OSError:
            return None
        finally:
            os.close(fd)
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def config(self, container_id: str) -> object:
        return None  # rootless pods are not looked up

    def state_dirs(self) -> list[str]:
        return []  # read when asked, not watched (one watch per user would be unbounded)


def v2_hierarchy() -> Hierarchy | None:
    """Where cgroup v2 is mounted here (None: no cgroup v2, no conmon look-up)."""
    try:
        return read_layout().v2
    except OSError:
        return None


class RootlessPodman:
    name = "podman-rootless"

    def __init__(
        self,
        capacity: int = 16384,
        users: int = USERS,
        home: Callable[[int], str] = home_of,
        hierarchy: Callable[[], Hierarchy | None] = v2_hierarchy,
        proc: str = "/proc",
    ) -> None:
        self._capacity = max(16, capacity // users)  # names per user: all users share capacity
        self._home = home
        # container id → (uid, its cgroup path, "" if not valid text)
        self._owners: BoundedLRU[str, tuple[int, str]] = BoundedLRU(capacity)
        self._stores: BoundedLRU[int, UserStore] = BoundedLRU(users)
        self._hierarchy = hierarchy
        self._mount: Hierarchy | None = None
        self._mount_read = False  # where cgroup v2 is does not change: read once
        self._conmon = ConmonNames(capacity, proc)

    def container_id(self, names: Sequence[str]) -> str | None:
        """A ``libpod-<id>(.scope)`` below ``user@<uid>.service``; its uid is remembered."""
        for i, name in enumerate(names):
            user = USER_SERVICE.match(name)
            if user is None:
                continue
            uid = int(user.group("uid"))
            container_id = leaf_match(names[i + 1 :], CGROUP) if uid <= UID_MAX else None
            if container_id is not None:
                path = "/" + "/".join(names)  # this cgroup (or one below the container's)
                self._owners.put(container_id, (uid, "" if "\ufffd" in path else path))
            return container_id
        return None

    def labels(self, container_id: str) -> CgroupLabels | None:
        owner = self._owners.get(container_id)
        if owner is None:
            return None
        uid, path = owner
        store = self._store(uid)
        name = None if store is None else store.name_of(container_id)
        if name is None and path:
            if not self._mount_read:
                self._mount, self._mount_read = self._hierarchy(), True
            if self._mount is not None:
                name = self._conmon.name_of(container_id, self._mount.directory(path), uid)
        return None if name is None else CgroupLabels(container=name)

    def _store(self, uid: int) -> UserStore | None:
        store = self._stores.get(uid)
        if store is None:
            home = self._home(uid)
            if not home.startswith("/"):
                return None
            store = UserStore(home, uid, self._capacity)
            self._stores.put(uid, store)
        return store

    def watched(self) -> list[UserStore]:
        return []

    def sizes(self) -> dict[str, tuple[int, int]]:
        return {
            "podman_rootless_containers": (len(self._owners), self._owners.capacity),
            "podman_rootless_users": (len(self._stores), self._stores.capacity),
            "podman_rootless_conmon_names": self._conmon.sizes()["conmon_names"],
        }
