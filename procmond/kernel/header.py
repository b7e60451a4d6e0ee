"""The constants of bpf/procmond.h, read from the header itself.

C and Python share one source: Python never restates a value the probe defines. Struct
layouts come from the compiled program (see procmond/kernel/layout.py); the enums and the
``#ifndef`` defaults are read here from the shipped header, by the naming rules the header states.
The parser understands only what that header uses: ``#define NAME <integer>`` and
``enum name { MEMBER [= <value>], ... };``, a value being an integer or members read before it
joined by ``|`` (the role bits of ``enum probe_map``).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

_COMMENT = re.compile(r"/\*.*?\*/|//[^\n]*", re.S)
_DEFINE = re.compile(r"^\s*#\s*define\s+(\w+)\s+(\d+)\s*$", re.M)
_ENUM = re.compile(r"\benum\s+(\w+)\s*\{(.*?)\}\s*;", re.S)
_MEMBER = re.compile(r"^(\w+)\s*(?:=\s*(\w+(?:\s*\|\s*\w+)*))?$")


class HeaderError(ValueError):
    """The header does not hold what procmond needs of it."""


@dataclass(frozen=True)
class Header:
    defines: dict[str, int]
    enums: dict[str, dict[str, int]]

    def define(self, name: str) -> int:
        try:
            return self.defines[name]
        except KeyError:
            raise HeaderError(f"procmond.h defines no integer {name}") from None

    def enum(self, name: str) -> dict[str, int]:
        """Members of ``enum name`` → values, in declaration order."""
        try:
            return self.enums[name]
        except KeyError:
            raise HeaderError(f"procmond.h declares no enum {name}") from None

    def names_by_value(self, enum: str, prefix: str) -> dict[int, str]:
        """Value → member name without ``prefix``, in lower case (the header's naming rule).
        Members not starting with ``prefix`` (like MAP_ID_COUNT's siblings) are refused."""
        out: dict[int, str] = {}
        for member, value in self.enum(enum).items():
            if not member.startswith(prefix):
                raise HeaderError(f"enum {enum}: {member} does not start with {prefix}")
            out[value] = member[len(prefix) :].lower()
        return out


def parse_header(text: str) -> Header:
    text = _COMMENT.sub(" ", text)
    defines = {name: int(value) for name, value in _DEFINE.findall(text)}
    enums: dict[str, dict[str, int]] = {}
    known: dict[str, int] = {}  # every member read so far, of any enum
    for name, body in _ENUM.findall(text):
        members: dict[str, int] = {}
        following = 0
        for item in (part.strip() for part in body.split(",")):
            if not item:
                continue
            match = _MEMBER.match(item)
            if match is None:
                raise HeaderError(f"enum {name}: cannot read member {item!r}")
            value = _value(match[2], known, name) if match[2] is not None else following
            members[match[1]] = known[match[1]] = value
            following = value + 1
        enums[name] = members
    return Header(defines, enums)


def _value(text: str, known: dict[str, int], enum: str) -> int:
    """An enum member's value: an integer, or earlier members joined by ``|``."""
    value = 0
    for term in (part.strip() for part in text.split("|")):
        if term.isdigit():
            value |= int(term)
        elif term in known:
            value |= known[term]
        else:
            raise HeaderError(f"enum {enum}: {term} is no integer nor a member read before it")
    return value


def bpf_source_dir() -> Path:
    """Absolute path of the shipped C sources (BCC resolves relative ones against argv[0])."""
    return Path(str(resources.files("procmond.bpf"))).resolve()


@functools.cache
def read_header(source_dir: Path | None = None) -> Header:
    """The shipped header (or the one in ``source_dir``), parsed once per process."""
    directory = source_dir or bpf_source_dir()
    return parse_header((directory / "procmond.h").read_text(encoding="utf-8"))


def map_ids(header: Header) -> tuple[str, ...]:
    """Map names by their slot in overflow_events[] (enum map_id, MAP_ID_COUNT excluded)."""
    members = dict(header.enum("map_id"))
    count = members.pop("MAP_ID_COUNT", None)
    by_value = Header(header.defines, {"map_id": members}).names_by_value("map_id", "MAP_ID_")
    if count != len(by_value) or sorted(by_value) != list(range(len(by_value))):
        raise HeaderError("enum map_id must number its maps 0.. and end with MAP_ID_COUNT")
    return tuple(by_value[i] for i in range(len(by_value)))


def syscall_names(header: Header) -> dict[int, str]:
    """enum creation_syscall value → what `procmond watch` prints (sys_clone, kernel_clone...)."""
    return header.names_by_value("creation_syscall", "SYSCALL_")


def comm_len() -> int:
    """TASK_COMM_LEN as the probe has it (its COMM_LEN): a command is at most one byte
    shorter, the kernel's NUL."""
    return read_header().define("COMM_LEN")
