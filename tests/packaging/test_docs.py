"""The README and docs/ as a reader follows them: the sections other changes rely on, and
every relative link and anchor landing somewhere."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

from procmond.config import load_config
from procmond.scrape.metrics import COUNTERS, HISTOGRAMS, series_budget
from tests.packaging.shipped import REPO, github_anchor

README = REPO / "README.md"
SECTIONS = [
    "Quick start",
    "Metrics",
    "Configuration",
    "Commands",
    "Running it as a service",
    "Security",
    "Prometheus and Grafana",
    "Kubernetes",
    "Development",
]
DOCS = [README, *sorted((REPO / "docs").glob("*.md")), REPO / "packaging/prometheus/README.md"]


def test_readme_sections_and_the_two_commands() -> None:
    text = README.read_text()
    assert re.findall(r"^## (.+)$", text, re.M) == SECTIONS
    assert "sudo ./scripts/dev.sh run " in text and "sudo ./scripts/dev.sh test " in text


def test_internals_live_in_docs() -> None:
    for name in ("architecture.md", "hardening.md", "development.md"):
        assert (REPO / "docs" / name).is_file(), name
        assert f"(docs/{name})" in README.read_text(), name


def test_every_relative_link_and_anchor_resolves() -> None:
    broken = []
    for doc in DOCS:
        for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text()):
            if re.match(r"[a-z]+:", target):
                continue  # an absolute URL
            path, _, anchor = target.partition("#")
            file = (doc.parent / path).resolve() if path else doc
            if not file.exists():
                broken.append(f"{doc.relative_to(REPO)}: {target}: no such file")
            elif anchor and file.suffix == ".md":
                headings = re.findall(r"^#+ (.+)$", file.read_text(), re.M)
                if anchor not in {github_anchor(h) for h in headings}:
                    broken.append(f"{doc.relative_to(REPO)}: {target}: no such heading")
    assert not broken, "\n".join(broken)


# --- Texts that state what the code does, checked against the code ---------------------------

CONFIG = REPO / "config" / "procmond.yaml"


def evaluate(formula: str, names: dict[str, int]) -> int:
    """A formula of whole numbers, names, +, * and parentheses, as the config's comment
    writes it (nothing else is evaluated)."""

    def value(node: ast.AST) -> int:
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return node.value
        if isinstance(node, ast.Name):
            return names[node.id]
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add | ast.Mult):
            left, right = value(node.left), value(node.right)
            return left + right if isinstance(node.op, ast.Add) else left * right
        raise AssertionError(f"not a formula of the config's comment: {ast.dump(node)}")

    return value(ast.parse(formula, mode="eval").body)


def check_config_figure(path: Path) -> int:
    result = subprocess.run(
        [sys.executable, "-m", "procmond", "check-config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    return int(re.search(r"at most (\d+) series", result.stdout)[1])  # type: ignore[index]


def test_the_configs_worst_case_formulas_give_check_configs_figures(tmp_path: Path) -> None:
    """The comment's two formulas (the file's settings; syscall_probes: true), evaluated with
    the file's values, give what `procmond check-config` prints for each."""
    text = CONFIG.read_text()
    comment = text[text.index("# each). The worst-case number of series") :]
    formulas = [f.split("  ")[0] for f in re.findall(r"^#   (.+)$", comment, re.M)[:2]]
    config, _ = load_config(CONFIG)
    names = {n: getattr(config, n) for n in ("max_entries", "histogram_max_entries")}
    assert "syscall_probes: false" in text
    probes = tmp_path / "probes.yaml"
    probes.write_text(text.replace("syscall_probes: false", "syscall_probes: true"))
    for formula, path in zip(formulas, (CONFIG, probes), strict=False):
        figure = check_config_figure(path)
        assert (formula, evaluate(formula, names)) == (formula, figure)
        assert figure == series_budget(load_config(path)[0])
    assert len(formulas) == 2, formulas


def alert(name: str) -> dict:
    groups = yaml.safe_load((REPO / "packaging/prometheus/procmond.rules.yml").read_text())
    [rule] = [r for g in groups["groups"] for r in g["rules"] if r.get("alert") == name]
    return rule


