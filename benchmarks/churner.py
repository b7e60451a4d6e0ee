"""The churn itself, as a process of its own: cgroups made and removed one after another, with
forks in them (see ``churn``).

    python -I benchmarks/churner.py TOP FIRST COUNT FORK_EVERY FORKS_EACH RATE FD NAME_HEX

It imports nothing but the standard library, and benchmarks/churn.py starts it with a fresh
interpreter rather than forking itself: a fork copies the page tables of the process that
forks, and a churner forked from a test run (pytest, its plugins, every module it imported)
spent twice as long on each of its tens of thousands of forks as one that holds only this.
"""

from __future__ import annotations

import ctypes
import os
import sys
import time

PR_SET_NAME = 15


def write_file(path: str, text: bytes) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, text)
    finally:
        os.close(fd)


def churn(
    top: str, first: int, count: int, fork_every: int, forks_each: int, rate: float, progress: int
) -> None:
    """In the churner process: ``count`` cgroups ``top/churn-<i>.service`` made and removed,
    one after another; every ``fork_every``-th one gets ``forks_each`` forks (each child
    exits at once). Writes the cgroups done so far to fd ``progress`` every 1,000, then
    "done FORKS"."""
    pid = b"%d" % os.getpid()
    procs = f"{top}/cgroup.procs"
    started = time.monotonic()
    forks = 0
    for n in range(count):
        if rate > 0:
            delay = started + n / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        cgroup = f"{top}/churn-{first + n}.service"
        os.mkdir(cgroup)
        if n % fork_every == 0:
            write_file(cgroup + "/cgroup.procs", pid)
            for _ in range(forks_each):
                child = os.fork()
                if child == 0:
                    os._exit(0)
                os.waitpid(child, 0)
                forks += 1
            write_file(procs, pid)
        os.rmdir(cgroup)
        if (n + 1) % 1000 == 0:
            os.write(progress, b"%d\n" % (n + 1))
    os.write(progress, b"done %d\n" % forks)


def main(argv: list[str]) -> None:
    """Name this process (its comm names its forks), then churn."""
    top, first, count, fork_every, forks_each, rate, progress, name = argv
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_NAME, ctypes.c_char_p(bytes.fromhex(name)), 0, 0, 0)
    churn(top, int(first), int(count), int(fork_every), int(forks_each), float(rate), int(progress))


if __name__ == "__main__":
    main(sys.argv[1:])
