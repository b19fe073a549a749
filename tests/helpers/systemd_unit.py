"""The shipped systemd unit as data, and the system calls its sandbox lets through.

`parse_unit` reads systemd's syntax (keys may repeat, an empty value resets, `\\` continues a
line). `allowed_syscalls` is what the unit's seccomp filter allows, built the way
systemd.exec(5) describes it and from systemd's own group tables (`systemd-analyze
syscall-filter`, systemd 252 on Debian bookworm):

- the first `SystemCallFilter=` without `~` starts an allow list; later lines without `~` add
  to it, lines with `~` remove from it;
- "execve(), exit(), exit_group(), getrlimit(), rt_sigreturn(), sigreturn() and the system
  calls for querying time and sleeping (@default) are implicitly allow-listed";
- `ProtectClock=yes` "installs a system call filter to block calls that can set the clock"
  (@clock) — "blocked altogether", reads included (systemd issue #26413).
"""

from __future__ import annotations

import functools
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.paths import REPO

UNIT = REPO / "systemd" / "meter-gateway.service"

Unit = dict[str, dict[str, list[str]]]

#: systemd.exec(5), SystemCallFilter=: always allowed with an allow list.
IMPLICIT = {"execve", "exit", "exit_group", "getrlimit", "rt_sigreturn", "sigreturn", "@default"}


def parse_unit(text: str) -> Unit:
    """systemd's syntax: keys may repeat (DeviceAllow=), an empty value resets, `\\` continues."""
    unit: Unit = {}
    section: dict[str, list[str]] | None = None
    pending = ""
    for raw in text.splitlines():
        line = pending + raw.strip()
        pending = ""
        if not line or line[0] in "#;":
            continue
        if line.endswith("\\"):
            pending = line[:-1].rstrip() + " "
            continue
        if line.startswith("[") and line.endswith("]"):
            section = unit.setdefault(line[1:-1], {})
            continue
        assert section is not None, f"key outside a section: {line!r}"
        key, sep, value = line.partition("=")
        assert sep, f"not a key=value line: {line!r}"
        values = section.setdefault(key.strip(), [])
        if value.strip():
            values.append(value.strip())
        else:
            values.clear()
    return unit


def service_of(path: Path = UNIT) -> dict[str, list[str]]:
    return parse_unit(path.read_text())["Service"]


def systemd_analyze() -> str:
    binary = shutil.which("systemd-analyze")
    if binary is None:
        pytest.skip("systemd-analyze is not installed (./dev.sh test installs systemd)")
    return binary


@functools.cache
def expand(name: str) -> frozenset[str]:
    """A system call group (`@clock`) as systemd itself lists it, nested groups expanded."""
    if not name.startswith("@"):
        return frozenset({name})
    listing = subprocess.run(
        [systemd_analyze(), "syscall-filter", "--no-pager", name],
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    calls: set[str] = set()
    for line in listing.splitlines()[1:]:
        entry = line.strip()
        if entry and not entry.startswith("#"):
            calls |= expand(entry)
    return frozenset(calls)


def allowed_syscalls(service: dict[str, list[str]]) -> set[str]:
    """The system calls the unit's seccomp filters let through (an allow list is assumed)."""
    entries = service.get("SystemCallFilter", [])
    assert entries and not entries[0].startswith("~"), "the unit filters by an allow list"
    allowed: set[str] = set()
    for entry in entries:
        deny = entry.startswith("~")
        for name in entry.removeprefix("~").split():
            calls = expand(name.split(":")[0])
            allowed = allowed - calls if deny else allowed | calls
    for name in IMPLICIT:
        allowed |= expand(name)
    if service.get("ProtectClock", ["no"])[-1] in ("yes", "true", "1", "on"):
        allowed -= expand("@clock")
    return allowed
