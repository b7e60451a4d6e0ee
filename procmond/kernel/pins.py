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
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from procmond.config import Config
from procmond.errors import ProcmondError
from procmond.kernel import inventory
from procmond.kernel.bpfmap import BPFMap, libbpf
from procmond.kernel.handoff import HandedOffProbe, take_over
from procmond.kernel.header import bpf_source_dir
from procmond.kernel.inventory import FIRST, HANDOVER, SLOT
from procmond.kernel.layout import MapLayout
from procmond.kernel.maps import Histogram, MapReader

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


def handover_flags(config: Config) -> tuple[list[str], int]:
    """For the daemon's loader child: the -D flags that make the new probe share the handover
    map pinned in pin_root (made there by BCC if absent) and count only while it holds the
    next DUTY, and that DUTY; ([], 0) without pinning (the probe then always counts)."""
    root = pin_root(config, quiet=True)
    if root is None:
        return [], 0
    duty = (duty_in_force(root) or 0) % 0xFFFFFFFF + 1
    return [f'-DHANDOVER_PATH="{root / HANDOVER}"', f"-DDUTY={duty}"], duty


def duty_in_force(root: Path) -> int | None:
    """The DUTY of the probe that counts now (handover[0]); None without a handover map."""
    try:
        switch = BPFMap(libbpf("bpf_obj_get", os.fsencode(root / HANDOVER)))
    except FileNotFoundError:
        return None
    try:
        (current,) = SLOT.unpack(switch.lookup(FIRST) or FIRST)
    finally:
        switch.close()
    return int(current)


def put_on_duty(root: Path, duty: int) -> None:
    """From now on only the probe of ``duty`` counts: one write, seen by each event once.
    No handover map: the probe has one of its own (not pinned with this root)."""
    try:
        switch = BPFMap(libbpf("bpf_obj_get", os.fsencode(root / HANDOVER)))
    except FileNotFoundError:
        return
    try:
        switch.update(FIRST, SLOT.pack(duty))
    finally:
        switch.close()


def manifest(folder: Path) -> dict[str, Any] | None:
    """What the loader reported of the probe pinned in ``folder``; None if none is."""
    try:
        manifest_fd = libbpf("bpf_obj_get", os.fsencode(folder / MANIFEST))
    except FileNotFoundError:
        return None
    pinned = BPFMap(manifest_fd)
    try:
        raw = pinned.lookup(FIRST) or b""
    finally:
        pinned.close()
    (length,) = SLOT.unpack_from(raw)
    message: dict[str, Any] = json.loads(raw[4 : 4 + length])
    return message


def adopt(folder: Path) -> HandedOffProbe | None:
    """The probe pinned in ``folder``, opened; None if there is none (or not a whole one)."""
    message = manifest(folder)
    if message is None:
        return None
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
    """The probe that counts under the config's pin_root (whatever its identity: readers such
    as `procmond top` take the layouts from its manifest), or None. During an upgrade two are
    pinned: the one whose DUTY is handover's value counts, the other counts nothing."""
    if not config.pin_root:
        return None
    root = Path(config.pin_root)
    try:
        folders = sorted(
            p for p in root.iterdir() if p.is_dir() and not p.name.startswith(_PENDING)
        )
    except OSError:
        return None
    for folder in on_duty_first(root, folders):
        try:
            probe = adopt(folder)
        except (OSError, ValueError, KeyError):
            continue
        if probe is not None:
            return probe
    return None


def on_duty_first(root: Path, folders: list[Path]) -> list[Path]:
    """``folders`` with the one of the probe on duty first (the rest as they were)."""
    try:
        duty = duty_in_force(root)
    except OSError:
        return folders

    def counting(folder: Path) -> bool:
        try:
            message = manifest(folder)
        except (OSError, ValueError):
            return False
        return message is not None and int(message.get("duty", 0)) == duty

    return sorted(folders, key=lambda folder: not counting(folder))


# Per map, the rows a retired probe leaves to carry on: a key (by field name, or raw bytes when
# the two maps have the same layout) and its count or histogram.
Carried = dict[str, list[tuple[dict[str, bytes | int] | bytes, int | Histogram]]]


@dataclass(frozen=True)
class _Successor:
    """What a retired probe's counts are carried into: the new probe, as its manifest says."""

    folder: Path
    layouts: dict[str, MapLayout]
    fingerprints: dict[str, str]
    map_ids: tuple[str, ...]


