"""A scratch root: an empty directory made just enough of a Debian system for an installer.

`scratch_root()` gives it the account files (`useradd --prefix`, `userdel --prefix` edit them
instead of the host's: root and the `dialout` group, as on Debian) and a copy of the host's
systemd unit directory (so `systemd-analyze verify --root` and `systemctl --root` find
multi-user.target and friends). Nothing outside it is touched; no chroot, no container.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

#: Where Debian keeps the system's own units.
HOST_UNITS = Path("/usr/lib/systemd/system")


def scratch_root(base: Path) -> Path:
    if os.geteuid() != 0:
        pytest.skip("useradd --prefix and dpkg --root need root (CI runs as root)")
    root = base / "root"
    etc = root / "etc"
    etc.mkdir(parents=True)
    (etc / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (etc / "group").write_text("root:x:0:\ndialout:x:20:\n")
    for name, text in (("shadow", "root:*:19000:0:99999:7:::\n"), ("gshadow", "dialout:*::\n")):
        (etc / name).write_text(text)
        (etc / name).chmod(0o600)
    if HOST_UNITS.is_dir():
        shutil.copytree(HOST_UNITS, root / "usr/lib/systemd/system", symlinks=True)
    return root


def account(root: Path, name: str) -> list[str] | None:
    """The passwd fields of `name` in the scratch root, or None."""
    for line in (root / "etc/passwd").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == name:
            return fields
    return None


def members(root: Path, group: str) -> list[str]:
    for line in (root / "etc/group").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == group:
            return [m for m in fields[3].split(",") if m]
    return []


def verify_unit(root: Path, unit: str) -> list[str]:
    """What `systemd-analyze verify --root` says about an installed unit (empty: clean)."""
    binary = shutil.which("systemd-analyze")
    if binary is None:
        pytest.skip("systemd-analyze is not installed")
    result = subprocess.run(
        [binary, "verify", f"--root={root}", unit],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    lines = (result.stdout + result.stderr).splitlines()
    return [line for line in lines if line.strip()] + ([] if result.returncode == 0 else ["rc!=0"])
