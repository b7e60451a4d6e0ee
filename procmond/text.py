"""Names and command lines made safe for one line of a terminal or a log.

Commands and arguments are chosen by whoever runs a program: escaped here, a hostile one can
neither break a line nor fake another one.
"""

from __future__ import annotations

SHELL_SAFE = frozenset("@%+=:,./_-")


def printable(raw: bytes) -> str:
    """A comm for a terminal line: UTF-8 (invalid bytes → U+FFFD), control characters and
    backslashes escaped, so a hostile name can never break or fake a line."""
    out = []
    for ch in raw.decode("utf-8", "replace"):
        if ch == "\\":
            out.append("\\\\")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return "".join(out)


def one_word(raw: bytes) -> str:
    """``printable``, with spaces escaped too (and "-" for an empty name): one field of a
    whitespace-separated table."""
    text = printable(raw).replace(" ", "\\x20")
    return text or "-"


def quoted(text: str) -> str:
    """A name or command line in double quotes, its quotes escaped: one token for a reader."""
    return '"' + text.replace('"', '\\"') + '"'


def shell_word(arg: str) -> str:
    """An argument as a shell would need it written, so that spaces inside one are seen."""
    if arg and all(c.isalnum() or c in SHELL_SAFE for c in arg):
        return arg
    return "'" + arg.replace("'", "'\\''") + "'"


def command_line(raw: bytes, limit: int) -> str | None:
    """/proc/PID/cmdline (NUL-separated arguments) as one printable line of at most ``limit``
    characters; None if it is empty."""
    args = raw.rstrip(b"\0").split(b"\0")
    if args == [b""]:
        return None
    text = " ".join(shell_word(printable(arg)) for arg in args)
    return text if len(text) <= limit else text[: limit - 3] + "..."
