"""The Debian package (`./dev.sh deb`): built from the repository with dpkg-deb, installed into
a scratch root with the real dpkg and removed again (issue "From install to first forwarded
kWh on a real Pi", item 5).

`dpkg --root=R --force-script-chrootless` unpacks into R and runs the package's maintainer
scripts on the host with `DPKG_ROOT=R` (no chroot, no container): they create the user with
`useradd --prefix`, enable the unit with `systemctl --root`, and run `check-config` with the
packaged program. R's dpkg database starts with the host's own entries for the packages the
.deb depends on (the host's python3.11 is what the chrootless scripts run). Checked:

- the archive: the venv under /opt/meter-gateway/venv with no trace of the build directory,
  the unit, /usr/bin/meter-gateway, the conffile, the root-only credential directory;
- `dpkg -i`: the user (in dialout), `meter-gateway --version` and `check-config` run from the
  installed package, the unedited example leaves the unit disabled, with credentials a
  reinstall enables it; the installed unit passes `systemd-analyze verify --root`;
- `dpkg -r` removes the program and keeps config, credentials, data and the user; `dpkg
  --purge` removes those too.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway import __version__
from tests.fixtures.wheelhouse import offline_pip
from tests.helpers.scratch_root import account, members, scratch_root, verify_unit
from tests.paths import REPO

UNIT = "/lib/systemd/system/meter-gateway.service"
WANTS = "etc/systemd/system/multi-user.target.wants/meter-gateway.service"
SECRETS = {"WATTICS_USER": "deb-user", "WATTICS_PASSWORD": "deb-password"}


def need(tool: str) -> str:
    found = shutil.which(tool)
    if found is None:
        pytest.skip(f"{tool} is not installed")
    return found


@pytest.fixture(scope="module")
def deb(tmp_path_factory: pytest.TempPathFactory, wheelhouse: Path) -> Iterator[Path]:
    """One package for the module's tests, built by `./dev.sh deb` as a user builds it, with
    the dependencies from the session's wheelhouse and the fastest xz level (dpkg-deb's own
    DPKG_DEB_COMPRESSOR_LEVEL; the same xz archive, only larger)."""
    need("dpkg-deb")
    out = tmp_path_factory.mktemp("deb")
    env = {
        **os.environ,
        **offline_pip(wheelhouse, os.environ.get("PYTHON", "/usr/bin/python3")),
        "DPKG_DEB_COMPRESSOR_LEVEL": "0",
    }
    built = subprocess.run(
        [str(REPO / "dev.sh"), "deb", "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    [package] = out.glob("meter-gateway_*.deb")
    yield package
    shutil.rmtree(out, ignore_errors=True)


def dpkg_deb(*args: str) -> str:
    return subprocess.run(
        [need("dpkg-deb"), *args], capture_output=True, text=True, timeout=120, check=True
    ).stdout


def ar_members(path: Path) -> list[str]:
    """The member names of an ar archive (a .deb), in order (deb(5): 60-byte headers)."""
    data = path.read_bytes()
    assert data.startswith(b"!<arch>\n")
    names, at = [], 8
    while at < len(data):
        header = data[at : at + 60]
        names.append(header[:16].decode().strip().removesuffix("/"))
        size = int(header[48:58])
        at += 60 + size + size % 2
    return names


def dpkg(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [need("dpkg"), f"--root={root}", "--force-script-chrootless", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def dpkg_root(base: Path, package: Path) -> Path:
    """A scratch root with a dpkg database holding the host's stanzas of the .deb's Depends."""
    root = scratch_root(base)
    admin = root / "var/lib/dpkg"
    for sub in ("info", "updates", "triggers"):
        (admin / sub).mkdir(parents=True)
    (admin / "available").write_text("")
    depends = dpkg_deb("--field", str(package), "Depends").strip()
    stanzas = []
    for clause in depends.split(","):
        name = clause.split("(")[0].split("|")[0].strip()
        query = ["dpkg-query", "-W", "-f", "${binary:Package}\n", name]
        listed = subprocess.run(query, capture_output=True, text=True, check=True).stdout
        (admin / "info" / f"{listed.strip()}.list").write_text("")  # its files: not ours
        stanzas.append(
            subprocess.run(
                ["dpkg-query", "-s", name], capture_output=True, text=True, check=True
            ).stdout.strip()
        )
    (admin / "status").write_text("\n\n".join(stanzas) + "\n\n")
    return root


def installed(root: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """The packaged program, run from the scratch root (its #! names /opt, so by its python)."""
    return subprocess.run(
        [str(root / "opt/meter-gateway/venv/bin/python"), "-m", "gateway", *args],
        env={"PATH": os.environ["PATH"], **env},
        cwd="/",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_package_holds_a_relocated_venv_the_unit_and_the_conffile(
    deb: Path, tmp_path: Path
) -> None:
    assert deb.name.startswith(f"meter-gateway_{__version__}_")
    contents = dpkg_deb("--contents", str(deb))
    entries = {line.split()[-1] if " -> " not in line else line.split()[-3]: line
               for line in contents.splitlines()}  # fmt: skip
    for path in (
        "./opt/meter-gateway/venv/bin/meter-gateway",
        "./opt/meter-gateway/venv/bin/python",
        "./opt/meter-gateway/doc/docs/install.md",
        f".{UNIT}",
        "./etc/meter-gateway/config.yaml",
        "./usr/share/doc/meter-gateway/copyright",
    ):
        assert path in entries, f"{path} not in the package"
    assert "-> /opt/meter-gateway/venv/bin/meter-gateway" in entries["./usr/bin/meter-gateway"]
    assert entries["./etc/meter-gateway/credentials/"].startswith("drwx------ root/root")
    assert entries["./etc/meter-gateway/config.yaml"].startswith("-rw-r----- root/root")
    assert all(" root/root " in line for line in contents.splitlines())
    assert dpkg_deb("--field", str(deb), "Depends").startswith("python3.")
    assert ar_members(deb) == ["debian-binary", "control.tar.xz", "data.tar.xz"]
    extracted = tmp_path / "x"
    dpkg_deb("--raw-extract", str(deb), str(extracted))
    assert (extracted / "DEBIAN/conffiles").read_text().split() == [
        "/etc/meter-gateway/config.yaml"
    ]
    shebang = (extracted / "opt/meter-gateway/venv/bin/meter-gateway").read_text().splitlines()[0]
    assert shebang == "#!/opt/meter-gateway/venv/bin/python"
    leftovers = subprocess.run(
        ["grep", "-rl", "--binary-files=text", "meter-gateway-deb.", str(extracted)],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    assert leftovers == "", f"build paths left in: {leftovers}"


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_install_check_config_and_remove_in_a_scratch_root(deb: Path, tmp_path: Path) -> None:
    root = dpkg_root(tmp_path, deb)
    first = dpkg(root, "-i", str(deb))
    assert first.returncode == 0, first.stdout + first.stderr

    user = account(root, "meter-gateway")
    assert user is not None and user[6] == "/usr/sbin/nologin"
    assert "meter-gateway" in members(root, "dialout")
    assert installed(root, "--version").stdout.strip() == f"meter-gateway {__version__}"
    config = root / "etc/meter-gateway/config.yaml"
    assert config.stat().st_gid == int(user[3])
    check = installed(root, "check-config", str(config))
    assert check.returncode == 0, check.stderr  # secrets unset: warnings only
    assert "is not set" in check.stderr
    assert not (root / WANTS).exists(), "the unedited example must not be started"
    assert "not started" in first.stdout + first.stderr
    assert verify_unit(root, UNIT) == []

    credentials = root / "etc/meter-gateway/credentials"
    for name, value in SECRETS.items():
        (credentials / name).write_text(value)
    strict = installed(
        root, "check-config", "--strict", str(config), CREDENTIALS_DIRECTORY=str(credentials)
    )
    assert strict.returncode == 0, strict.stderr
    again = dpkg(root, "-i", str(deb))  # a reinstall (or upgrade) with credentials: enabled
    assert again.returncode == 0, again.stdout + again.stderr
    assert (root / WANTS).is_symlink()
    assert "deb-password" not in again.stdout + again.stderr

    data = root / "var/lib/meter-gateway/gateway.sqlite3"
    data.parent.mkdir(parents=True, exist_ok=True)
    data.write_text("samples")
    removed = dpkg(root, "-r", "meter-gateway")
    assert removed.returncode == 0, removed.stdout + removed.stderr
    assert "warning" not in removed.stderr.lower(), removed.stderr
    assert not (root / "opt/meter-gateway").exists()
    assert not (root / UNIT.lstrip("/")).exists() and not (root / WANTS).is_symlink()
    assert not (root / "usr/bin/meter-gateway").is_symlink()
    assert config.exists() and (credentials / "WATTICS_PASSWORD").exists() and data.exists()
    assert account(root, "meter-gateway") is not None

    purged = dpkg(root, "--purge", "meter-gateway")
    assert purged.returncode == 0, purged.stdout + purged.stderr
    assert not (root / "etc/meter-gateway").exists()
    assert not (root / "var/lib/meter-gateway").exists()
    assert account(root, "meter-gateway") is None
    assert "meter-gateway:" not in (root / "etc/group").read_text()
