"""Which runs of the benchmark replace benchmarks/RESULTS.md: the record of one whole run; and
what ``--baseline`` adds to a run, from where."""

import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.cli import HERE, REPO, parse_args
from benchmarks.configurations import (
    CONFIGURATIONS,
    Daemon,
    baseline_configuration,
    extract,
)

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


def test_without_baseline_the_configurations_are_this_trees_alone() -> None:
    args = parse_args([])
    assert args.baseline_name is None
    assert args.config_list == list(CONFIGURATIONS)


def test_a_baseline_runs_right_after_this_trees_daemon_and_is_not_the_record() -> None:
    short = _git("rev-parse", "--short", "HEAD^{commit}")
    args = parse_args(["--baseline", "HEAD"])
    assert args.baseline_name == f"procmond@{short}"
    at = args.config_list.index("procmond")
    assert args.config_list[at + 1] == args.baseline_name
    assert args.config_list[: at + 1] + args.config_list[at + 2 :] == list(CONFIGURATIONS)
    assert args.results is None  # every phase of every configuration, but a comparison
    only_sys = parse_args(["--baseline", "HEAD", "--configs", "procmond-sys"])
    assert only_sys.config_list == ["none", "procmond-sys", f"procmond@{short}"]


def test_an_unknown_baseline_fails_before_anything_runs() -> None:
    with pytest.raises(SystemExit, match="no-such-ref"):
        parse_args(["--baseline", "no-such-ref-" + "0" * 8])


def test_the_baseline_tree_is_extracted_apart_and_imports_its_own_procmond(
    tmp_path: Path,
) -> None:
    """The checkout stays as it was (git archive, no worktree), and ``python -m procmond``
    started in the extract runs the extract's code, probe sources included."""
    status = _git("status", "--porcelain")
    worktrees = _git("worktree", "list", "--porcelain")
    tree = extract("HEAD", tmp_path / "baseline")
    assert (tree / "procmond" / "bpf" / "procmond.bpf.c").is_file()
    daemon = baseline_configuration("procmond@x", tree)(tmp_path)
    assert daemon.name == "procmond@x" and daemon.source == tree
    assert daemon.config_text == Daemon(tmp_path).config_text
    imported = subprocess.run(
        [sys.executable, "-c", "import procmond.config as c; print(c.__file__)"],
        cwd=tree,
        capture_output=True,
        text=True,
        check=True,
    )
    assert imported.stdout.strip() == str(tree / "procmond" / "config.py")
    assert _git("status", "--porcelain") == status
    assert _git("worktree", "list", "--porcelain") == worktrees


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(REPO), *args], capture_output=True, text=True, check=True
    ).stdout.strip()
