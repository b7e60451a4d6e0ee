"""The daemon's side of the loader handoff, when the loader fails."""

from __future__ import annotations

import sys

import pytest

from procmond.config import Config
from procmond.errors import BPFLoadError, PermissionDeniedError
from procmond.kernel import handoff


def test_a_loader_that_dies_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "executable", "/bin/false")
    with pytest.raises(BPFLoadError, match="exited with status 1 before handing over"):
        handoff.load(Config())


def test_the_loaders_error_is_raised_as_itself() -> None:
    message = {"error": {"type": "PermissionDeniedError", "message": "no", "hint": "sudo"}}
    with pytest.raises(PermissionDeniedError) as raised:
        handoff.take_over(message, [])
    assert str(raised.value) == "no (sudo)"
    assert raised.value.exit_code == 77


@pytest.mark.parametrize("name", ["SystemExit", "ConfigError", "ProcmondError"])
def test_any_other_error_type_is_a_load_error(name: str) -> None:
    message = {"error": {"type": name, "message": "odd", "hint": ""}}
    with pytest.raises(BPFLoadError, match="odd"):
        handoff.take_over(message, [])
