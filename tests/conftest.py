"""Options for the whole suite (pytest only reads them from this top-level conftest)."""

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--soak-seconds", type=float, default=120, help="length of the soak test (default 120)"
    )
