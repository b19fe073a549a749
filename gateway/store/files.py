"""The store's files on disk: the database, its -wal and its -shm, and who may take them away.

An operator clearing "junk" files (or a cleaner cron job) can delete the -wal and -shm of a
running store. SQLite keeps writing to the deleted files through its open descriptors, so
nothing looks wrong, but everything not yet checkpointed lives only in a file with no name:
at the next kill -9 or power cut it is gone (seen: a database with no tables at all).

Invariant: the store notices within one health pass (`Store.check_files`, the daemon's
`STORE_CHECK_EVERY_S`): a -wal/-shm that vanished or was replaced (another inode) means
checkpoint through the connection that still holds them, then reopen (new files); if the
checkpoint cannot complete, StoreUnavailable (the daemon stops loudly, exit 3). The database
file itself deleted: the open database is copied back to its path (`rescue`) and reopened;
replaced by another file: copied beside it, never over it, and StoreUnavailable.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import time
from pathlib import Path

SUFFIXES = ("", "-wal", "-shm")

#: suffix -> (device, inode) of the file, None when it does not exist.
Identity = dict[str, tuple[int, int] | None]


class StoreUnavailable(Exception):
    """The store cannot be opened or written, and is not corrupt: stop, discard nothing."""


def identity(path: Path) -> Identity:
    found: Identity = {}
    for suffix in SUFFIXES:
        try:
            st = os.stat(f"{path}{suffix}")
        except FileNotFoundError:
            found[suffix] = None
        else:
            found[suffix] = (st.st_dev, st.st_ino)
    return found


def changed(before: Identity, now: Identity) -> list[str]:
    """The files that existed before and are now gone or another file."""
    return [
        f"{suffix or 'database'}" for suffix, was in before.items() if was and now[suffix] != was
    ]


def rescue(db: sqlite3.Connection, path: Path) -> Path:
    """The database file itself was deleted or replaced under the open connection: copy the
    whole open database (SQLite's backup API) to `path` if nothing is there now, else beside
    it as `.rescued-<UTC time>` (never over another file). Returns where it went."""
    target = path
    if path.exists():
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        target = path.with_name(f"{path.name}.rescued-{stamp}")
    copy = sqlite3.connect(target)
    try:
        db.backup(copy)
    finally:
        copy.close()
    return target


class Reserve:
    """Room set aside in a file beside the store (`-reserve`), released when the disk is really
    full so that cursors, retention and checkpoints can still write; taken again once twice
    its size is free."""

    def __init__(self, path: Path, size: int) -> None:
        self.path = path
        self.size = size
        self.take()

    def take(self) -> bool:
        """Set the room aside (if not yet done); False when there is no room for it."""
        if self.path.exists():
            return True
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                os.posix_fallocate(fd, 0, self.size)
            finally:
                os.close(fd)
        except OSError:
            self.path.unlink(missing_ok=True)
            return False
        return True

    def release(self) -> None:
        self.path.unlink(missing_ok=True)

    def room_back(self) -> bool:
        """After a full disk: True (and the reserve taken again) once there is room."""
        return shutil.disk_usage(self.path.parent).free >= 2 * self.size and self.take()
