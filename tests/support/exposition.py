"""One scrape, parsed by prometheus_client's own parser, and read by sample."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from procmond.config import CGROUP_LABELS

Labels = tuple[tuple[str, str], ...]


class Exposition:
    """Every sample of one scrape by (sample name, sorted labels)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples: dict[tuple[str, Labels], float] = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                self.samples[(s.name, tuple(sorted(s.labels.items())))] = s.value

    def get(self, name: str, **labels: str) -> float | None:
        """The sample with exactly these labels; or, where the query names none of the cgroup
        labels (unit, namespace, pod, container), the sum over them: what the series count
        in whichever cgroup the test runs. None when no series matches."""
        exact = self.samples.get((name, tuple(sorted(labels.items()))))
        if exact is not None or set(labels) & set(CGROUP_LABELS):
            return exact
        found = [
            v
            for (n, series), v in self.samples.items()
            if n == name
            and {k for k, _ in series} == set(labels) | set(CGROUP_LABELS)
            and all(dict(series)[k] == want for k, want in labels.items())
        ]
        return sum(found) if found else None

    def value(self, name: str, **labels: str) -> float:
        """The sample's value; 0 when the series does not exist (a counter never incremented)."""
        return self.get(name, **labels) or 0.0

    def series(self, name: str) -> dict[Labels, float]:
        return {labels: v for (n, labels), v in self.samples.items() if n == name}

    def total(self, name: str) -> float:
        return sum(self.series(name).values())

    def by_label(self, name: str, label: str) -> dict[str, float]:
        """The samples of ``name`` by the value of one label, summed over the others."""
        totals: dict[str, float] = {}
        for labels, v in self.series(name).items():
            key = dict(labels).get(label, "")
            totals[key] = totals.get(key, 0.0) + v
        return totals

    def by_cgroup(self, name: str, comm: str) -> dict[tuple[str, ...], float]:
        """One command's samples of ``name`` by their cgroup labels, (unit, namespace, pod,
        container), summed over the rest (parent_comm)."""
        totals: dict[tuple[str, ...], float] = {}
        for labels, v in self.series(name).items():
            d = dict(labels)
            if d.get("comm") == comm:
                key = tuple(d[label] for label in CGROUP_LABELS)
                totals[key] = totals.get(key, 0.0) + v
        return totals
