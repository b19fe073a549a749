#!/usr/bin/env bash
# Install meter-gateway as a systemd service from this source checkout.
#
#   sudo scripts/install.sh               install or upgrade (config and data are kept)
#   sudo scripts/install.sh --uninstall   remove the service and program; keep config and data
#   sudo scripts/install.sh --uninstall --purge   ... and delete config and data too
#
# DESTDIR=/some/dir scripts/install.sh   stage everything under DESTDIR without touching the
#   system: no user is created and systemctl is not called (what it would run is printed).
#   This is how CI tests the installer, and how a package build would use it.
set -euo pipefail

SRC=$(cd "$(dirname "$0")/.." && pwd)
DESTDIR=${DESTDIR:-}
PREFIX=/opt/meter-gateway
CONFDIR=/etc/meter-gateway
UNITDIR=/etc/systemd/system
STATEDIR=/var/lib/meter-gateway
USER_NAME=meter-gateway
PYTHON=${PYTHON:-python3}

mode=install
purge=no
for arg in "$@"; do
  case "$arg" in
    --uninstall) mode=uninstall ;;
    --purge) purge=yes ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) echo "unknown argument: $arg" >&2; exit 64 ;;
  esac
done

say() { echo "install.sh: $*"; }

# Commands that change the running system: executed for real installs, printed under DESTDIR.
system() {
  if [ -n "$DESTDIR" ]; then say "(DESTDIR set, not running) $*"; else "$@"; fi
}

if [ -z "$DESTDIR" ] && [ "$(id -u)" != 0 ]; then
  echo "install.sh: run as root (sudo), or set DESTDIR for a staged install" >&2
  exit 1
fi

if [ "$mode" = uninstall ]; then
  system systemctl disable --now meter-gateway.service
  rm -f "$DESTDIR$UNITDIR/meter-gateway.service"
  system systemctl daemon-reload
  rm -rf "$DESTDIR$PREFIX"
  if [ "$purge" = yes ]; then
    rm -rf "$DESTDIR$CONFDIR" "$DESTDIR$STATEDIR"
    system userdel "$USER_NAME"
    say "removed program, service, config and data"
  else
    say "removed program and service; kept $CONFDIR and $STATEDIR (--purge deletes them)"
  fi
  exit 0
fi

# 1. A system user that may open serial ports (dialout), with no login.
if [ -z "$DESTDIR" ] && ! id "$USER_NAME" >/dev/null 2>&1; then
  useradd --system --home-dir "$STATEDIR" --no-create-home --shell /usr/sbin/nologin \
    --groups dialout "$USER_NAME"
  say "created system user $USER_NAME"
else
  system usermod -a -G dialout "$USER_NAME"
fi

# 2. The program in its own virtual environment (upgrade in place).
"$PYTHON" -c 'import sys; assert sys.version_info >= (3, 11), "Python >= 3.11 needed"'
mkdir -p "$DESTDIR$PREFIX"
[ -x "$DESTDIR$PREFIX/venv/bin/python" ] || "$PYTHON" -m venv "$DESTDIR$PREFIX/venv"
"$DESTDIR$PREFIX/venv/bin/python" -m pip install -q --upgrade "$SRC"
say "installed $("$DESTDIR$PREFIX/venv/bin/meter-gateway" --version) in $PREFIX/venv"

# 3. The config: created from the example once, never overwritten.
install -d -m 755 "$DESTDIR$CONFDIR"
if [ -e "$DESTDIR$CONFDIR/config.yaml" ]; then
  say "kept existing $CONFDIR/config.yaml"
else
  install -m 640 "$SRC/config.example.yaml" "$DESTDIR$CONFDIR/config.yaml"
  [ -z "$DESTDIR" ] && chgrp "$USER_NAME" "$CONFDIR/config.yaml"
  say "created $CONFDIR/config.yaml from the example: edit it, then"
  say "  meter-gateway check-config $CONFDIR/config.yaml"
fi

# 4. The unit. Its StateDirectory= makes /var/lib/meter-gateway with the right owner.
install -D -m 644 "$SRC/systemd/meter-gateway.service" "$DESTDIR$UNITDIR/meter-gateway.service"
system systemctl daemon-reload
system systemctl enable meter-gateway.service
say "enabled meter-gateway.service; start it with: systemctl start meter-gateway"
