#!/usr/bin/env bash
# meter-gateway from a source checkout, on a fresh Debian / Raspberry Pi OS machine.
#   ./dev.sh demo [--seconds N]   simulated meters -> gateway -> local fake clouds, printed live
#   ./dev.sh test [pytest args]   the whole test suite (lint, layers, types, pytest with real Mosquitto and socat)
#   ./dev.sh test-ha              every HA discovery payload checked by Home Assistant's own code (in .venv-ha)
#   ./dev.sh bench                the performance table
#   ./dev.sh deb [--out DIR]      the Debian package (dist/meter-gateway_<version>_<arch>.deb)
# It installs what it needs: python3-venv/mosquitto/socat/chromium with apt-get (as root or via sudo)
# when missing, and the Python packages into ./.venv from pyproject.toml.
set -euo pipefail
cd "$(dirname "$0")"

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "need root (or sudo) to run: $*" >&2; exit 1; fi
}

apt_install() {
  local missing=()
  for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "installing ${missing[*]} with apt-get" >&2
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

python_ok() {
  command -v python3 >/dev/null && python3 -c 'import sys, venv, ensurepip; assert sys.version_info >= (3, 11)' 2>/dev/null
}

venv() {
  python_ok || apt_install python3 python3-venv
  python_ok || { echo "meter-gateway needs Python >= 3.11 with venv" >&2; exit 1; }
  local stamp=.venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)
  if [ ! -f "$stamp" ]; then
    [ -x .venv/bin/python ] || python3 -m venv .venv
    .venv/bin/python -m pip install -q --upgrade pip >/dev/null
    .venv/bin/python -m pip install -q -e ".[test]"
    rm -f .venv/.installed-*; touch "$stamp"
  fi
}

# Home Assistant, pinned to the oldest release we support (tests/ha/requirements.txt), in a
# venv of its own: its pinned dependencies must not meet the gateway's.
ha_venv() {
  local stamp=.venv-ha/.installed-$(sha256sum tests/ha/requirements.txt | cut -c1-16)
  if [ ! -f "$stamp" ]; then
    [ -x .venv-ha/bin/python ] || python3 -m venv .venv-ha
    .venv-ha/bin/python -m pip install -q -r tests/ha/requirements.txt
    rm -f .venv-ha/.installed-*; touch "$stamp"
  fi
}

command=${1:-help}; shift || true
case "$command" in
  demo)
    venv
    exec .venv/bin/meter-gateway demo "$@" ;;
  test)
    if ! command -v mosquitto >/dev/null && [ ! -x /usr/sbin/mosquitto ]; then apt_install mosquitto; fi
    command -v socat >/dev/null || apt_install socat
    command -v systemd-analyze >/dev/null || apt_install systemd  # the unit's security score
    command -v chromium >/dev/null || apt_install chromium  # the status page's browser test
    venv
    .venv/bin/ruff check .
    .venv/bin/ruff format --check .
    .venv/bin/lint-imports --no-cache   # the layers (pyproject.toml [tool.importlinter])
    .venv/bin/mypy                      # types ([tool.mypy]; core and store --strict)
    exec .venv/bin/python -m pytest "$@" ;;
  test-ha)
    if ! command -v mosquitto >/dev/null && [ ! -x /usr/sbin/mosquitto ]; then apt_install mosquitto; fi
    venv
    ha_venv
    MG_HA_PYTHON=.venv-ha/bin/python exec .venv/bin/python -m pytest tests/ha "$@" ;;
  bench)
    venv
    exec .venv/bin/python -m bench "$@" ;;
  deb)
    # the system's Python: the package's venv runs on it (scripts/build-deb.sh)
    /usr/bin/python3 -c 'import venv, ensurepip' 2>/dev/null || apt_install python3-venv
    command -v dpkg-deb >/dev/null || apt_install dpkg
    exec scripts/build-deb.sh "$@" ;;
  *)
    # the comment block at the top of this file, nothing else
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
    exit 64 ;;
esac
