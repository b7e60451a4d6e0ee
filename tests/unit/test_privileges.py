"""The decision procmond/kernel/privileges.py makes, on a fake with the kernel's capability rules.
tests/e2e/test_privileges.py does it for real: the daemon by hand, and the CAP_BPF fallback
with real capset() calls in a child process."""

from __future__ import annotations

import errno
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from procmond.errors import PermissionDeniedError
from procmond.kernel import privileges
from procmond.kernel.privileges import CAP_SETPCAP, CAPABILITY_NAMES, CapabilitySets, drop_all

ALL = (1 << len(CAPABILITY_NAMES)) - 1
CAP_BPF = 1 << CAPABILITY_NAMES.index("CAP_BPF")
CAP_PERFMON = 1 << CAPABILITY_NAMES.index("CAP_PERFMON")


@dataclass
class FakeKernel:
    """One thread's capabilities, changed only as Linux allows (capset(2), prctl(2))."""

    sets: CapabilitySets
    bounding: int
    ambient: int = 0
    thread_count: int = 1
    no_new_privs: bool = False
    needs_cap_bpf: bool = False  # a kernel before 6.5 with unprivileged_bpf_disabled set
    reads: list[int] = field(default_factory=list)  # the effective set at each map read

    def get(self) -> CapabilitySets:
        return self.sets

    def set(self, new: CapabilitySets) -> None:
        old = self.sets
        if (
            new.permitted & ~old.permitted
            or new.effective & ~new.permitted
            or new.inheritable & ~(old.inheritable | old.permitted)
        ):
            raise PermissionError(errno.EPERM, "capset")
        self.sets = new
        self.ambient &= new.permitted & new.inheritable

    def drop_bounding(self, bit: int) -> None:
        if not self.sets.effective >> CAP_SETPCAP & 1:
            raise PermissionError(errno.EPERM, "PR_CAPBSET_DROP")
        self.bounding &= ~(1 << bit)

    def clear_ambient(self) -> None:
        self.ambient = 0

    def forbid_new_privileges(self) -> None:
        self.no_new_privs = True

    def last_cap(self) -> int:
        return len(CAPABILITY_NAMES) - 1

    def threads(self) -> int:
        return self.thread_count

    def read_map(self) -> None:
        self.reads.append(self.sets.effective)
        if self.needs_cap_bpf and not self.sets.effective & CAP_BPF:
            raise PermissionError(errno.EPERM, "Operation not permitted")


def root_by_hand(needs_cap_bpf: bool = False, threads: int = 1) -> FakeKernel:
    return FakeKernel(CapabilitySets(ALL, ALL, 0), ALL, 0, threads, False, needs_cap_bpf)


def systemd_service(needs_cap_bpf: bool = False) -> FakeKernel:
    """CapabilityBoundingSet= and AmbientCapabilities= CAP_BPF CAP_PERFMON, NoNewPrivileges."""
    both = CAP_BPF | CAP_PERFMON
    return FakeKernel(CapabilitySets(both, both, both), both, both, 1, True, needs_cap_bpf)


def test_root_by_hand_gives_up_everything_bounding_set_included() -> None:
    kernel = root_by_hand()
    result = drop_all(kernel.read_map, kernel)
    assert kernel.sets == CapabilitySets(0, 0, 0)
    assert (kernel.bounding, kernel.ambient, kernel.no_new_privs) == (0, 0, True)
    assert result.retained == () and result.bounding_emptied
    assert len(result.held) == len(CAPABILITY_NAMES)
    assert kernel.reads == [0]  # the map was read with nothing effective


def test_a_service_gives_up_its_ambient_capabilities_and_keeps_no_new_privileges() -> None:
    kernel = systemd_service()
    result = drop_all(kernel.read_map, kernel)
    assert kernel.sets == CapabilitySets(0, 0, 0) and kernel.ambient == 0
    # no CAP_SETPCAP to empty the bounding set: no_new_privs keeps an exec from regaining it
    assert kernel.bounding == CAP_BPF | CAP_PERFMON and kernel.no_new_privs
    assert result == privileges.DropResult(("CAP_PERFMON", "CAP_BPF"), (), False)


@pytest.mark.parametrize("start", [root_by_hand, systemd_service])
def test_a_kernel_that_needs_cap_bpf_to_read_maps_keeps_only_cap_bpf(
    start: Callable[..., FakeKernel],
) -> None:
    kernel = start(needs_cap_bpf=True)
    result = drop_all(kernel.read_map, kernel)
    assert result.retained == ("CAP_BPF",)
    assert kernel.sets == CapabilitySets(CAP_BPF, CAP_BPF, 0) and kernel.ambient == 0
    assert kernel.reads == [0, CAP_BPF]  # tried without, then proved it works with it
    kernel.read_map()  # and reads keep working


def test_a_map_unreadable_even_with_cap_bpf_is_a_clear_error() -> None:
    kernel = root_by_hand()

    def broken() -> None:
        raise PermissionError(errno.EPERM, "Operation not permitted")

    with pytest.raises(
        PermissionDeniedError, match="cannot read the probe's maps even with CAP_BPF"
    ):
        drop_all(broken, kernel)


def test_refuses_once_a_second_thread_runs() -> None:
    """It would change the calling thread only: the other would keep every capability."""
    kernel = root_by_hand(threads=2)
    with pytest.raises(RuntimeError, match="before any thread starts"):
        drop_all(kernel.read_map, kernel)
    assert kernel.sets == CapabilitySets(ALL, ALL, 0) and kernel.reads == []


def test_capability_names() -> None:
    assert privileges.capability_names(CAP_BPF | 1 << CAP_SETPCAP) == ["CAP_SETPCAP", "CAP_BPF"]
    assert privileges.capability_names(1 << 45) == ["capability 45"]
