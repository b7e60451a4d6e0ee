"""procmond/kernel/bpfmap.py without a kernel map: what it says when libbpf is missing."""

from __future__ import annotations

import pytest

from procmond.errors import BPFLoadError
from procmond.kernel import bpfmap


def test_missing_libbpf_is_a_load_error_naming_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bpfmap, "LIBBPF_NAMES", ("libbpf-not-here.so.9",))
    bpfmap._libbpf.cache_clear()
    try:
        with pytest.raises(BPFLoadError, match="libbpf is not installed") as caught:
            bpfmap.BPFMap(0)
        assert "install libbpf1" in caught.value.hint
    finally:
        bpfmap._libbpf.cache_clear()
