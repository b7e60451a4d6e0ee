"""The creator (tests/helpers/creator.c), built once per run: processes and threads made by
one chosen path under chosen names, for the tests' exact counts and the benchmarks' loads."""

from __future__ import annotations

import subprocess
from pathlib import Path

CREATOR_SOURCE = Path(__file__).resolve().parents[1] / "helpers" / "creator.c"


def build_creator(out_dir: Path, static: bool = False) -> Path:
    """``out_dir``/creator; ``static``: linked statically, to run in a container's bare root."""
    binary = out_dir / "creator"
    linking = ["-static"] if static else []
    subprocess.run(
        ["gcc", *linking, "-O2", "-Wall", "-pthread", "-o", str(binary), str(CREATOR_SOURCE)],
        check=True,
    )
    return binary


def run_creator(
    creator: Path, mode: str, count: int, names: list[bytes], *options: str
) -> subprocess.CompletedProcess:
    """``count`` creations by ``mode`` under each of ``names``, all of them made."""
    args = [str(creator), mode, str(count), *options, *(n.hex() for n in names)]
    result = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[-1] == str(count * len(names)), result.stdout
    return result
