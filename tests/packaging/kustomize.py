"""The kustomizations in packaging/kubernetes, read the way kustomize reads them, for the parts
the tests need (no kustomize binary is installable here): which files a kustomization or a
component brings in, and a component's JSON patches (RFC 6902) applied to its target."""

from __future__ import annotations

import copy
from pathlib import Path

import yaml


def kustomization(folder: Path) -> dict:
    return yaml.safe_load((folder / "kustomization.yaml").read_text())


def resource_files(folder: Path) -> list[Path]:
    """The files a kustomization or component lists as resources, resolved."""
    return [(folder / r).resolve() for r in kustomization(folder).get("resources", [])]


def _pointer(path: str) -> list[str]:
    assert path.startswith("/"), path
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def apply_patches(folder: Path, resource: dict) -> dict:
    """``resource`` with the component's inline JSON patches that target it applied (add and
    replace, the operations used here); a path that does not exist is an error, as in
    kustomize."""
    out = copy.deepcopy(resource)
    for entry in kustomization(folder).get("patches", []):
        target = entry["target"]
        if target.get("kind") != out["kind"] or target.get("name") != out["metadata"]["name"]:
            continue
        for op in yaml.safe_load(entry["patch"]):
            *parents, last = _pointer(op["path"])
            node = out
            for key in parents:
                node = node[int(key)] if isinstance(node, list) else node[key]
            assert op["op"] in {"add", "replace"}, f"{op['op']}: not applied by the tests"
            key: int | str = int(last) if isinstance(node, list) else last
            if op["op"] == "replace":
                assert key in node or isinstance(key, int), f"{op['path']}: nothing to replace"
            node[key] = op["value"]
    return out
