"""Command names nothing else on the host has, so a count under one is exactly ours."""

from __future__ import annotations

import secrets


def unique_name(prefix: str = "pm", tag: str = "") -> bytes:
    """A comm of at most 15 bytes: ``prefix``, ten random hex digits, ``tag`` (cut to fit)."""
    return (prefix + secrets.token_hex(5) + tag)[:15].encode()