def test_map_nearly_full_says_which_maps_free_their_entries() -> None:
    """Counter maps free the entries of removed cgroups (procmond/scrape/attribution.py reclaims by
    the cgroup id their keys carry, when a cgroup label is kept); histogram maps are keyed by
    command alone and never free theirs. The alert and its runbook name those maps."""
    assert all("cgroup_id" in c.key_fields for c in COUNTERS)
    never_freed = {h.map_name for h in HISTOGRAMS if "cgroup_id" not in h.key_fields}
    assert never_freed == {h.map_name for h in HISTOGRAMS}
    runbook = (REPO / "packaging/prometheus/README.md").read_text()
    runbook = runbook[runbook.index("### ProcmondMapNearlyFull") :].split("\n### ")[0]
    for text in (alert("ProcmondMapNearlyFull")["annotations"]["description"], runbook):
        text = " ".join(text.split())
        assert "never freed" not in text and "frees the entries of removed cgroups" in text
        listed = re.search(r"histogram maps \(([^)]*)\) never free", text)
        assert listed, text
        assert set(re.findall(r"\w+", listed[1])) == never_freed, text
    dashboard = (REPO / "packaging/grafana/procmond.json").read_text()
    assert "never freed" not in dashboard and "free the entries of removed cgroups" in dashboard


def man_page_text() -> str:
    result = subprocess.run(
        ["man", "-l", str(REPO / "packaging/man/procmond.8")],
        capture_output=True,
        text=True,
        env={**os.environ, "MANWIDTH": "200"},
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def unpaired_brackets(text: str) -> str | None:
    depth = 0
    for ch in text:
        depth += {"[": 1, "]": -1}.get(ch, 0)
        if depth < 0:
            return text
    return text if depth else None


def test_the_manual_pages_synopsis_and_options_pair_their_brackets() -> None:
    """Each command's synopsis and each option's heading, as man renders them."""
    text = man_page_text()
    synopsis = text[text.index("SYNOPSIS") : text.index("DESCRIPTION")]
    commands = re.split(r"\n(?= +procmond )", synopsis)[1:]
    options = text[text.index("\nOPTIONS") : text.index("\nCONFIGURATION")]
    headings = re.findall(r"^ {7}(-.*)$", options, re.M)
    assert len(commands) >= 6 and any("--pod" in h for h in headings), text
    bad = [t for t in [*commands, *headings] if unpaired_brackets(t)]
    assert not bad, bad


def test_dev_sh_run_says_what_it_runs_without_an_empty_argument_list() -> None:
    """The line `dev.sh run` prints before it starts the daemon, with and without arguments
    (the script's own `say` line, run by bash)."""
    script = (REPO / "scripts/dev.sh").read_text()
    [say] = re.findall(r'^\s*(say "starting procmond run.*)$', script, re.M)
    for args, expected in (
        ([], "dev.sh: starting procmond run; Ctrl-C stops it"),
        (["--listen", ":1"], "dev.sh: starting procmond run --listen :1; Ctrl-C stops it"),
    ):
        shown = subprocess.run(
            ["bash", "-c", 'say() { echo "dev.sh: $*"; }; ' + say, "dev.sh", *args],
            capture_output=True,
            text=True,
            check=True,
        )
        assert shown.stdout == expected + "\n"


def test_the_architecture_names_every_module_in_a_line_of_its_own() -> None:
    """Each module under procmond/ as it is at test time starts a line of the list in
    docs/architecture.md (a subpackage's ``__init__.py`` may be listed by its folder, ``x/``),
    so that the next module cannot be forgotten."""
    lines = (REPO / "docs" / "architecture.md").read_text().splitlines()
    listed = {m.group(1) for line in lines if (m := re.match(r" *- `([^`]+)`:", line))}
    package = REPO / "procmond"
    modules = sorted(p.relative_to(package).as_posix() for p in package.rglob("*.py"))
    missing = [
        module
        for module in modules
        if module not in listed and module.removesuffix("__init__.py") not in listed - {""}
    ]
    assert missing == [], f"not in docs/architecture.md's list of modules: {missing}"