def hand_over(
    root: Path,
    keep: str,
    duty: int,
    saved: Callable[[str, int], dict[str, Any] | None] = lambda _name, _probe: None,
) -> tuple[Carried, list[dict[str, Any]]]:
    """Put the probe pinned as ``keep`` on duty, then retire every other pinned probe (another
    build's or config's): unpinned and detached (closing its links waits for its programs to
    finish), then its maps read one last time. Their counts for the new probe to carry on (raw
    keys where a map's layout is the same, else by key field: see retire), one switch, so no
    event is counted by both or by neither. With them, what their daemon ``saved`` in user
    space (procmond/lifecycle/state.py), of which the parts of entries already folded under
    earlier labels are not carried twice."""
    kept = manifest(root / keep) or {}
    successor = _Successor(
        root / keep,
        {name: MapLayout.from_json(data) for name, data in kept.get("layouts", {}).items()},
        dict(kept.get("layout", {})),
        tuple(kept.get("map_ids", ())),
    )
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
        forks = old.maps.get(inventory.FORKS_TOTAL)
        state = saved(folder.name, forks.id) if forks is not None else None
        if state is not None:
            states.append(state)
        same = retire(old, state, successor, carried)
        old_layout = layout_identity(layout_fingerprints(old))
        old.close()
        log.info(
            "retired the probe pinned at %s (layout %s): its counts carry on in the new one "
            "(layout %s; maps of the same layout: %s)",
            folder,
            old_layout,
            kept.get("layout_identity", "?"),
            ", ".join(same) or "none",
        )
    return carried, states


def retire(
    old: HandedOffProbe, state: dict[str, Any] | None, successor: _Successor, carried: Carried
) -> list[str]:
    """Add to ``carried`` what the detached probe ``old`` counted, with what its daemon carried
    from earlier probes (its saved ``state``), and move its not yet taken task-limit hits of
    removed cgroups into the successor's map (its next scrape takes them as its own).

    A map whose layout fingerprint is the successor's is carried by raw key. Another layout is
    carried by key field name; a key field the successor's key has not (or not of the same kind,
    or narrower) cannot be mapped: that map is not carried, and one line says so. Returns the
    counter and histogram maps of the same layout."""
    state = state or {}
    reader = old.reader()
    prints = layout_fingerprints(old)
    saved = state.get("carried", {})
    same = [
        name
        for name in (*inventory.counter_maps(), *inventory.histogram_maps())
        if name in prints and successor.fingerprints.get(name) == prints[name]
    ]
    folded_part: dict[tuple[str, bytes], int] = {}
    for name, raw, _labels, base in state.get("attribution", {}).get("entries", []):
        folded_part[name, bytes.fromhex(raw)] = int(base)
    for name in (*inventory.counter_maps(), *inventory.histogram_maps()):
        if name not in old.maps:
            continue
        if name in inventory.counter_maps():
            counts: dict[bytes, int] = {}
            for raw, _, count in reader.counter_entries(name, ()):
                counts[raw] = count
            for raw_hex, count in saved.get("counters", {}).get(name, []):
                raw = bytes.fromhex(raw_hex)
                counts[raw] = counts.get(raw, 0) + int(count)
            rows: list[tuple[bytes, int | Histogram]] = [
                (raw, count - folded_part.get((name, raw), 0)) for raw, count in counts.items()
            ]
        else:
            histograms = dict(reader.histogram_entries(name))
            for raw_hex, slots, sum_ns in saved.get("histograms", {}).get(name, []):
                raw = bytes.fromhex(raw_hex)
                value = Histogram(tuple(int(s) for s in slots), int(sum_ns))
                known = histograms.get(raw)
                histograms[raw] = value if known is None else known + value
            rows = list(histograms.items())
        if not rows:
            continue
        rekey = _rekeying(old, name, prints.get(name), successor)
        if rekey is None:
            continue
        carried.setdefault(name, []).extend((rekey(raw), value) for raw, value in rows)
    _carry_overflow(old, reader, saved, successor, carried)
    _carry_gone_task_limit_hits(reader, successor)
    return same


def _rekeying(
    old: HandedOffProbe, name: str, fingerprint: str | None, successor: _Successor
) -> Callable[[bytes], dict[str, bytes | int] | bytes] | None:
    """How a raw key of ``old``'s map ``name`` becomes one of the successor's; None (logged) if
    it cannot."""
    new = successor.layouts.get(name)
    if new is None:
        log.warning("the counts of map %s are not carried: the new probe has no such map", name)
        return None
    if fingerprint is not None and successor.fingerprints.get(name) == fingerprint:
        return lambda raw: raw
    fields = old.layouts[name].key.fields
    for f in fields:
        try:
            target = new.key.field(f.name)
        except KeyError:
            target = None
        if target is None or target.kind != f.kind or target.size < f.size:
            log.warning(
                "the counts of map %s are not carried: its key field %r has no place in the new "
                "probe's key",
                name,
                f.name,
            )
            return None
    decoders = [(f.name, f.decoder()) for f in fields]
    return lambda raw: {n: decode(raw) for n, decode in decoders}  # type: ignore[misc]


