"""The README and docs/ as a reader follows them: the sections other changes rely on, and
every relative link and anchor landing somewhere."""

from __future__ import annotations

import re

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
