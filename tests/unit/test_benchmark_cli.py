"""Which runs of the benchmark replace benchmarks/RESULTS.md: the record of one whole run."""

from pathlib import Path

import pytest

from benchmarks.cli import HERE, parse_args

RESULTS = HERE / "RESULTS.md"


def test_a_whole_run_writes_results_md() -> None:
    assert parse_args(["--rounds", "9"]).results == RESULTS


@pytest.mark.parametrize(
    "argv",
    [
        ["--skip", "throughput,scrape,soak"],
        ["--configs", "none,procmond"],
        ["--configs", "procmond", "--skip", "soak"],
        ["--quick"],
    ],
)
def test_a_partial_or_quick_run_leaves_results_md_alone(argv: list[str]) -> None:
    assert parse_args(argv).results is None


def test_a_partial_run_writes_its_report_where_it_is_told(tmp_path: Path) -> None:
    report = tmp_path / "cost.md"
    assert parse_args(["--skip", "soak", "--results", str(report)]).results == report
