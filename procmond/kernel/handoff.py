"""Load the probe in a short-lived child process; the daemon keeps only its descriptors.

BCC compiles with LLVM and clang, which bring ~100 MB of libraries and ~20 MB of heap into
any process that imports ``bcc``, none of it needed once the probe is loaded. So the daemon
starts a child running ``procmond.kernel.handoff``, which compiles, loads and attaches
(procmond/kernel/bpf_loader.py) and then passes back, over a Unix socket (SCM_RIGHTS), the
descriptors that keep it all alive: every map, every attachment (raw tracepoint links,
tracepoint perf events) and every program.
The child then exits without detaching anything. The daemon reads the maps through
procmond/kernel/bpfmap.py and detaches by closing the descriptors. The child's errors reach the
daemon as the same ProcmondError.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from procmond import signals
from procmond.config import Config
from procmond.errors import BPFLoadError, PermissionDeniedError, ProcmondError
from procmond.kernel import memory_limits
from procmond.kernel.bpfmap import BPFMap
from procmond.kernel.layout import MapLayout
from procmond.kernel.maps import MapReader

log = logging.getLogger(__name__)

LOAD_TIMEOUT_SECONDS = 120.0  # compiling takes ~0.3 s here; a wedged compiler must not hang us
_MAX_MESSAGE = 1 << 16
_MAX_FDS = 64
# The child's program: take the daemon's sys.path (argv[1]), then run main(). With -I the
# interpreter itself puts neither the working directory nor PYTHON* variables on sys.path.
_CHILD_PROGRAM = (
    "import json, sys; sys.path[:] = json.loads(sys.argv.pop(1)); "
    "from procmond.kernel.handoff import main; sys.exit(main())"
)
# What the loader raises, by name: the daemon raises the same (and exits with its status).
_LOADER_ERRORS: dict[str, type[ProcmondError]] = {
    "BPFLoadError": BPFLoadError,
    "PermissionDeniedError": PermissionDeniedError,
}


@dataclass
class HandedOffProbe:
    """The loaded probe as the daemon holds it: descriptors, and what the loader reported."""

    maps: dict[str, BPFMap]
    links: list[int]
    programs: dict[str, int]  # probe name (as in `attached`) → its program's descriptor
    attached: dict[str, bool]
    btf_offsets: bool
    bcc_version: str
    cflags: list[str]
    layouts: dict[str, MapLayout]  # of every map, as compiled (procmond/kernel/layout.py)
    map_ids: tuple[str, ...]  # the overflow arrays' slots (enum map_id)
    # What the loader reported, descriptors aside: kept with pinned objects
    # (procmond/kernel/pins.py)
    manifest: dict = dataclasses.field(default_factory=dict)
    pinnable: bool = False  # every attachment a link (procmond/kernel/perf_links.py)

    def map(self, name: str) -> BPFMap:
        return self.maps[name]

    def reader(self) -> MapReader:
        return MapReader(self.map, self.layouts, self.map_ids)

    def close(self) -> None:
        """Detach every probe (closing its last descriptor) and free the maps.

        Each tracepoint detach waits for an RCU grace period (~70 ms measured here); closed
        from parallel threads (os.close releases the GIL) they share grace periods.
        """
        if self.links:
            with ThreadPoolExecutor(len(self.links)) as pool:
                list(pool.map(os.close, self.links))
            self.links = []
        for fd in self.programs.values():
            os.close(fd)
        self.programs = {}
        for bpf_map in self.maps.values():
            bpf_map.close()
        self.maps = {}


Handover = tuple[list[str], int]  # the -D flags and the DUTY a pinned probe counts under


def load(config: Config, handover: Handover = ([], 0)) -> HandedOffProbe:
    """Run the loader child and take over what it loaded. Raises what the loader raised, or
    says why it died (procmond/kernel/memory_limits.py: for memory, most often). ``handover``:
    procmond/kernel/pins.py's handover_flags, worked out by the daemon (no pinning: none)."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    oom = memory_limits.OomWatch.start()
    with ours:
        # The child starts, and stays, with SIGHUP, SIGINT and SIGTERM blocked: a stop sent
        # to the whole service must not kill it halfway (procmond/signals.py).
        with theirs, signals.held():
            child = subprocess.Popen(
                child_command(theirs.fileno(), config, handover),
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
            )
        try:
            ours.settimeout(LOAD_TIMEOUT_SECONDS)
            data, fds, _flags, _addr = socket.recv_fds(ours, _MAX_MESSAGE, _MAX_FDS)
        except TimeoutError:
            child.kill()
            raise BPFLoadError(
                f"the probe loader did not finish in {LOAD_TIMEOUT_SECONDS:.0f} s",
                "run `procmond doctor`",
            ) from None
        finally:
            status = child.wait()
    if not data:
        raise memory_limits.loader_exit_error(status, oom)
    message = json.loads(data)
    probe = take_over(message, fds)
    probe.manifest = message
    return probe


