"""Files the config names (the config itself, register maps, `${file:...}` secrets), read so
that a wrong path cannot hurt: regular files only, never more than a limit.

A device (`/dev/zero`, a serial port), a FIFO or a socket is refused before a byte is read
(the open cannot block: O_NONBLOCK, and O_NOCTTY so a terminal never becomes ours), and a
file over the limit is refused by its size, so a typo in a path costs an error line, not the
machine's memory. Reasons never quote the content.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Final

#: The config file and each register map: far beyond any real one (a 200-meter site is ~40 KB).
MAX_CONFIG_BYTES: Final = 1024 * 1024
#: A secret (`${file:...}`, a credential file): keys, passwords and certificates fit easily.
MAX_SECRET_BYTES: Final = 64 * 1024


class FileRefused(Exception):
    """The file cannot be used; `reason` says why in a few words (never its content)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


def read_bounded(path: str | Path, limit: int) -> bytes:
    """The bytes of the regular file at `path`; FileRefused if it is not one or is too large."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise FileRefused(f"cannot read: {exc.strerror or exc}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise FileRefused(f"not a regular file ({_kind(info.st_mode)})")
        if info.st_size > limit:
            raise FileRefused(f"too large ({_size(info.st_size)}; at most {_size(limit)})")
        chunks: list[bytes] = []
        total = 0
        while total <= limit:  # the file may grow while we read: never past the limit
            chunk = os.read(fd, min(65536, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        if total > limit:
            raise FileRefused(f"too large (over {_size(limit)})")
        return b"".join(chunks)
    except OSError as exc:
        raise FileRefused(f"cannot read: {exc.strerror or exc}") from None
    finally:
        os.close(fd)


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a file"


def _size(count: int) -> str:
    if count >= 1024 * 1024:
        return f"{count / (1024 * 1024):.1f} MiB"
    if count >= 1024:
        return f"{count / 1024:.0f} KiB"
    return f"{count} bytes"
