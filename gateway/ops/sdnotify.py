"""The systemd notification protocol (sd_notify(3)), without libsystemd.

`Type=notify` units tell systemd when they are ready (`READY=1`), alive (`WATCHDOG=1`), what they
are doing (`STATUS=...`) and that they are stopping (`STOPPING=1`) by sending one datagram to the
unix socket named in `$NOTIFY_SOCKET`. Outside systemd (tests, a shell) that variable is unset and
every call is a harmless no-op, so callers never need to ask whether they run under systemd.
A failed notification is logged, never raised: telling systemd must not take the gateway down.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


def _address(value: str) -> str | None:
    """`/path` is a filesystem socket, `@name` an abstract one (a leading NUL byte on Linux)."""
    if value.startswith("/"):
        return value
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]
    return None


def notify(message: str) -> bool:
    """Send one notification, e.g. `notify("READY=1")`; True when a datagram was sent."""
    target = os.environ.get("NOTIFY_SOCKET")
    if not target:
        return False
    address = _address(target)
    if address is None:
        log.warning("NOTIFY_SOCKET=%r is not a unix socket path; not notifying systemd", target)
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            # Never block the event loop: a full receive queue (net.unix.max_dgram_qlen is
            # small) drops this one notification instead of stalling every meter.
            sock.setblocking(False)
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError as exc:
        log.warning("could not notify systemd (%s): %s", message.split("=", 1)[0], exc)
        return False
    return True


def watchdog_interval() -> float | None:
    """Seconds between `WATCHDOG=1` pings, or None when systemd expects none.

    systemd sets `$WATCHDOG_USEC` (from `WatchdogSec=`) and `$WATCHDOG_PID`; the variables are meant
    for that one process only (a child that inherited them must not ping). We ping at half the
    interval, as sd_watchdog_enabled(3) recommends, so one late ping is not fatal.
    """
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    try:
        micros = int(usec)
        if pid and int(pid) != os.getpid():
            return None
    except ValueError:
        return None
    if micros <= 0:
        return None
    return micros / 1_000_000 / 2
