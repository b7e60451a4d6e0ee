"""Logging to stderr, one line per message, for the journal or a terminal."""

from __future__ import annotations

import logging
import os
import sys

from procmond.text import decoded


class _OneLineFormatter(logging.Formatter):
    """Folds any newline (tracebacks included) so each record stays one journal line, and
    decodes it as every name is (a path from the filesystem may carry undecodable bytes)."""

    def format(self, record: logging.LogRecord) -> str:
        return decoded(super().format(record)).replace("\n", " | ")


def setup_logging(level: str = "info") -> None:
    """Under systemd (JOURNAL_STREAM set) journald adds timestamps; elsewhere we do."""
    under_journal = bool(os.environ.get("JOURNAL_STREAM"))
    fmt = "%(levelname)s %(message)s" if under_journal else "%(asctime)s %(levelname)s %(message)s"
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_OneLineFormatter(fmt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
