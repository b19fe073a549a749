"""Run Python code in a child process under a seccomp filter equivalent to a unit's sandbox.

Where systemd is PID 1, `systemd-run --pipe -p ...` would apply a unit's settings; a CI box
(or a container) without it gets the same kernel mechanism here, built with libseccomp — the
library systemd builds its filters with (Debian's libseccomp2, a dependency of systemd) —
through ctypes:

1. no capability at all (`CapabilityBoundingSet=` is empty, `AmbientCapabilities=` too): the
   child empties its bounding set and its effective, permitted and inheritable sets with
   prctl(2) and capset(2). It keeps its uid, so a CI box running as root can still read an
   interpreter under /root; without capabilities uid 0 is no more privileged than the
   service user where the clock is concerned (setting it needs CAP_SYS_TIME);
2. `NoNewPrivileges=yes` (libseccomp sets it when loading, as systemd does);
3. `SystemCallFilter=` with `SystemCallErrorNumber=EPERM`: every system call outside the allow
   list fails with EPERM (names that do not exist on this architecture are skipped);
4. `MemoryDenyWriteExecute=yes`, as systemd builds it: mmap with PROT_WRITE|PROT_EXEC,
   mprotect/pkey_mprotect adding PROT_EXEC, and shmat with SHM_EXEC fail with EPERM.

The child then runs `code` and reports on stdout; `run_sandboxed` returns the finished process.
A box without libseccomp skips the test that asks (exit code 77).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterable

import pytest

from tests.paths import REPO

NO_LIBSECCOMP = 77

_CHILD = r"""
import ctypes, json, os, sys

allowed = json.loads(os.environ.pop("MG_SECCOMP_ALLOWED"))
code = os.environ.pop("MG_SECCOMP_CODE")
try:
    lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
except OSError:
    sys.exit(77)

libc = ctypes.CDLL(None, use_errno=True)
PR_CAPBSET_DROP, CAP_LAST = 24, 63
for cap in range(CAP_LAST + 1):  # CapabilityBoundingSet= (empty): EINVAL past the last one
    libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)


class CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


header = CapHeader(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3
data = (CapData * 2)()
if libc.capset(ctypes.byref(header), data) != 0:
    raise SystemExit(f"capset: {os.strerror(ctypes.get_errno())}")
with open("/proc/self/status") as status:
    assert "CapEff:\t0000000000000000" in status.read(), "capabilities left"

ALLOW = 0x7FFF0000
EPERM = 0x00050000 | 1
MASKED_EQ = 7


class Cmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int),
                ("datum_a", ctypes.c_uint64), ("datum_b", ctypes.c_uint64)]


lib.seccomp_init.restype = ctypes.c_void_p
lib.seccomp_init.argtypes = [ctypes.c_uint32]
lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
lib.seccomp_rule_add_array.argtypes = [
    ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint, ctypes.POINTER(Cmp)]
lib.seccomp_load.argtypes = [ctypes.c_void_p]
lib.seccomp_release.argtypes = [ctypes.c_void_p]


def check(result, what):
    if result < 0:
        raise SystemExit(f"libseccomp: {what} failed: {os.strerror(-result)}")


def number(name):
    return lib.seccomp_syscall_resolve_name(name.encode())


def load(ctx):
    check(lib.seccomp_load(ctx), "load")
    lib.seccomp_release(ctx)


# SystemCallFilter= (allow list), SystemCallErrorNumber=EPERM
ctx = lib.seccomp_init(EPERM)
for name in allowed:
    nr = number(name)
    if nr >= 0:  # pseudo numbers: calls this architecture does not have
        check(lib.seccomp_rule_add_array(ctx, ALLOW, nr, 0, None), name)

# MemoryDenyWriteExecute=yes (systemd's seccomp_memory_deny_write_execute)
PROT_WRITE, PROT_EXEC, SHM_EXEC = 0x2, 0x4, 0o100000
mdwe = lib.seccomp_init(ALLOW)
for name, mask, value in (
    ("mmap", PROT_WRITE | PROT_EXEC, PROT_WRITE | PROT_EXEC),
    ("mmap2", PROT_WRITE | PROT_EXEC, PROT_WRITE | PROT_EXEC),
    ("mprotect", PROT_EXEC, PROT_EXEC),
    ("pkey_mprotect", PROT_EXEC, PROT_EXEC),
    ("shmat", SHM_EXEC, SHM_EXEC),
):
    nr = number(name)
    if nr >= 0:
        rule = Cmp(2, MASKED_EQ, mask, value)
        check(lib.seccomp_rule_add_array(mdwe, EPERM, nr, 1, ctypes.byref(rule)), name)
load(mdwe)
load(ctx)  # last: seccomp() itself is not in the allow list
exec(compile(code, "<sandboxed>", "exec"))
"""


def run_sandboxed(allowed: Iterable[str], code: str) -> subprocess.CompletedProcess[str]:
    """Run `code` as described above; the child's stdout, stderr and exit code."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": str(REPO),
        "PYTHONDONTWRITEBYTECODE": "1",  # nobody may not write __pycache__ here
        "MG_SECCOMP_ALLOWED": json.dumps(sorted(allowed)),
        "MG_SECCOMP_CODE": code,
    }
    result = subprocess.run(
        [sys.executable, "-c", _CHILD],
        cwd="/",
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if result.returncode == NO_LIBSECCOMP:
        pytest.skip("libseccomp.so.2 is not installed (Debian: libseccomp2, which systemd needs)")
    return result
