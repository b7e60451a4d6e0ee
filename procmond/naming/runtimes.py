"""The container runtimes procmond names, built from the config's data roots.

Order matters only where layouts could overlap: containerd's ``/<namespace>/<id>`` needs a
look at its state, so it comes last. A new runtime is a new
module with a :class:`procmond.naming.runtime.ContainerRuntime` and one line here.
"""

from __future__ import annotations

from procmond.config import Config
from procmond.naming.containerd import Containerd
from procmond.naming.containers_storage import ContainerStore
from procmond.naming.crio import Crio
from procmond.naming.docker import Docker
from procmond.naming.podman import Podman
from procmond.naming.podman_rootless import RootlessPodman
from procmond.naming.runtime import ContainerRuntime
from procmond.naming.watcher import StateWatcher


def runtimes(config: Config, capacity: int) -> list[ContainerRuntime]:
    store = ContainerStore(config.containers_storage_root, capacity)  # Podman's and CRI-O's
    return [
        Docker(config.docker_root, capacity),
        RootlessPodman(capacity),
        Podman(config.containers_storage_root, capacity, store=store),
        Crio(config.containers_storage_root, capacity, store=store),
        Containerd(config.containerd_state, config.nerdctl_root, capacity),
    ]


def state_watcher(sources: list[ContainerRuntime], max_watches: int) -> StateWatcher:
    """One inotify watcher over every runtime's state (a store two runtimes share, once)."""
    watched = {id(w): w for source in sources for w in source.watched()}
    return StateWatcher(list(watched.values()), max_watches)
