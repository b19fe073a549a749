"""What a process costs, read from /proc like `top` and `iotop` do: CPU seconds, RSS, bytes
written to storage. Linux only (the gateway's platform)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class ProcSnapshot:
    cpu_s: float
    rss_bytes: int
    #: Bytes this process caused to be sent to the storage layer (all threads).
    write_bytes: int


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of the whole process (all threads), seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # The command name may contain spaces or parentheses: fields start after the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / _TICKS_PER_S


def rss_bytes(pid: int) -> int:
    """Resident set size now (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def write_bytes(pid: int) -> int:
    """Bytes written to storage (page cache writes included), from /proc/<pid>/io."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    raise RuntimeError(f"no write_bytes for process {pid}")


def snapshot(pid: int) -> ProcSnapshot:
    return ProcSnapshot(cpu_seconds(pid), rss_bytes(pid), write_bytes(pid))
