"""Write the Kubernetes manifests that repeat a file kept elsewhere in the repository:

* configmap.yaml       config/procmond.yaml, as the ConfigMap the DaemonSet mounts;
* components/prometheusrule/prometheusrule.yaml
                       packaging/prometheus/procmond.rules.yml, as a PrometheusRule;
* kustomization.yaml   the workload's manifests, with the image tag at procmond's version
                       (the Prometheus Operator's objects are components, added by choice).

    python3 packaging/kubernetes/generate.py          # rewrite them
    python3 packaging/kubernetes/generate.py --check  # exit 1 if one is out of date

tests/packaging/test_kubernetes.py runs the check, so a changed config, rule or version
cannot ship with stale manifests.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
CONFIG = ROOT / "config" / "procmond.yaml"
RULES = ROOT / "packaging" / "prometheus" / "procmond.rules.yml"
VERSION_FILE = ROOT / "procmond" / "__init__.py"
HAND_WRITTEN = [
    "namespace.yaml",
    "serviceaccount.yaml",
    "daemonset.yaml",
    "service.yaml",
]
PROMETHEUS_RULE = HERE / "components" / "prometheusrule" / "prometheusrule.yaml"
GENERATED_NOTE = "# Made by packaging/kubernetes/generate.py from {source}: edit that instead.\n"


def _indent(text: str, spaces: int) -> str:
    pad = " " * spaces
    return "".join(pad + line if line.strip() else "\n" for line in text.splitlines(True))


def configmap() -> str:
    return (
        GENERATED_NOTE.format(source="../../config/procmond.yaml")
        + "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: procmond\n  namespace: procmond\n"
        + "  labels:\n    app.kubernetes.io/name: procmond\ndata:\n  config.yaml: |\n"
        + _indent(CONFIG.read_text(), 4)
    )


class _LiteralDumper(yaml.SafeDumper):
    """Multi-line strings (PromQL, descriptions) as literal blocks, as a person writes them."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_LiteralDumper.add_representer(str, _str)


def prometheusrule() -> str:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    resource = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "procmond",
            "namespace": "procmond",
            "labels": {"app.kubernetes.io/name": "procmond"},
        },
        "spec": {"groups": groups},
    }
    body = yaml.dump(resource, Dumper=_LiteralDumper, sort_keys=False, width=4096)
    note = (
        "# Add the labels your Prometheus' ruleSelector matches (kube-prometheus-stack:\n"
        "# release: <its release name>).\n"
    )
    source = "../../../prometheus/procmond.rules.yml"
    return GENERATED_NOTE.format(source=source) + note + body


def version() -> str:
    match = re.search(r'^__version__ = "(.+)"$', VERSION_FILE.read_text(), re.MULTILINE)
    if match is None:
        raise SystemExit(f"no __version__ in {VERSION_FILE}")
    return match.group(1)


def kustomization() -> str:
    resources = [*HAND_WRITTEN, "configmap.yaml"]
    lines = [
        "# Made by packaging/kubernetes/generate.py: the workload's manifests, and the image tag",
        "# at procmond's __version__. Deploy it from an overlay of your own, where",
        "# `kustomize edit set image procmond=<the image you pushed>` names your image and",
        "# `kustomize edit add component` adds the Prometheus Operator's objects",
        "# (packaging/kubernetes/README.md).",
        "apiVersion: kustomize.config.k8s.io/v1beta1",
        "kind: Kustomization",
        "resources:",
        *(f"  - {r}" for r in resources),
        "images:",
        "  - name: procmond",
        "    newName: procmond",
        f'    newTag: "{version()}"',
    ]
    return "\n".join(lines) + "\n"


def outputs() -> dict[Path, str]:
    return {
        HERE / "configmap.yaml": configmap(),
        PROMETHEUS_RULE: prometheusrule(),
        HERE / "kustomization.yaml": kustomization(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="write or check the generated manifests")
    parser.add_argument("--check", action="store_true", help="exit 1 if a file is out of date")
    args = parser.parse_args(argv)
    stale = []
    for path, text in outputs().items():
        current = path.read_text() if path.exists() else None
        if current == text:
            continue
        if args.check:
            stale.append(path.name)
        else:
            path.write_text(text)
            print(f"wrote {path.relative_to(ROOT)}")
    if stale:
        print(
            f"out of date: {', '.join(stale)}; run python3 packaging/kubernetes/generate.py",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
