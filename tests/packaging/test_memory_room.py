"""The shipped service settings leave procmond the memory it needs to load its probe: the
figures procmond/kernel/memory_limits.py measured (and its e2e test loads under)."""

from __future__ import annotations

import re

import yaml

from procmond.kernel.memory_limits import ADDRESS_SPACE_NEEDED_MIB, MEMORY_NEEDED_MIB
from tests.packaging.shipped import REPO

UNIT = REPO / "packaging" / "systemd" / "procmond.service"
DAEMONSET = REPO / "packaging" / "kubernetes" / "daemonset.yaml"
MIB = 1 << 20


def kubernetes_bytes(quantity: str) -> float:
    """A Kubernetes quantity ("256Mi", "1G", "268435456") in bytes."""
    number, suffix = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", quantity).groups()  # type: ignore[union-attr]
    binary = {"": 1, "Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40}
    decimal = {"k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
    return float(number) * {**binary, **decimal}[suffix]


def systemd_bytes(value: str) -> float | None:
    """A systemd size ("192M", "1G", "infinity", bytes) in bytes; None for no limit."""
    if value == "infinity":
        return None
    number, suffix = re.fullmatch(r"([0-9]+)([KMGT]?)", value).groups()  # type: ignore[union-attr]
    return int(number) * {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}[suffix]


def unit_settings() -> dict[str, str]:
    """The [Service] section's settings (the last of a repeated key)."""
    settings, section = {}, ""
    for line in UNIT.read_text().splitlines():
        if line.startswith("["):
            section = line.strip("[]")
        elif section == "Service" and "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            settings[key.strip()] = value.strip()
    return settings


def test_the_daemonsets_memory_limit_leaves_room_to_load_the_probe() -> None:
    (container,) = yaml.safe_load(DAEMONSET.read_text())["spec"]["template"]["spec"]["containers"]
    limit = kubernetes_bytes(container["resources"]["limits"]["memory"])
    assert limit >= MEMORY_NEEDED_MIB * MIB, limit / MIB


def test_the_units_memory_settings_leave_room_to_load_the_probe() -> None:
    settings = unit_settings()
    assert settings["Type"] == "notify"  # what was read is the service's section
    for key in ("MemoryMax", "MemoryHigh", "MemoryLimit"):
        if key in settings:
            limit = systemd_bytes(settings[key])
            assert limit is None or limit >= MEMORY_NEEDED_MIB * MIB, (key, settings[key])
    if "LimitAS" in settings:
        limit = systemd_bytes(settings["LimitAS"])
        assert limit is None or limit >= ADDRESS_SPACE_NEEDED_MIB * MIB, settings["LimitAS"]
