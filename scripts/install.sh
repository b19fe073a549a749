#!/usr/bin/env bash
# Install meter-gateway as a systemd service from this source checkout.
#
#   sudo scripts/install.sh                       install or upgrade (config, credentials, data kept)
#   sudo scripts/install.sh --uninstall           remove program and service; keep config, credentials, data
#   sudo scripts/install.sh --uninstall --purge   ... and delete those and the meter-gateway user too
#
# The service is enabled and started only once `meter-gateway check-config --strict` passes:
# until the config is edited and its secrets are in /etc/meter-gateway/credentials/NAME, it
# stays off (what to do next is printed). An upgrade builds the new version beside the old
# one and switches over in one step; if anything fails, the installed version is unchanged.
#
# DESTDIR=/some/dir scripts/install.sh   install under DESTDIR and touch nothing outside it
#   (this is how CI tests it): with DESTDIR/etc/passwd present (a scratch root) the user is
#   created there (useradd --prefix); the unit is enabled there (systemctl --root); commands
#   that need a running systemd (start, stop, daemon-reload) are printed, not run.
set -euo pipefail

SRC=$(cd "$(dirname "$0")/.." && pwd)
DESTDIR=${DESTDIR:-}
PREFIX=/opt/meter-gateway
CONFDIR=/etc/meter-gateway
CREDDIR=$CONFDIR/credentials
UNITDIR=/etc/systemd/system
UNIT=meter-gateway.service
STATEDIR=/var/lib/meter-gateway
BINLINK=/usr/local/bin/meter-gateway
USER_NAME=meter-gateway
PYTHON=${PYTHON:-python3}

mode=install
purge=no
for arg in "$@"; do
  case "$arg" in
    --uninstall) mode=uninstall ;;
    --purge) purge=yes ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "unknown argument: $arg (see --help)" >&2; exit 64 ;;
  esac
done

say() { echo "install.sh: $*"; }
fail() { echo "install.sh: $*" >&2; exit 1; }

# Commands that need the running system: executed for real installs, printed under DESTDIR.
system() {
  if [ -n "$DESTDIR" ]; then say "(DESTDIR set, not running) $*"; else "$@"; fi
}

# Account changes: the system's files, or a scratch root's (DESTDIR/etc/passwd) with --prefix.
accounts() {
  local tool=$1; shift
  if [ -z "$DESTDIR" ]; then "$tool" "$@"
  elif [ -f "$DESTDIR/etc/passwd" ]; then "$tool" --prefix "$DESTDIR" "$@"
  else say "(DESTDIR set, not running) $tool $*"; fi
}

# Enabling and disabling only write symlinks: systemctl --root does that without systemd.
unit_links() {
  if [ -z "$DESTDIR" ]; then systemctl "$@" "$UNIT"
  elif command -v systemctl >/dev/null; then systemctl --quiet --root="$DESTDIR" "$@" "$UNIT"
  else say "(DESTDIR set, not running) systemctl $* $UNIT"; fi
}

passwd_field() {  # passwd_field FILE NAME FIELD
  [ -f "$1" ] && awk -F: -v n="$2" -v f="$3" '$1 == n { print $f }' "$1" || true
}

has_user() {
  if [ -z "$DESTDIR" ]; then id "$USER_NAME" >/dev/null 2>&1
  else [ -n "$(passwd_field "$DESTDIR/etc/passwd" "$USER_NAME" 1)" ]; fi
}

in_dialout() {
  if [ -z "$DESTDIR" ]; then id -nG "$USER_NAME" | tr ' ' '\n' | grep -qx dialout
  else passwd_field "$DESTDIR/etc/group" dialout 4 | tr ',' '\n' | grep -qx "$USER_NAME"; fi
}

service_active() { [ -z "$DESTDIR" ] && systemctl is-active --quiet "$UNIT"; }

if [ -z "$DESTDIR" ] && [ "$(id -u)" != 0 ]; then
  fail "run as root (sudo), or set DESTDIR for an install under a directory"
fi

if [ "$mode" = uninstall ]; then
  service_active && system systemctl stop "$UNIT"
  unit_links disable 2>/dev/null || true
  rm -f "$DESTDIR$UNITDIR/$UNIT"
  system systemctl daemon-reload
  rm -rf "$DESTDIR$PREFIX"
  if [ -L "$DESTDIR$BINLINK" ]; then rm -f "$DESTDIR$BINLINK"; fi
  if [ "$purge" = yes ]; then
    rm -rf "$DESTDIR$CONFDIR" "$DESTDIR$STATEDIR"
    if has_user; then
      accounts userdel "$USER_NAME"
      if [ -n "$(passwd_field "$DESTDIR/etc/group" "$USER_NAME" 1)" ]; then
        accounts groupdel "$USER_NAME"
      fi
    fi
    say "removed program, service, config, credentials, data and the $USER_NAME user"
  else
    say "removed program and service; kept $CONFDIR (config and credentials) and $STATEDIR" \
      "(data): --uninstall --purge deletes them"
  fi
  exit 0
fi

# 1. Python >= 3.11 with venv (Raspberry Pi OS Lite lacks python3-venv).
python_ok() { "$PYTHON" -c 'import sys, venv, ensurepip; assert sys.version_info >= (3, 11)' 2>/dev/null; }
if ! python_ok; then
  say "$PYTHON has no venv module (or is older than 3.11): installing python3-venv"
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv || true
  fi
  python_ok || fail "meter-gateway needs Python >= 3.11 with venv: apt-get install python3-venv"
