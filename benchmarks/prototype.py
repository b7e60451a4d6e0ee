"""The design procmond replaces, kept as a baseline: one event per clone() call sent through a
perf buffer to a Python callback that formats and prints a line.

The prototype attached a kprobe to the clone syscall. This benchmark's kernels may have no
kprobes (CONFIG_KPROBES off), so it attaches to the ``syscalls:sys_enter_clone`` tracepoint,
which fires at the same point (syscall entry) for the same calls and costs no more. Like the
prototype it sees clone() only: glibc's fork() is clone(), but vfork() is its own syscall and
glibc (2.34+) makes threads and posix_spawn() children with clone3(), which it never sees.

The parent's PID is read through the kernel headers' struct layout, as the prototype did; on
hosts whose headers are not the running kernel's that value is wrong (procmond reads the
offsets from BTF instead). It costs the same either way, and this is a cost baseline.

Run as root: ``python prototype.py --counts FILE > /dev/null``. It prints ``ready`` on stderr
once attached; on SIGTERM or SIGINT it writes the callbacks it ran per command, and the events
the perf buffer lost, to FILE as JSON, so the benchmark can compare them with what it created.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections import Counter
from pathlib import Path

from bcc import BPF

BPF_TEXT = r"""
#include <linux/sched.h>

struct data_t {
    u32 pid;
    u32 ppid;
    char comm[TASK_COMM_LEN];
};
BPF_PERF_OUTPUT(events);

TRACEPOINT_PROBE(syscalls, sys_enter_clone)
{
    struct data_t data = {};
    struct task_struct *task = (struct task_struct *)bpf_get_current_task();

    data.pid = bpf_get_current_pid_tgid() >> 32;
    data.ppid = task->real_parent->tgid;
    bpf_get_current_comm(&data.comm, sizeof(data.comm));
    events.perf_submit(args, &data, sizeof(data));
    return 0;
}
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", type=Path, required=True, help="JSON written at exit")
    args = parser.parse_args()

    bpf = BPF(text=BPF_TEXT)
    counts: Counter[str] = Counter()
    lost = 0
    stop = False

    def on_event(_cpu: int, data: object, _size: int) -> None:
        event = bpf["events"].event(data)
        comm = event.comm.decode("utf-8", "replace")
        print(f"Process {comm} (PID:{event.pid}, PPID: {event.ppid}) called sys_clone")
        counts[comm] += 1

    def on_lost(count: int) -> None:
        nonlocal lost
        lost += count

    def on_signal(_signum: int, _frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    # The prototype's perf buffer: BCC's default size (8 pages per CPU).
    bpf["events"].open_perf_buffer(on_event, lost_cb=on_lost)
    print("ready", file=sys.stderr, flush=True)
    while not stop:
        bpf.perf_buffer_poll(timeout=100)
    sys.stdout.flush()
    args.counts.write_text(json.dumps({"counts": counts, "lost": lost}))
    bpf.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
