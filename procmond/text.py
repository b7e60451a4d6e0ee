"""Names from the kernel and the filesystem made text, and made safe for one line of a
terminal or a log.

Every such name (a comm, a cgroup path, a kubelet log file's name) is untrusted bytes: any byte
but NUL (and "/" in a file name). :func:`decoded` is the one way they become text, so that no
label value or log line can carry what UTF-8 cannot encode (a surrogate would fail a whole
exposition). Commands and arguments are chosen by whoever runs a program: escaped here, a
hostile one can neither break a line nor fake another one.
"""

from __future__ import annotations

SHELL_SAFE = frozenset("@%+=:,./_-")


def decoded(raw: bytes | str) -> str:
    """A name from the kernel or the filesystem as text: UTF-8, each invalid sequence replaced
    by U+FFFD. Total: any input gives a string that encodes as UTF-8.

    ``raw`` is bytes, or a str that Python's os functions made of bytes (os.scandir,
    os.fsdecode: undecodable bytes kept as lone surrogates, so that the path can be opened
    again); such a str is taken back to its bytes first, so both spellings of a name decode
    alike."""
    if isinstance(raw, str):
        if raw.isascii():
            return raw
        try:
            raw = raw.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:  # surrogates no os function makes: invalid UTF-8 bytes
            raw = raw.encode("utf-8", "surrogatepass")
    return raw.decode("utf-8", "replace")


def printable(raw: bytes) -> str:
    """A comm for a terminal line: :func:`decoded`, control characters and backslashes
    escaped, so a hostile name can never break or fake a line."""
    out = []
    for ch in decoded(raw):
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
