"""Where each field of a map's key or value sits, as the compiled probe lays it out.

The loader child reads these from BCC's types of the loaded maps (BCC builds them from the C
structs clang compiled) and hands them to the daemon with the descriptors, so the structs of
bpf/procmond.h are written down once, in C. A reordered or resized field moves here by
itself; nothing in Python can fall out of step with it.
"""

from __future__ import annotations

import ctypes
import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

CHARS = "chars"  # a NUL-padded name (char[N])
UINT = "uint"  # an unsigned integer of the field's size
UINTS = "uints"  # an array of u64 (histogram slots)


@dataclass(frozen=True)
class Field:
    name: str
    offset: int
    size: int
    kind: str

    def decoder(self) -> Callable[[bytes], bytes | int | tuple[int, ...]]:
        """A function from the whole key or value to this field's value."""
        start, end = self.offset, self.offset + self.size
        if self.kind == CHARS:
            return lambda raw: raw[start:end].split(b"\0", 1)[0]
        if self.kind == UINTS:
            array = struct.Struct(f"={self.size // 8}Q")
            return lambda raw: array.unpack_from(raw, start)
        order = sys.byteorder
        return lambda raw: int.from_bytes(raw[start:end], order)


@dataclass(frozen=True)
class Layout:
    """A key or value: its size and its named fields ("" names a scalar's only field)."""

    size: int
    fields: tuple[Field, ...]

    def field(self, name: str) -> Field:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(f"no field {name!r} in {[f.name for f in self.fields]}")

    def encode(self, values: dict[str, bytes | int] | bytes) -> bytes:
        """A key of this layout holding ``values`` by field name (bytes for names, ints for
        integers), zero elsewhere, as the probe's zero-initialised keys are. Bytes are a key
        already laid out so (from a map of the same layout), taken as they are."""
        if isinstance(values, bytes):
            return values
        raw = bytearray(self.size)
        for f in self.fields:
            value = values.get(f.name)
            if value is None:
                continue
            if isinstance(value, bytes):
                raw[f.offset : f.offset + f.size] = value[: f.size].ljust(f.size, b"\0")
            else:
                raw[f.offset : f.offset + f.size] = value.to_bytes(f.size, sys.byteorder)
        return bytes(raw)

    def to_json(self) -> dict[str, Any]:
        return {
            "size": self.size,
            "fields": [[f.name, f.offset, f.size, f.kind] for f in self.fields],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Layout:
        return cls(
            int(data["size"]), tuple(Field(n, int(o), int(s), k) for n, o, s, k in data["fields"])
        )


@dataclass(frozen=True)
class MapLayout:
    key: Layout
    value: Layout

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key.to_json(), "value": self.value.to_json()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MapLayout:
        return cls(Layout.from_json(data["key"]), Layout.from_json(data["value"]))


def _kind(ctype: Any) -> str:
    if issubclass(ctype, ctypes.Array):
        if ctype._type_ is ctypes.c_char:
            return CHARS
        if ctypes.sizeof(ctype._type_) == 8:
            return UINTS
    elif issubclass(ctype, ctypes._SimpleCData) and ctype._type_ in "BHILQbhilq":
        return UINT
    raise TypeError(f"procmond decodes no field of type {ctype.__name__}")


def describe(ctype: Any) -> Layout:
    """The layout of a ctypes type BCC made for a map's key or value."""
    if issubclass(ctype, ctypes.Structure):
        fields = tuple(
            Field(name, getattr(ctype, name).offset, getattr(ctype, name).size, _kind(t))
            for name, t in ctype._fields_
            if not name.startswith("_")  # padding
        )
        return Layout(ctypes.sizeof(ctype), fields)
    return Layout(ctypes.sizeof(ctype), (Field("", 0, ctypes.sizeof(ctype), _kind(ctype)),))
