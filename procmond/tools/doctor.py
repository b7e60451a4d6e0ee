"""``procmond doctor``: can procmond run here, and if not, what fixes it.

Every check answers in a sentence, even one that cannot look (tracefs is root's alone): a
person running it without privileges learns that, and the exit status says so (77, as
``procmond run`` and ``watch`` exit).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from procmond.config import Config
from procmond.errors import ProcmondError
from procmond.kernel import bpf_loader
from procmond.kernel import features as kernel
from procmond.kernel.btf import BTF, VMLINUX_BTF, BTFError, probe_offsets
from procmond.naming.cgroups import CgroupLayout, read_layout

SETUP_HINT = "sudo make setup (from the procmond source tree)"
AS_ROOT_HINT = "run it as root: sudo procmond doctor"


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    fatal: bool = True  # a failed fatal check means procmond cannot run
    denied: bool = False  # failed for lack of privileges: the fix is to run it as root


def check_btf() -> Check:
    try:
        offsets = probe_offsets(BTF.from_file())
    except BTFError as exc:
        return Check(
            "BTF",
            False,
            str(exc),
            "use a kernel built with CONFIG_DEBUG_INFO_BTF=y; until then procmond "
            "uses the headers' struct layout, right only if they are this kernel's",
            fatal=False,
        )
    return Check("BTF", True, f"{VMLINUX_BTF}: task_struct offsets read ({len(offsets)})")


def check_tracefs() -> Check:
    root = kernel.tracefs_root()
    if root is None:
        return Check("tracefs", False, "not mounted", "mount -t tracefs nodev /sys/kernel/tracing")
    return Check("tracefs", True, f"mounted at {root}")


def guarded(name: str, check: Callable[[], Check]) -> Check:
    """Run ``check``; one that cannot read what it needs fails in a sentence, not a crash."""
    try:
        return check()
    except OSError as exc:
        denied = exc.errno in (errno.EACCES, errno.EPERM)
        what = exc.filename or "what it needs"
        return Check(
            name,
            False,
            f"cannot read {what}: {exc.strerror}",
            AS_ROOT_HINT if denied else "",
            denied=denied,
        )


def check_tracepoints() -> list[Check]:
    checks = []
    for probe in bpf_loader.PROBES:
        category, event = probe.target.split(":")
        present = kernel.tracepoint_format(category, event) is not None
        checks.append(
            Check(
                f"tracepoint {category}:{event}",
                present,
                "present" if present else "missing",
                "" if present else "its metrics will stay at zero on this kernel",
                fatal=False,
            )
        )
    return checks


def check_headers() -> Check:
    build = kernel.kernel_build_dir()
    if build.exists():
        return Check("kernel headers", True, f"{build} -> {build.resolve()}")
    return Check(
        "kernel headers",
        False,
        f"{build} does not exist (BCC compiles against it)",
        f"apt-get install linux-headers-$(uname -r), or {SETUP_HINT}",
    )


def check_capabilities() -> Check:
    missing = kernel.missing_capabilities()
    if missing:
        return Check(
            "capabilities",
            False,
            f"missing {', '.join(missing)}",
            "run as root, or through procmond.service",
            denied=True,
        )
    return Check("capabilities", True, "CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN) present")


def check_bcc() -> Check:
    try:
        import bcc
    except ImportError as exc:
        return Check(
            "BCC",
            False,
            f"cannot import bcc: {exc}",
            "apt-get install python3-bpfcc; run with /usr/bin/python3 or a venv made "
            "with --system-site-packages",
        )
    return Check("BCC", True, f"bcc {getattr(bcc, '__version__', '?')}")


def check_load() -> Check:
    try:
        probe = bpf_loader.load(Config())
    except ProcmondError as exc:
        return Check("load probe", False, exc.message, exc.hint)
    try:
        missing = [name for name, ok in probe.attached.items() if not ok]
        detail = f"compiled, loaded and attached {len(probe.attached) - len(missing)} probes"
        return Check("load probe", True, detail + (f" (missing: {missing})" if missing else ""))
    finally:
        probe.close()


def check_cgroups(layout: CgroupLayout | None = None) -> Check:
    """Where cgroup v2 is, for the unit and pod labels; without it procmond still runs."""
    layout = layout or read_layout()
    fix = "" if layout.v2 else "boot with systemd.unified_cgroup_hierarchy=1, or mount cgroup2"
    return Check("cgroups", layout.v2 is not None, layout.describe(), fix, fatal=False)


# x86-64 registers this sysctl only when built with CONFIG_IA32_EMULATION (vdso32-setup.c).
IA32_SYSCTL = Path("/proc/sys/abi/vsyscall32")
CMDLINE = Path("/proc/cmdline")


def check_32bit_programs(sysctl: Path = IA32_SYSCTL, cmdline: Path = CMDLINE) -> Check:
    """Whether 32-bit programs can run on this 64-bit kernel: their clone, fork and vfork are
    compat syscalls, which fire no syscall tracepoint, so their failed forks and fork
    durations are not seen (catching them on raw_syscalls:sys_exit would run a program at
    every syscall of every task: getppid ran at 0.64x its rate here)."""
    name = "32-bit programs"
    if not sysctl.exists():
        return Check(name, True, "this kernel runs no 32-bit (ia32) programs", fatal=False)
    options = cmdline.read_text(errors="replace").split()
    if any(o in options for o in ("ia32_emulation=0", "ia32_emulation=n", "ia32_emulation=false")):
        return Check(name, True, "32-bit (ia32) emulation is off (ia32_emulation=0)", fatal=False)
    return Check(
        name,
        False,
        f"this kernel runs 32-bit (ia32) programs ({sysctl} exists): with syscall_probes, their "
        "failed forks and fork durations are not counted (the kernel traces no 32-bit "
        "syscall); their creations, execs, exits and task-limit hits are",
        "nothing to fix for 64-bit programs; boot with ia32_emulation=0 if none should run",
        fatal=False,
    )


def run_checks() -> list[Check]:
    tracefs = guarded("tracefs", check_tracefs)
    checks = [Check("kernel", True, kernel.kernel_release()), guarded("BTF", check_btf), tracefs]
    if tracefs.ok:  # otherwise every tracepoint would look missing
        checks += check_tracepoints()
    checks += [guarded("kernel headers", check_headers), check_capabilities(), check_bcc()]
    checks.append(guarded("cgroups", check_cgroups))
    checks.append(guarded("32-bit programs", check_32bit_programs))
    if all(c.ok for c in checks if c.fatal):
        checks.append(check_load())
    return checks


def doctor(out: TextIO, checks: Callable[[], list[Check]] = run_checks) -> int:
    """Print every check; exit 0 if procmond can run, 77 if only root can tell (or run it),
    else 1."""
    results = checks()
    for c in results:
        mark = "ok  " if c.ok else ("FAIL" if c.fatal else "warn")
        out.write(f"[{mark}] {c.name}: {c.detail}\n")
        if not c.ok and c.fix:
            out.write(f"       fix: {c.fix}\n")
    failed = [c for c in results if c.fatal and not c.ok]
    if not failed:
        out.write("procmond can run here\n")
        return 0
    if any(c.denied for c in failed):
        out.write(
            "procmond cannot run as this user: it needs root (or CAP_BPF and CAP_PERFMON); "
            "run `sudo procmond doctor` to check the rest\n"
        )
        return os.EX_NOPERM
    out.write("procmond cannot run here\n")
    return 1
