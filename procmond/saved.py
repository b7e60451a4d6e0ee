"""Values saved as JSON across a restart: bytes tagged, tuples as lists.

Names from the kernel are untrusted bytes, not text, so a saved label set keeps them as bytes:
``{"b": hex}``. JSON, not pickle: what is read back is data, never code. Each owner of counts
kept in user space (procmond/scrape/attribution.py, procmond/scrape/tasklimits.py,
procmond/storms/) turns its own tables into such values and back; procmond/lifecycle/state.py
only keeps the file.
"""

from __future__ import annotations

from typing import Any


def tagged(value: Any) -> Any:
    """``value`` (bytes, str, int, or tuples and lists of them) as a JSON value."""
    if isinstance(value, bytes):
        return {"b": value.hex()}
    if isinstance(value, tuple | list):
        return [tagged(x) for x in value]
    return value


def untagged(value: Any) -> Any:
    """What ``tagged`` made, back: lists become tuples (label sets are tuples)."""
    if isinstance(value, dict):
        return bytes.fromhex(value["b"])
    if isinstance(value, list):
        return tuple(untagged(x) for x in value)
    return value