def child_command(fd: int, config: Config, handover: Handover = ([], 0)) -> list[str]:
    """The loader child's command line. It imports procmond from the daemon's own sys.path,
    never from the working directory: ``python -m`` would put that first, and in the folder
    that holds a clone named ``procmond`` (git's default name) it found the clone's folder
    instead of the package. ``-P`` would do but needs Python 3.11; ``-I`` alone would also drop
    PYTHONPATH, which a daemon run from a source tree may rely on."""
    path = [os.path.abspath(entry) for entry in sys.path]  # "" (if any) as the daemon saw it
    return [
        sys.executable,
        "-I",
        "-c",
        _CHILD_PROGRAM,
        json.dumps(path),
        str(fd),
        json.dumps(dataclasses.asdict(config)),
        json.dumps(handover),
    ]


def take_over(message: dict, fds: list[int]) -> HandedOffProbe:
    """The probe the loader's ``message`` describes, from its descriptors in that order."""
    if "error" in message:
        for fd in fds:
            os.close(fd)
        error = message["error"]
        cls = _LOADER_ERRORS.get(error["type"], BPFLoadError)
        raise cls(error["message"], error["hint"])
    names: list[str] = message["maps"]
    maps = {name: BPFMap(fd) for name, fd in zip(names, fds, strict=False)}
    links_end = len(names) + message["links"]
    programs: list[str] = message["programs"]
    probe = HandedOffProbe(
        maps,
        fds[len(names) : links_end],
        dict(zip(programs, fds[links_end:], strict=False)),
        {k: bool(v) for k, v in message["attached"].items()},
        bool(message["btf_offsets"]),
        str(message["bcc_version"]),
        list(message["cflags"]),
        {name: MapLayout.from_json(layout) for name, layout in message["layouts"].items()},
        tuple(message["map_ids"]),
        pinnable=bool(message.get("pinnable")),
    )
    # The loader already checked the maps' layouts (bpf_loader.load): same maps, same check.
    expected = links_end + len(programs)
    if len(fds) != expected:
        probe.close()
        raise BPFLoadError(
            f"the probe loader sent {len(fds)} descriptors, expected {expected}",
            "raise the open-files limit (LimitNOFILE)",
        )
    return probe


def _child(sock: socket.socket, config: Config, handover: Handover) -> int:
    """In the loader child: load, send the descriptors, and leave without BCC's cleanup."""
    from procmond.kernel import bpf_loader  # the only import of bcc, here in the child

    try:
        probe = bpf_loader.load(config, handover=handover)
    except ProcmondError as exc:
        error = {"type": type(exc).__name__, "message": exc.message, "hint": exc.hint}
        sock.send(json.dumps({"error": error}).encode())
        return exc.exit_code
    except Exception as exc:
        if memory_limits.is_out_of_memory(exc):  # not a bug: the limit and the fix, no trace
            short = memory_limits.out_of_memory(f"{type(exc).__name__}: {exc}".rstrip(": "))
            error = {"type": "BPFLoadError", "message": short.message, "hint": short.hint}
        else:  # a bug: one log line with the traceback, and a clear error
            log.exception("the probe loader failed")
            message = f"the probe loader failed: {exc}"
            error = {"type": "BPFLoadError", "message": message, "hint": ""}
        sock.send(json.dumps({"error": error}).encode())
        return 1
    maps, links, programs = probe.descriptors()
    message = {
        "maps": list(maps),
        "links": len(links),
        "programs": list(programs),
        "attached": probe.attached,
        "btf_offsets": probe.btf_offsets,
        "bcc_version": probe.bcc_version,
        "cflags": probe.cflags,
        "layouts": {name: layout.to_json() for name, layout in probe.layouts.items()},
        "map_ids": probe.map_ids,
        "pinnable": probe.pinnable,
        "duty": probe.duty,
    }
    fds = [*maps.values(), *links, *programs.values()]
    try:
        socket.send_fds(sock, [json.dumps(message).encode()], fds)
    except OSError as exc:  # the daemon is gone: BCC's cleanup at exit detaches it all
        log.error("cannot hand the probe to the daemon: %s", exc)
        return 1
    sys.stderr.flush()
    # BCC's cleanup (at exit or on garbage collection) would detach the probes, which the
    # daemon now shares: leave without running it.
    os._exit(0)


def main() -> int:
    from procmond.logs import setup_logging

    fd, config_json = int(sys.argv[1]), json.loads(sys.argv[2])
    flags, duty = json.loads(sys.argv[3])
    config_json["labels"] = tuple(config_json["labels"])
    config = Config(**config_json)
    setup_logging(config.log_level)
    with socket.socket(fileno=fd) as sock:
        return _child(sock, config, (flags, duty))


if __name__ == "__main__":
    sys.exit(main())
