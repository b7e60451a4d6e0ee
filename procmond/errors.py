"""Errors procmond reports to a person: each carries the fix, and the exit status it maps to."""

from __future__ import annotations

import os


class ProcmondError(Exception):
    """An error with a one-line message, a hint saying how to fix it, and an exit status."""

    exit_code = 1

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class ConfigError(ProcmondError):
    """The configuration is invalid; ``problems`` lists every problem found, one line each."""

    exit_code = os.EX_CONFIG  # 78, as systemd and sysexits.h expect

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class BPFLoadError(ProcmondError):
    """The probe could not be compiled, loaded or attached."""

    exit_code = os.EX_SOFTWARE


class PermissionDeniedError(ProcmondError):
    """procmond lacks the privileges to load BPF programs."""

    exit_code = os.EX_NOPERM


class ListenError(ProcmondError):
    """The HTTP listener could not be opened."""

    exit_code = os.EX_UNAVAILABLE