def _carry_overflow(
    old: HandedOffProbe,
    reader: MapReader,
    saved: dict[str, Any],
    successor: _Successor,
    carried: Carried,
) -> None:
    """The old probe's overflow counts (and those its daemon carried), per map by name, under
    the successor's slots: procmond_map_overflow_events_total and every __overflow__ series go
    on from where they were."""
    counts = reader.overflow_events()
    for raw_hex, count in saved.get("counters", {}).get(inventory.OVERFLOW_EVENTS, []):
        name = old.map_ids[SLOT.unpack(bytes.fromhex(raw_hex))[0]]
        counts[name] += int(count)
    histograms = {
        name: reader.overflow_histogram(name)
        for name in inventory.histogram_maps()
        if name in old.map_ids
    }
    for raw_hex, slots, sum_ns in saved.get("histograms", {}).get(inventory.OVERFLOW_HIST, []):
        name = old.map_ids[SLOT.unpack(bytes.fromhex(raw_hex))[0]]
        value = Histogram(tuple(int(s) for s in slots), int(sum_ns))
        histograms[name] = histograms[name] + value if name in histograms else value
    for table, values in (
        (inventory.OVERFLOW_EVENTS, counts),
        (inventory.OVERFLOW_HIST, histograms),
    ):
        for name, value in values.items():
            empty = value == 0 if isinstance(value, int) else value.count == 0
            if empty:
                continue
            if name not in successor.map_ids or table not in successor.layouts:
                log.warning(
                    "%s of map %s are not carried: the new probe has no such map", table, name
                )
                continue
            index = {"": successor.map_ids.index(name)}
            carried.setdefault(table, []).append((index, value))


def _carry_gone_task_limit_hits(reader: MapReader, successor: _Successor) -> None:
    """Removed cgroups' refused forks the old probe kept and no scrape took yet: written into
    the successor's gone_task_limit_hits (by its layout), for its daemon's next scrape."""
    gone, _ = reader.take_gone_pids_cgroups()
    layout = successor.layouts.get(inventory.GONE_TASK_LIMIT_HITS)
    if not gone or layout is None:
        return
    path = successor.folder / f"map_{inventory.GONE_TASK_LIMIT_HITS}"
    table = BPFMap(libbpf("bpf_obj_get", os.fsencode(path)))
    capacity = layout.value.field("path").size
    lost = 0
    try:
        for entry in gone:
            value = layout.value.encode(
                {
                    "hits": entry.hits,
                    "path_len": capacity if entry.truncated else len(entry.path) + 1,
                    "path": entry.path,
                }
            )
            try:
                table.update(entry.cgroup_id.to_bytes(layout.key.size, sys.byteorder), value)
            except OSError:
                lost += entry.hits
    finally:
        table.close()
    if lost:
        log.warning(
            "%d refused forks of removed cgroups are not carried: the new probe's %s is full",
            lost,
            inventory.GONE_TASK_LIMIT_HITS,
        )


def layout_fingerprints(probe: HandedOffProbe) -> dict[str, str]:
    """Per map, 16 hex digits of what decides whether its entries read alike in another probe:
    its name, type, capacity, and its key's and value's fields (names, offsets, sizes, kinds).
    Two probes of different builds may have the same fingerprint for a map: its entries are
    then carried by raw key."""
    out = {}
    for name, bpf_map in probe.maps.items():
        layout = probe.layouts.get(name)
        described = [
            name,
            bpf_map.type,
            bpf_map.key_size,
            bpf_map.value_size,
            bpf_map.max_entries,
            layout.to_json() if layout is not None else None,
        ]
        digest = hashlib.sha256(json.dumps(described, sort_keys=True).encode())
        out[name] = digest.hexdigest()[:16]
    return out


def layout_identity(fingerprints: dict[str, str]) -> str:
    """One fingerprint for the layouts of every map: equal only if each map's is."""
    return hashlib.sha256(json.dumps(sorted(fingerprints.items())).encode()).hexdigest()[:16]


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
        fingerprints = layout_fingerprints(probe)
        probe.manifest["layout"] = fingerprints
        probe.manifest["layout_identity"] = layout_identity(fingerprints)
        text = json.dumps(probe.manifest).encode()
        if len(text) + 4 > _MANIFEST_BYTES:
            raise ProcmondError(f"the probe's manifest is too long ({len(text)} bytes)")
        fd = libbpf(
            "bpf_map_create", _BPF_MAP_TYPE_ARRAY, b"procmond_pins", 4, _MANIFEST_BYTES, 1, None
        )
        table = BPFMap(fd)
        try:
            table.update(FIRST, SLOT.pack(len(text)) + text)
            _pin(fd, pending / MANIFEST)
        finally:
            table.close()
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
