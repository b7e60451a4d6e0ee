"""Keep the probe loaded between two runs of the daemon: pin it in bpffs, adopt it at start.

A pinned map or link lives while its pin does, whether or not a process holds it. The daemon
pins every map, link and program of the probe it loaded under ``<pin_root>/<identity>/``,
with a manifest (what the loader reported: map names, layouts, probes attached), so that the
next daemon with the same identity opens them (BPF_OBJ_GET) instead of compiling: no count
is missed between the two, and every counter continues. ``identity`` is a digest of all the
probe is built from (its C source, its header, and the -D flags of this host and config):
another build or config gets another folder and loads its own probe. ``procmond detach``
removes the pins; the kernel then detaches and frees what no process holds any more.

bpffs names may not hold a dot; a folder is pinned under a temporary name and renamed into
place, so that a daemon killed meanwhile leaves no half folder another would adopt.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import logging
import os
import struct
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from procmond.config import Config
from procmond.errors import ProcmondError
from procmond.kernel.bpfmap import BPFMap, libbpf
from procmond.kernel.handoff import HandedOffProbe, take_over
from procmond.kernel.header import bpf_source_dir
from procmond.kernel.maps import Histogram
from procmond.scrape.metrics import COUNTERS, HISTOGRAMS

log = logging.getLogger(__name__)

BPF_FS_MAGIC = 0xCAFE4A11
MANIFEST = "manifest"
_MANIFEST_BYTES = 1 << 16
_BPF_MAP_TYPE_ARRAY = 2
_PENDING = "pinning_"  # a folder being filled: pinning_<identity>_<pid>


def identity(config: Config) -> str:
    """What the probe is built from, as 16 hex digits: equal only if the maps (and programs)
    a loader would make now are those of a pinned probe with this identity."""
    from procmond.kernel.bpf_loader import build_cflags  # no bcc import: only the flags

    source_dir = bpf_source_dir()
    cflags, _ = build_cflags(config, source_dir=source_dir)
    digest = hashlib.sha256()
    for name in ("procmond.h", "procmond.bpf.c"):
        digest.update((source_dir / name).read_bytes())
    digest.update(json.dumps(sorted(f for f in cflags if not f.startswith("-I"))).encode())
    return digest.hexdigest()[:16]


# Settings that shape the kernel maps (and so the identity, the pins and the saved state): a
# running daemon cannot change them without losing counts.
KERNEL_SETTINGS = (
    "max_entries",
    "histograms",
    "histogram_max_entries",
    "labels",
    "syscall_probes",
    "pin_root",
    "state_dir",
)


def kernel_settings_kept(running: Config, new: Config) -> tuple[Config, list[str]]:
    """``new`` with the kernel settings of the ``running`` config, and which of them it
    changed: those take effect at the next start, when a new probe is loaded."""
    kept = [k for k in KERNEL_SETTINGS if getattr(new, k) != getattr(running, k)]
    return replace(new, **{k: getattr(running, k) for k in kept}), kept


def on_bpffs(path: Path) -> bool:
    """Whether ``path`` is on a bpf filesystem (statfs's f_type, its first field)."""
    buf = ctypes.create_string_buffer(256)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.statfs(os.fsencode(path), buf) != 0:
        return False
    return ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF == BPF_FS_MAGIC


def pin_root(config: Config, quiet: bool = False) -> Path | None:
    """The folder to pin in, made if needed; None (logged unless ``quiet``) when pinning is
    off or impossible."""
    if not config.pin_root:
        return None
    warn = (lambda *_args: None) if quiet else log.warning
    root = Path(config.pin_root)
    if any(c in config.pin_root for c in '"\\\n'):  # it goes into the C source as a string
        warn(
            "the probe will not outlive the daemon: pin_root %r holds a quote, a backslash "
            "or a newline",
            config.pin_root,
        )
        return None
    try:
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        warn(
            "the probe will not outlive the daemon: cannot make %s (%s); mount bpffs "
            "(mount -t bpf bpf /sys/fs/bpf) or set pin_root",
            root,
            exc.strerror,
        )
        return None
    if not on_bpffs(root):
        warn(
            "the probe will not outlive the daemon: %s is not on a bpf filesystem "
            "(mount -t bpf bpf /sys/fs/bpf)",
            root,
        )
        return None
    return root


HANDOVER = "handover"


def handover_flags(config: Config) -> tuple[list[str], int]:
    """For the daemon's loader child: the -D flags that make the new probe share the handover
    map pinned in pin_root (made there by BCC if absent) and count only while it holds the
    next DUTY, and that DUTY; ([], 0) without pinning (the probe then always counts)."""
    root = pin_root(config, quiet=True)
    if root is None:
        return [], 0
    path = root / HANDOVER
    current = 0
    try:
        switch = BPFMap(libbpf("bpf_obj_get", os.fsencode(path)))
    except FileNotFoundError:
        pass
    else:
        try:
            (current,) = struct.unpack_from("=I", switch.lookup(bytes(4)) or bytes(4))
        finally:
            switch.close()
    duty = current % 0xFFFFFFFF + 1
    return [f'-DHANDOVER_PATH="{path}"', f"-DDUTY={duty}"], duty


def put_on_duty(root: Path, duty: int) -> None:
    """From now on only the probe of ``duty`` counts: one write, seen by each event once.
    No handover map: the probe has one of its own (not pinned with this root)."""
    try:
        switch = BPFMap(libbpf("bpf_obj_get", os.fsencode(root / HANDOVER)))
    except FileNotFoundError:
        return
    try:
        switch.update(bytes(4), struct.pack("=I", duty))
    finally:
        switch.close()


def adopt(folder: Path) -> HandedOffProbe | None:
    """The probe pinned in ``folder``, opened; None if there is none (or not a whole one)."""
    try:
        manifest_fd = libbpf("bpf_obj_get", os.fsencode(folder / MANIFEST))
    except FileNotFoundError:
        return None
    manifest = BPFMap(manifest_fd)
    try:
        raw = manifest.lookup(bytes(4)) or b""
    finally:
        manifest.close()
    (length,) = struct.unpack_from("=I", raw)
    message = json.loads(raw[4 : 4 + length])
    paths = [
        *(f"map_{name}" for name in message["maps"]),
        *(f"link_{i}" for i in range(message["links"])),
        *(f"prog_{name}" for name in message["programs"]),
    ]
    fds: list[int] = []
    try:
        for name in paths:
            fds.append(libbpf("bpf_obj_get", os.fsencode(folder / name)))
    except OSError:
        for fd in fds:
            os.close(fd)
        raise
    probe = take_over(message, fds)
    probe.manifest = message
    return probe


def running(config: Config) -> HandedOffProbe | None:
    """The probe a daemon pinned under the config's pin_root (whatever its identity: readers
    such as `procmond top` take the layouts from its manifest), or None."""
    if not config.pin_root:
        return None
    root = Path(config.pin_root)
    try:
        folders = sorted(
            p for p in root.iterdir() if p.is_dir() and not p.name.startswith(_PENDING)
        )
    except OSError:
        return None
    for folder in folders:
        try:
            probe = adopt(folder)
        except (OSError, ValueError, KeyError):
            continue
        if probe is not None:
            return probe
    return None


Carried = dict[str, list[tuple[dict[str, bytes | int], int | Histogram]]]


def hand_over(
    root: Path,
    keep: str,
    duty: int,
    saved: Callable[[str, int], dict[str, Any] | None] = lambda _name, _probe: None,
) -> tuple[Carried, list[dict[str, Any]]]:
    """Put the probe pinned as ``keep`` on duty, then retire every other pinned probe (another
    build's or config's): unpinned and detached (closing its links waits for its programs to
    finish), then its counter maps read one last time. Their counts, by key field, for the new
    probe to carry on: one switch, so no event is counted by both or by neither. With them,
    what their daemon ``saved`` in user space (procmond/lifecycle/state.py), of which the parts of
    entries already folded under earlier labels are not carried twice."""
    olds = []
    for folder in sorted(root.iterdir()):
        if not folder.is_dir() or folder.name == keep or _pending_alive(folder.name):
            continue
        try:
            old = adopt(folder)
        except (OSError, ValueError, KeyError) as exc:
            log.warning("cannot read the probe pinned at %s (%s): its counts are lost", folder, exc)
            old = None
        remove(folder)
        if old is not None:
            olds.append((folder, old))
    put_on_duty(root, duty)
    carried: Carried = {}
    states = []
    for folder, old in olds:
        for fd in [*old.links, *old.programs.values()]:
            os.close(fd)
        old.links, old.programs = [], {}
        forks = old.maps.get("forks_total")
        state = saved(folder.name, forks.id) if forks is not None else None
        folded_part: dict[tuple[str, bytes], int] = {}
        if state is not None:
            states.append(state)
            for name, raw, _labels, base in state.get("attribution", {}).get("entries", []):
                folded_part[name, bytes.fromhex(raw)] = int(base)
        reader = old.reader()
        for spec in COUNTERS:
            if spec.map_name not in old.maps:
                continue
            rows = carried.setdefault(spec.map_name, [])
            for raw, values, count in reader.counter_entries(spec.map_name, spec.key_fields):
                count -= folded_part.get((spec.map_name, raw), 0)
                rows.append((dict(zip(spec.key_fields, values, strict=True)), count))
        for histogram in HISTOGRAMS:
            if histogram.map_name not in old.maps:
                continue
            rows = carried.setdefault(histogram.map_name, [])
            decode = reader.decoder(histogram.map_name, histogram.key_fields)
            for raw, value in reader.histogram_entries(histogram.map_name):
                rows.append((dict(zip(histogram.key_fields, decode(raw), strict=True)), value))
        old.close()
        log.info("retired the probe pinned at %s: its counts carry on in the new one", folder)
    return carried, states


def pin(probe: HandedOffProbe, root: Path, name: str) -> Path:
    """Pin ``probe`` as ``root/name``; returns the folder."""
    pending = root / f"{_PENDING}{name}_{os.getpid()}"
    pending.mkdir(mode=0o700)
    try:
        for map_name, bpf_map in probe.maps.items():
            _pin(bpf_map.fd, pending / f"map_{map_name}")
        for i, fd in enumerate(probe.links):
            _pin(fd, pending / f"link_{i}")
        for prog_name, fd in probe.programs.items():
            _pin(fd, pending / f"prog_{prog_name}")
        text = json.dumps(probe.manifest).encode()
        if len(text) + 4 > _MANIFEST_BYTES:
            raise ProcmondError(f"the probe's manifest is too long ({len(text)} bytes)")
        fd = libbpf(
            "bpf_map_create", _BPF_MAP_TYPE_ARRAY, b"procmond_pins", 4, _MANIFEST_BYTES, 1, None
        )
        manifest = BPFMap(fd)
        try:
            manifest.update(bytes(4), struct.pack("=I", len(text)) + text)
            _pin(fd, pending / MANIFEST)
        finally:
            manifest.close()
        folder = root / name
        os.rename(pending, folder)
    except BaseException:
        remove(pending)
        raise
    return folder


def _pin(fd: int, path: Path) -> None:
    libbpf("bpf_obj_pin", fd, os.fsencode(path))


def remove(folder: Path) -> None:
    """Unpin everything in ``folder`` and the folder itself: what no process holds any more is
    detached and freed by the kernel."""
    try:
        entries = list(folder.iterdir())
    except FileNotFoundError:
        return
    for entry in entries:
        entry.unlink(missing_ok=True)
    folder.rmdir()


def clean(root: Path, keep: str) -> list[str]:
    """Remove every pinned probe under ``root`` but ``keep`` (another build's or config's, or
    the half folder of a daemon that died while pinning); their names."""
    removed = []
    for entry in sorted(root.iterdir()):
        if not entry.is_dir() or entry.name == keep or _pending_alive(entry.name):
            continue
        remove(entry)
        removed.append(entry.name)
    return removed


def _pending_alive(name: str) -> bool:
    """A folder another running daemon is filling right now."""
    if not name.startswith(_PENDING):
        return False
    pid = name.rsplit("_", 1)[-1]
    return pid.isdigit() and int(pid) != os.getpid() and Path(f"/proc/{pid}").exists()


def unpin(folder: Path) -> None:
    """Remove this probe's pins, and the root's handover map with the root once no other
    probe is pinned there: what a daemon stopped at its terminal leaves is nothing."""
    remove(folder)
    root = folder.parent
    with contextlib.suppress(OSError):
        if all(entry.name == HANDOVER for entry in root.iterdir()):
            (root / HANDOVER).unlink(missing_ok=True)
            root.rmdir()


def detach(root: Path) -> list[str]:
    """``procmond detach``: remove every probe pinned under ``root``, and ``root``."""
    if not root.is_dir():
        return []
    removed = clean(root, keep="")
    (root / HANDOVER).unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        root.rmdir()
    return removed
