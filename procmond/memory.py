"""Give back the memory BCC's compiler needed only to load the probe.

After BPF() has compiled and loaded, ~85 MB of the process's RSS is clean, file-backed
LLVM/clang/libbcc pages and ~25 MB is freed-but-cached malloc memory. Neither is needed again
until the next compile, so the daemon returns both to the kernel once it is serving; the pages
fault back in from the library files if BCC ever compiles again.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import re
from pathlib import Path

log = logging.getLogger(__name__)

MADV_PAGEOUT = 21  # Linux 5.4+
_LOADER_LIBRARIES = re.compile(r"lib(LLVM|clang|clang-cpp|bcc)[-.]")
_COMPILER_LIBRARIES = re.compile(r"lib(LLVM|clang|clang-cpp)[-.]")  # unused after loading


def loader_mappings(
    maps_text: str, libraries: re.Pattern[str] = _LOADER_LIBRARIES
) -> list[tuple[int, int]]:
    """(start, end) of every mapping of the compiler libraries in /proc/self/maps text."""
    spans = []
    for line in maps_text.splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) == 6 and libraries.search(Path(parts[5]).name):
            start, end = (int(x, 16) for x in parts[0].split("-"))
            spans.append((start, end))
    return spans


def release_loader_memory() -> None:
    """Once serving: trim malloc and page out the compiler and BCC library pages."""
    _release(_LOADER_LIBRARIES, trim=True)


def page_out_compiler() -> None:
    """Again, from time to time: MADV_PAGEOUT skips pages that another process maps at that
    moment (another BCC program, say), so a daemon started beside one kept ~120 MB of them.
    LLVM and clang are not used again after loading; libbcc is (map reads), so it is left."""
    _release(_COMPILER_LIBRARIES, trim=False)


@functools.cache
def _libc() -> ctypes.CDLL:
    """libc, loaded once: the page-out runs at every heartbeat."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return libc


def _release(libraries: re.Pattern[str], trim: bool) -> None:
    """Best effort: failures are logged at debug level and change nothing else."""
    try:
        libc = _libc()
        if trim:
            libc.malloc_trim(0)
        for start, end in loader_mappings(Path("/proc/self/maps").read_text(), libraries):
            if libc.madvise(start, end - start, MADV_PAGEOUT) != 0:
                log.debug("madvise(MADV_PAGEOUT) failed: errno %d", ctypes.get_errno())
                return
    except OSError as exc:
        log.debug("cannot release loader memory: %s", exc)
