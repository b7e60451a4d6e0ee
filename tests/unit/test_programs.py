"""Run statistics of a BPF program, as its fdinfo gives them."""

from procmond.kernel.programs import RunStats, parse_fdinfo

# /proc/PID/fdinfo of a BPF program descriptor on Linux 6.18.
FDINFO = """pos:\t0
flags:\t02000002
mnt_id:\t16
ino:\t2069
prog_type:\t17
prog_jited:\t1
prog_tag:\tb9c0e9f2a0dbb1d5
memlock:\t4096
prog_id:\t412
run_time_ns:\t123456789
run_cnt:\t4242
recursion_misses:\t0
verified_insns:\t271
"""


def test_run_time_and_count_from_fdinfo() -> None:
    assert parse_fdinfo(FDINFO) == RunStats(123_456_789, 4242)


def test_kernels_that_keep_no_statistics_give_none() -> None:
    before_5_1 = "\n".join(
        line for line in FDINFO.splitlines() if not line.startswith(("run_time_ns", "run_cnt"))
    )
    assert parse_fdinfo(before_5_1) is None
    assert parse_fdinfo("run_time_ns:\tgarbage\nrun_cnt:\t1\n") is None
