"""Is the system clock synchronised? The answer the poller needs before it stamps a sample.

A Raspberry Pi has no real-time clock: it boots in 1970, or (Raspberry Pi OS's fake-hwclock) at
the time it was last shut down — plausible, yet wrong by the whole downtime. Only an NTP client
knows better, and it says so in two places:

- `file`: systemd-timesyncd creates `/run/systemd/timesync/synchronized` at its first
  synchronisation after boot (the path is `gateway.clock_sync_file`: any tool of your own may
  touch a file there instead);
- `kernel`: every NTP client that disciplines the kernel clock (timesyncd, chrony, ntpd) clears
  STA_UNSYNC in the kernel's NTP state, and the kernel sets it again once its maximum error
  estimate reaches 16 s (about 9 h without an update). Read with adjtimex(2) in read-only mode
  (modes = 0, no privilege needed) through ctypes: `time.clock_gettime` cannot tell. The
  shipped unit's seccomp filter allows exactly these calls (`KERNEL_CHECK_SYSCALLS`) and is not
  ProtectClock=yes, which blocks them, reads included (tests/gateway/clock/
  test_clock_check_sandboxed.py runs the check under an equivalent filter); where a sandbox
  blocks them anyway, that is logged once and `auto` relies on the file alone.

`gateway.clock_check` chooses: `auto` (default: either says synchronised), `file`, `kernel`, or
`none` (trust any time after the build date: for machines whose clock is kept by other means,
e.g. a VM synchronised by its hypervisor without an NTP client). No shell command is run: the
daemon is sandboxed, and a `file` check lets any external tool report instead.

Trust is latched (SyncedClock): once synchronised, the clock stays trusted until it is seen
to step (wall time moving differently from monotonic time). An offline site keeps stamping
after the kernel gives up its error estimate; a crystal drifts seconds per day, not hours.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from gateway.clock.clocks import EARLIEST_PLAUSIBLE_S, Clock, SystemClock

log = logging.getLogger(__name__)

ClockCheckMode = Literal["auto", "file", "kernel", "none"]

#: The system calls `kernel_sync` makes: glibc's adjtimex() is clock_adjtime(CLOCK_REALTIME)
#: (clock_adjtime64 on 32-bit Raspberry Pi OS). The unit's filter must allow them; the kernel
#: still refuses any change without CAP_SYS_TIME, which the service never has.
KERNEL_CHECK_SYSCALLS: Final = ("adjtimex", "clock_adjtime", "clock_adjtime64")
#: systemd-timesyncd's flag file (since systemd 239).
TIMESYNCD_FILE: Final = Path("/run/systemd/timesync/synchronized")
#: adjtimex(2) status bit: the clock is not synchronised.
STA_UNSYNC: Final = 0x0040
#: NTP_PHASE_LIMIT in µs: the kernel caps maxerror here and marks the clock unsynchronised.
MAX_ERROR_LIMIT_US: Final = 16_000_000
#: Wall time may move this much more or less than monotonic time (at least; plus 1000 ppm of
#: the elapsed time, twice the kernel's maximum slew rate) before it counts as a step.
STEP_TOLERANCE_S: Final = 1.0
STEP_TOLERANCE_RATE: Final = 0.001


class _Timex(ctypes.Structure):
    """The head of Linux's struct timex; the rest is room for what the kernel writes."""

    _fields_ = [
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("_rest", ctypes.c_char * 256),
    ]


@dataclass(frozen=True, slots=True)
class KernelSync:
    status: int
    maxerror_us: int

    @property
    def synchronized(self) -> bool:
        return not self.status & STA_UNSYNC and 0 <= self.maxerror_us < MAX_ERROR_LIMIT_US


def kernel_sync() -> KernelSync | None:
    """The kernel's NTP state (read-only adjtimex); None where it cannot be asked."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        timex = _Timex()
        if libc.adjtimex(ctypes.byref(timex)) < 0:
            _cannot_ask(ctypes.get_errno())
            return None
    except (OSError, AttributeError):
        return None
    return KernelSync(int(timex.status), int(timex.maxerror))


@functools.cache
def _cannot_ask(error: int) -> None:
    """Said once per process and errno: a sandbox that blocks the read is a site's mistake."""
    log.warning(
        "the kernel's NTP status cannot be read (%s: a sandbox that blocks clock_adjtime, "
        "e.g. ProtectClock=yes in a drop-in?): the kernel check says nothing; `clock_check: "
        "auto` relies on %s alone",
        errno.errorcode.get(error, error),
        TIMESYNCD_FILE,
    )


def kernel_synchronized() -> bool | None:
    state = kernel_sync()
    return None if state is None else state.synchronized


class SyncCheck:
    """One `gateway.clock_check` mode: `synchronized()` is cheap (a stat, a syscall)."""

    def __init__(
        self,
        mode: ClockCheckMode = "auto",
        *,
        sync_file: Path = TIMESYNCD_FILE,
        kernel: Callable[[], bool | None] = kernel_synchronized,
    ) -> None:
        self.mode = mode
        self.sync_file = sync_file
        self._kernel = kernel

    def synchronized(self) -> bool:
        if self.mode == "none":
            return True
        if self.mode in ("file", "auto") and self.sync_file.exists():
            return True
        return self.mode in ("kernel", "auto") and self._kernel() is True

    def describe(self) -> str:
        return {
            "none": "no check (clock_check: none)",
            "file": f"{self.sync_file} (clock_check: file)",
            "kernel": "the kernel's NTP status (clock_check: kernel)",
            "auto": f"{self.sync_file} or the kernel's NTP status (clock_check: auto)",
        }[self.mode]


class StepDetector:
    """Notices the wall clock stepping: wall minus monotonic time changing beyond slewing."""

    def __init__(self) -> None:
        self._last: tuple[float, float] | None = None

    def observe(self, wall: float, mono: float) -> float:
        """The step since the last observation in seconds (0.0 when none)."""
        last, self._last = self._last, (wall, mono)
        if last is None:
            return 0.0
        change = (wall - mono) - (last[0] - last[1])
        tolerance = STEP_TOLERANCE_S + STEP_TOLERANCE_RATE * max(0.0, mono - last[1])
        return change if abs(change) > tolerance else 0.0


class SyncedClock(SystemClock):
    """The daemon's clock: trusted once the sync check says so (and after the build date);
    stays trusted until the wall clock steps, then asks the check again."""

    def __init__(
        self,
        check: SyncCheck,
        *,
        wall: Callable[[], float] = time.time,
        mono: Callable[[], float] = time.monotonic,
        floor: float = EARLIEST_PLAUSIBLE_S,
    ) -> None:
        super().__init__(wall=wall, mono=mono)
        self.check = check
        self._floor = floor
        self._steps = StepDetector()
        self._latched = False

    def trusted(self) -> bool:
        wall = self._wall()
        stepped = self._steps.observe(wall, self._mono())
        if wall < self._floor:
            self._latched = False
        elif not self._latched or stepped:
            was = self._latched
            self._latched = self.check.synchronized()
            if was and not self._latched:
                log.warning(
                    "the system clock stepped by %+.1f s and %s no longer says it is "
                    "synchronised: samples are held until it does",
                    stepped,
                    self.check.describe(),
                )
        return self._latched


def clock_for(mode: ClockCheckMode, sync_file: Path = TIMESYNCD_FILE) -> Clock:
    """The clock the daemon stamps samples with, for `gateway.clock_check`."""
    if mode == "none":
        return SystemClock()
    return SyncedClock(SyncCheck(mode, sync_file=sync_file))
