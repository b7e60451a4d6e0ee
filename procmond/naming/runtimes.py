"""The container runtimes procmond names, built from the config's data roots.

Order matters only where layouts could overlap: containerd's ``/<namespace>/<id>`` needs a
look at its state, so it comes last. A new runtime is a new module with a
:class:`procmond.naming.runtime.ContainerRuntime` and one line here.
"""

from __future__ import annotations

from procmond.config import Config
from procmond.naming.containerd import Containerd
from procmond.naming.crio import Crio
from procmond.naming.docker import Docker
from procmond.naming.podman import Podman
from procmond.naming.runtime import ContainerRuntime


def runtimes(config: Config, capacity: int) -> list[ContainerRuntime]:
    return [
        Docker(config.docker_root, capacity),
        Podman(config.containers_storage_root, capacity),
        Crio(config.containers_storage_root, capacity),
        Containerd(config.containerd_state, config.nerdctl_root, capacity),
    ]