fi

# 2. The program in a new virtual environment beside the installed one (switched to in step 6).
mkdir -p "$DESTDIR$PREFIX/venvs"
new=$(mktemp -d "$DESTDIR$PREFIX/venvs/venv-$(date +%Y%m%d%H%M%S)-XXXX")
chmod 755 "$new"
discard_new() { rm -rf "$new"; }
trap 'discard_new; say "failed: the installed version is unchanged" >&2' ERR
# pip builds in the tree it is given (setuptools' build/): a clean copy, so nothing stale gets in
source=$(mktemp -d)
trap 'rm -rf "$source"' EXIT
cp -r "$SRC/pyproject.toml" "$SRC/README.md" "$SRC/core" "$SRC/drivers" "$SRC/gateway" "$source/"
"$PYTHON" -m venv "$new"
"$new/bin/python" -m pip install -q --disable-pip-version-check "$source"
trap - ERR
say "built $("$new/bin/meter-gateway" --version) in $PREFIX/venvs/$(basename "$new")"

# 3. The user: a system account that may open serial ports (dialout), without login.
if ! has_user; then
  accounts useradd --system --user-group --home-dir "$STATEDIR" --no-create-home \
    --shell /usr/sbin/nologin --groups dialout "$USER_NAME"
  say "created system user $USER_NAME (in dialout)"
elif ! in_dialout; then
  accounts usermod -a -G dialout "$USER_NAME"
  say "added $USER_NAME to dialout (serial ports)"
fi
if has_user && ! in_dialout; then
  say "warning: $USER_NAME is not in dialout; the unit's SupplementaryGroups=dialout still" \
    "gives the service the serial ports"
fi
gid=$(passwd_field "$DESTDIR/etc/group" "$USER_NAME" 3)

# 4. The config (created from the example once, never overwritten) and the credential directory.
install -d -m 755 "$DESTDIR$CONFDIR"
install -d -m 700 "$DESTDIR$CREDDIR"
if [ -e "$DESTDIR$CONFDIR/config.yaml" ]; then
  say "kept existing $CONFDIR/config.yaml"
else
  install -m 640 "$SRC/config.example.yaml" "$DESTDIR$CONFDIR/config.yaml"
  say "created $CONFDIR/config.yaml from the example"
fi
if [ -n "$gid" ]; then chgrp "$gid" "$DESTDIR$CONFDIR/config.yaml"; fi

# 5. Is the config ready for the service? The new version checks it, strictly (every secret).
check_env=()
if [ -n "$DESTDIR" ]; then check_env=(CREDENTIALS_DIRECTORY="$DESTDIR$CREDDIR"); fi
if check_output=$(env "${check_env[@]}" "$new/bin/meter-gateway" check-config --strict \
    "$DESTDIR$CONFDIR/config.yaml" 2>&1); then
  ready=yes
else
  ready=no
fi
echo "$check_output" | sed 's/^/  /'
if [ "$ready" = no ] && service_active; then
  discard_new
  fail "the running service is kept as it is: the new version refuses $CONFDIR/config.yaml" \
    "(above); fix it and run install.sh again (the installed version is unchanged)"
fi

# 6. Switch to the new version in one step (the service is stopped meanwhile).
was_active=no
if service_active; then was_active=yes; system systemctl stop "$UNIT"; fi
if [ -d "$DESTDIR$PREFIX/venv" ] && [ ! -L "$DESTDIR$PREFIX/venv" ]; then
  mv "$DESTDIR$PREFIX/venv" "$DESTDIR$PREFIX/venvs/venv-old"  # the layout before venvs/
fi
ln -sfn "venvs/$(basename "$new")" "$DESTDIR$PREFIX/venv.new"
mv -T "$DESTDIR$PREFIX/venv.new" "$DESTDIR$PREFIX/venv"
for old in "$DESTDIR$PREFIX"/venvs/*; do
  if [ "$old" != "$new" ]; then rm -rf "$old"; fi
done
install -d -m 755 "$DESTDIR$(dirname "$BINLINK")"
ln -sfn "$PREFIX/venv/bin/meter-gateway" "$DESTDIR$BINLINK"

# 7. The documentation the unit names, and the unit.
rm -rf "$DESTDIR$PREFIX/doc"
install -d -m 755 "$DESTDIR$PREFIX/doc"
cp -r "$SRC/docs" "$DESTDIR$PREFIX/doc/docs"  # the repository's layout: links resolve
install -m 644 "$SRC/README.md" "$SRC/config.example.yaml" "$DESTDIR$PREFIX/doc/"
install -D -m 644 "$SRC/systemd/$UNIT" "$DESTDIR$UNITDIR/$UNIT"
system systemctl daemon-reload

# 8. Start it only with a config it accepts; otherwise say what to do.
if [ "$ready" = yes ]; then
  unit_links enable
  if [ "$was_active" = yes ]; then say "upgraded; starting it again"; fi
  system systemctl start "$UNIT"
  say "enabled and started $UNIT: journalctl -u meter-gateway -f"
else
  unit_links disable 2>/dev/null || true
  say "$UNIT is not started: $CONFDIR/config.yaml does not pass check-config --strict (above)."
  say "Edit it, put each secret \${NAME} it uses in $CREDDIR/NAME (root only, mode 600), then:"
  say "  sudo meter-gateway check-config --strict $CONFDIR/config.yaml"
  say "  sudo systemctl enable --now meter-gateway"
fi
