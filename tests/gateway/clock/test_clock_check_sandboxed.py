"""The kernel clock check works inside the shipped unit's sandbox (issue "From install to first
forwarded kWh on a real Pi", item 1).

On a Pi with chrony or ntpd (no timesyncd flag file) `clock_check: auto` relies on the kernel's
NTP status, read with clock_adjtime(2) in read-only mode. systemd is not PID 1 on the CI box,
so `systemd-run -p ...` cannot apply the unit; instead:

0. where systemd is PID 1 (a Pi, a dev box; not CI), `systemd-run --pipe` runs the check with
   the unit's own sandbox settings;
1. the unit's settings are parsed and the system calls the check makes
   (`gateway.clock.sync.KERNEL_CHECK_SYSCALLS`) are compared with what its filter allows,
   expanded by `systemd-analyze syscall-filter` (systemd's own tables);
2. the calls the check makes are observed with strace, when installed, and must all be in
   that declared list (so the comparison above is about the real calls);
3. the check runs in a child process under an equivalent seccomp filter built with libseccomp
   from that allowed set, with MemoryDenyWriteExecute's rules and no capability
   (tests/helpers/seccomp.py): it must get an answer from the kernel, and a clock write
   through the same call must still be refused (no CAP_SYS_TIME);
4. a negative control: the same harness with @clock denied (ProtectClock=yes, systemd issue
   #26413) makes the check fail, so the harness does filter.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.clock.sync import KERNEL_CHECK_SYSCALLS
from tests.helpers.seccomp import run_sandboxed
from tests.helpers.systemd_unit import allowed_syscalls, expand, service_of
from tests.paths import REPO

#: The check as the daemon runs it, then a write through the same call that must be refused:
#: the maximum error estimate set to the value just read (a no-op even if it were allowed).
CHECK = """
import ctypes, json
from gateway.clock import sync

state = sync.kernel_sync()
libc = ctypes.CDLL(None, use_errno=True)
timex = sync._Timex()
timex.modes = 0x0004  # ADJ_MAXERROR
timex.maxerror = state.maxerror_us if state else 16_000_000
write = libc.adjtimex(ctypes.byref(timex))
print(json.dumps({
    "state": None if state is None else [state.status, state.maxerror_us],
    "write": write,
    "write_errno": ctypes.get_errno(),
}))
"""


def sandboxed_check(allowed: set[str]) -> dict[str, object]:
    result = run_sandboxed(allowed, CHECK)
    assert result.returncode == 0, result.stderr
    answer: dict[str, object] = json.loads(result.stdout.strip().splitlines()[-1])
    return answer


def test_the_units_filter_allows_every_call_the_kernel_check_makes() -> None:
    service = service_of()
    allowed = allowed_syscalls(service)
    missing = [call for call in KERNEL_CHECK_SYSCALLS if call not in allowed]
    assert missing == [], f"the unit's SystemCallFilter/ProtectClock deny {missing}"
    # Nothing else of @clock: what can set the clock stays out of the allow list.
    assert allowed & expand("@clock") <= set(KERNEL_CHECK_SYSCALLS)
    assert service["CapabilityBoundingSet"] == []  # no CAP_SYS_TIME: reads only


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed")
def test_the_declared_calls_are_the_ones_the_check_makes() -> None:
    """Every clock call the check makes (strace's %clock class) is declared."""
    script = "from gateway.clock.sync import kernel_sync; kernel_sync()"
    traced = subprocess.run(
        ["strace", "-f", "-qq", "-e", "trace=%clock", sys.executable, "-c", script],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if "ptrace" in traced.stderr and "Operation not permitted" in traced.stderr:
        pytest.skip("strace cannot trace here (ptrace refused)")
    calls = {line.split("(")[0].strip() for line in traced.stderr.splitlines() if "(" in line}
    made = {call for call in calls if call in expand("@clock")}
    assert made, traced.stderr  # the check did ask the kernel
    assert made <= set(KERNEL_CHECK_SYSCALLS), f"undeclared calls: {made}"


def test_the_check_answers_under_the_units_sandbox_and_still_cannot_set_the_clock() -> None:
    answer = sandboxed_check(allowed_syscalls(service_of()))
    assert answer["state"] is not None, "the kernel's NTP status could not be read"
    status, maxerror = answer["state"]  # type: ignore[misc]
    assert isinstance(status, int) and 0 <= maxerror <= 16_000_000
    assert answer["write"] == -1 and answer["write_errno"] == 1  # EPERM: no CAP_SYS_TIME


def test_the_harness_filters_a_sandbox_that_blocks_the_clock_reads() -> None:
    """ProtectClock=yes (all of @clock denied, reads included) leaves the check blind."""
    allowed = allowed_syscalls({**service_of(), "ProtectClock": ["yes"]})
    result = run_sandboxed(allowed, CHECK)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1])["state"] is None
    # ... and the daemon says so (once), instead of quietly never trusting the clock
    assert "the kernel's NTP status cannot be read (EPERM" in result.stderr


#: [Service] keys that are not the sandbox (or need the installed system) for a transient run.
NOT_SANDBOX = {
    "Type", "NotifyAccess", "ExecStart", "WatchdogSec", "Restart", "RestartSec",
    "RestartPreventExitStatus", "TimeoutStopSec", "User", "Group", "StateDirectory",
    "StateDirectoryMode", "LoadCredential",
}  # fmt: skip


@pytest.mark.skipif(
    not Path("/run/systemd/system").is_dir() or os.geteuid() != 0,
    reason="needs systemd as PID 1 and root for systemd-run (CI has neither: see the tests above)",
)
def test_the_check_answers_under_systemd_run_with_the_units_settings() -> None:
    python = Path("/usr/bin/python3")
    if str(REPO).startswith(("/root", "/home")) or not python.exists():
        pytest.skip("ProtectHome=yes hides this checkout (or there is no /usr/bin/python3)")
    properties = [
        f"--property={key}={value}"
        for key, values in service_of().items()
        if key not in NOT_SANDBOX
        for value in values or [""]  # an empty value (CapabilityBoundingSet=) is a setting
    ]
    result = subprocess.run(
        [
            "systemd-run", "--pipe", "--wait", "--quiet", "--collect",
            "--property=DynamicUser=yes", f"--setenv=PYTHONPATH={REPO}",
            "--setenv=PYTHONDONTWRITEBYTECODE=1", *properties,
            str(python), "-c", CHECK,
        ],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    assert answer["state"] is not None
    assert answer["write"] == -1 and answer["write_errno"] == 1
