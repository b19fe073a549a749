"""scripts/install.sh into a scratch root, as an installer runs it (issue "From install to first
forwarded kWh on a real Pi", items 3 and 4).

The scratch root (tests/helpers/scratch_root.py) has account files and systemd's own units, so
the installer creates its user there (`useradd --prefix`), enables its unit there
(`systemctl --root`) and `systemd-analyze verify --root` checks the result, all without a
chroot and without touching the CI box. What is checked:

- the user exists, with no login, in `dialout`; the program's venv, `/usr/local/bin/
  meter-gateway`, the unit, the documentation it names and the one credential directory;
- the unedited example config (secrets unset) does not pass `check-config --strict`, so the
  service is neither enabled nor started; with the credentials in place it is;
- an upgrade keeps config, credentials and data and replaces the venv by a new one in one step
  (a symlink swap); a failing upgrade leaves the installed program as it was;
- uninstall keeps config, credentials and data; `--purge` removes them and the user;
- a machine without python3-venv gets it from apt-get first.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.fixtures.wheelhouse import offline_pip
from tests.helpers.scratch_root import account, members, scratch_root, verify_unit
from tests.helpers.systemd_unit import parse_unit
from tests.paths import REPO

SCRIPT = REPO / "scripts" / "install.sh"
UNIT = "/etc/systemd/system/meter-gateway.service"
WANTS = "etc/systemd/system/multi-user.target.wants/meter-gateway.service"
SECRETS = {"WATTICS_USER": "site-42-user", "WATTICS_PASSWORD": "site-42-password"}


def run(root: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), *args],
        env={**os.environ, "DESTDIR": str(root), **env},
        capture_output=True,
        text=True,
        timeout=400,
        check=False,
    )


def program(root: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(root / "opt/meter-gateway/venv/bin/meter-gateway"), *args],
        env={"PATH": os.environ["PATH"], **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def venv_target(root: Path) -> str:
    link = root / "opt/meter-gateway/venv"
    assert link.is_symlink(), "the venv is a symlink to one of opt/meter-gateway/venvs/"
    return os.readlink(link)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_install_into_a_scratch_root_then_upgrade_and_uninstall(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    root = scratch_root(tmp_path)  # skips unless root: only then the wheelhouse is built
    # The dependencies from the session's wheelhouse (pip's own variables; the script as is).
    wheelhouse: Path = request.getfixturevalue("wheelhouse")
    pip = offline_pip(wheelhouse, os.environ.get("PYTHON", "python3"))
    first = run(root, **pip)
    assert first.returncode == 0, first.stdout + first.stderr

    # The user: a system account without login, in dialout (serial ports).
    user = account(root, "meter-gateway")
    assert user is not None and user[5] == "/var/lib/meter-gateway"
    assert user[6] == "/usr/sbin/nologin" and int(user[2]) < 1000
    assert "meter-gateway" in members(root, "dialout")

    # The program, on PATH as /usr/local/bin/meter-gateway.
    assert program(root, "--version").stdout.startswith("meter-gateway ")
    link = root / "usr/local/bin/meter-gateway"
    assert os.readlink(link) == "/opt/meter-gateway/venv/bin/meter-gateway"

    # The unit: what it documents is installed; systemd finds nothing to complain about.
    unit = parse_unit((root / UNIT.lstrip("/")).read_text())
    for url in unit["Unit"]["Documentation"][0].split():
        assert url.startswith("file:///"), url
        assert (root / url.removeprefix("file:///")).is_file(), f"{url} not installed"
    assert verify_unit(root, UNIT) == []

    # The config and the one credential directory (root only).
    config = root / "etc/meter-gateway/config.yaml"
    credentials = root / "etc/meter-gateway/credentials"
    assert oct(config.stat().st_mode & 0o777) == "0o640"
    assert config.stat().st_gid == int(user[3])
    assert oct(credentials.stat().st_mode & 0o777) == "0o700"

    # The unedited example cannot run (no secrets): not enabled, not started, and it says so.
    assert not (root / WANTS).exists()
    assert "systemctl start" not in first.stdout and "enable --now" in first.stdout
    assert "not started" in first.stdout and "check-config --strict" in first.stdout
    assert "${WATTICS_PASSWORD} is not set" in first.stdout + first.stderr

    # With the credentials in place, a re-run (an upgrade) checks, enables and starts it.
    for name, value in SECRETS.items():
        (credentials / name).write_text(value + "\n")
        (credentials / name).chmod(0o600)
    config.write_text(config.read_text() + "\n# edited by the installer\n")
    data = root / "var/lib/meter-gateway/gateway.sqlite3"
    data.parent.mkdir(parents=True)
    data.write_text("samples")
    old_venv = venv_target(root)
    second = run(root, **pip)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "kept existing" in second.stdout and "edited by the installer" in config.read_text()
    assert (root / WANTS).is_symlink()
    assert "(DESTDIR set, not running) systemctl start meter-gateway.service" in second.stdout
    new_venv = venv_target(root)
    assert new_venv != old_venv and not (root / "opt/meter-gateway" / old_venv).exists()
    assert data.read_text() == "samples" and (credentials / "WATTICS_USER").exists()
    strict = program(
        root, "check-config", "--strict", str(config), CREDENTIALS_DIRECTORY=str(credentials)
    )
    assert strict.returncode == 0, strict.stderr
    assert "site-42-password" not in second.stdout + second.stderr + strict.stdout

    # An upgrade that fails (no package index, no wheels) leaves the installed program as it was.
    nothing = tmp_path / "no-wheels"
    nothing.mkdir()
    failed = run(root, PIP_NO_INDEX="1", PIP_FIND_LINKS=str(nothing))
    assert failed.returncode != 0
    assert "unchanged" in failed.stdout + failed.stderr
    assert venv_target(root) == new_venv and program(root, "--version").returncode == 0
    assert list((root / "opt/meter-gateway/venvs").iterdir()) == [
        root / "opt/meter-gateway" / new_venv
    ]

    # Uninstall keeps config, credentials, data and the user; --purge removes them.
    removed = run(root, "--uninstall")
    assert removed.returncode == 0, removed.stderr
    assert not (root / "opt/meter-gateway").exists() and not link.is_symlink()
    assert not (root / UNIT.lstrip("/")).exists() and not (root / WANTS).is_symlink()
    assert config.exists() and (credentials / "WATTICS_PASSWORD").exists() and data.exists()
    assert account(root, "meter-gateway") is not None
    purged = run(root, "--uninstall", "--purge")
    assert purged.returncode == 0, purged.stderr
    assert not (root / "etc/meter-gateway").exists()
    assert not (root / "var/lib/meter-gateway").exists()
    assert account(root, "meter-gateway") is None
    assert "meter-gateway:" not in (root / "etc/group").read_text()


@pytest.mark.skipif(os.geteuid() != 0, reason="install.sh calls apt-get as root only")
def test_a_missing_python_venv_is_installed_with_apt_get(tmp_path: Path) -> None:
    """Raspberry Pi OS Lite has python3 without its venv module: install.sh asks apt-get for
    python3-venv first (stubs record it; the stub python still lacks venv, so it stops)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "apt-calls"
    (bin_dir / "apt-get").write_text(f'#!/bin/sh\necho "$*" >> {calls}\n')
    (bin_dir / "python-without-venv").write_text(
        '#!/bin/sh\ncase "$*" in *ensurepip*|*venv*) exit 1;; esac\nexec python3 "$@"\n'
    )
    for stub in bin_dir.iterdir():
        stub.chmod(0o755)
    result = run(
        tmp_path / "stage",
        PATH=f"{bin_dir}:{os.environ['PATH']}",
        PYTHON=str(bin_dir / "python-without-venv"),
    )
    assert result.returncode != 0
    assert "python3-venv" in calls.read_text() and "install" in calls.read_text()
    assert "python3-venv" in result.stderr
    assert not (tmp_path / "stage/opt").exists()  # stopped before installing anything
