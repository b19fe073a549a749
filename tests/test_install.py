"""The installer, staged under DESTDIR: a working install laid out, the system left untouched."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.paths import REPO

SCRIPT = REPO / "scripts" / "install.sh"


def run(destdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), *args],
        env={**os.environ, "DESTDIR": str(destdir)},
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_staged_install_upgrade_and_uninstall(tmp_path: Path) -> None:
    dest = tmp_path / "root"
    first = run(dest)
    assert first.returncode == 0, first.stderr
    # Nothing ran against the real system: every system command is only printed.
    assert "(DESTDIR set, not running) systemctl enable meter-gateway.service" in first.stdout
    binary = dest / "opt/meter-gateway/venv/bin/meter-gateway"
    config = dest / "etc/meter-gateway/config.yaml"
    unit = dest / "etc/systemd/system/meter-gateway.service"
    assert binary.exists() and config.exists() and unit.exists()
    exec_start = next(
        line for line in unit.read_text().splitlines() if line.startswith("ExecStart=")
    )
    assert exec_start.split("=", 1)[1].split()[0] == "/opt/meter-gateway/venv/bin/meter-gateway"
    assert oct(config.stat().st_mode & 0o777) == "0o640"

    # The installed program works and validates the installed example config.
    check = subprocess.run(
        [str(binary), "check-config", str(config)],
        env={"WATTICS_USER": "u", "WATTICS_PASSWORD": "p", "PATH": os.environ["PATH"]},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert check.returncode == 0, check.stderr

    # An upgrade keeps the installer's own config edits.
    config.write_text(config.read_text() + "\n# edited by the installer\n")
    again = run(dest)
    assert again.returncode == 0, again.stderr
    assert "kept existing" in again.stdout and "edited by the installer" in config.read_text()

    # Uninstall keeps config and data unless asked.
    (dest / "var/lib/meter-gateway").mkdir(parents=True)
    (dest / "var/lib/meter-gateway/gateway.sqlite3").write_text("data")
    removed = run(dest, "--uninstall")
    assert removed.returncode == 0, removed.stderr
    assert not binary.exists() and not unit.exists()
    assert config.exists() and (dest / "var/lib/meter-gateway/gateway.sqlite3").exists()
    purged = run(dest, "--uninstall", "--purge")
    assert purged.returncode == 0, purged.stderr
    assert not config.exists() and not (dest / "var/lib/meter-gateway").exists()
    shutil.rmtree(dest, ignore_errors=True)
