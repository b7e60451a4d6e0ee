"""Deployment overlays of packaging/kubernetes as a user makes them, rendered by kustomize itself
(`kubectl kustomize`: kubectl 1.21 or later, whose kustomize reads components; these machines
have kubectl 1.32 with kustomize 5.5; Debian 12's own kubectl is 1.20, too old)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import yaml

from tests.packaging.shipped import REPO

K8S = REPO / "packaging" / "kubernetes"
PUSHED = "registry.example.com/procmond:0.1.0"


def overlay(folder: Path, components: list[str], image: str = PUSHED) -> Path:
    """The kustomization that the README's commands write in ``folder``: `kustomize create
    --resources <packaging/kubernetes>`, `kustomize edit set image procmond=<image>`, and
    `kustomize edit add component` for each of ``components``."""
    folder.mkdir(parents=True, exist_ok=True)
    name, _, tag = image.rpartition(":")
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [os.path.relpath(K8S, folder)],
        "images": [{"name": "procmond", "newName": name, "newTag": tag}],
    }
    if components:
        kustomization["components"] = [
            os.path.relpath(K8S / "components" / c, folder) for c in components
        ]
    (folder / "kustomization.yaml").write_text(yaml.safe_dump(kustomization, sort_keys=False))
    return folder


def build(folder: Path) -> dict[str, dict]:
    """kind → object, as `kubectl kustomize` renders the folder (one object of each kind)."""
    try:
        done = subprocess.run(
            ["kubectl", "kustomize", str(folder)], capture_output=True, text=True, timeout=60
        )
    except FileNotFoundError:
        raise AssertionError("no kubectl: these tests need kubectl 1.21 or later") from None
    assert done.returncode == 0, f"kubectl kustomize {folder}: {done.stderr}"
    objects = [d for d in yaml.safe_load_all(done.stdout) if d]
    by_kind = {d["kind"]: d for d in objects}
    assert len(by_kind) == len(objects), "two objects of one kind"
    return by_kind
