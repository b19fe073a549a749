#!/usr/bin/env bash
# Build the Debian package from this checkout: ./dev.sh deb [--out DIR] (default: ./dist).
#
# The package holds a complete virtual environment in /opt/meter-gateway/venv made with the
# system's Python (/usr/bin/python3; the package depends on that exact python3.X), the unit,
# /usr/bin/meter-gateway, the example config as the conffile /etc/meter-gateway/config.yaml
# and the root-only credential directory. The venv is built in a scratch directory and moved
# to its final path: its scripts' #! lines and pyvenv.cfg are rewritten, and every module is
# compiled with the final path (no trace of the build directory is left). Its compiled parts
# (pydantic-core, orjson, ...) are for this machine: build on the Debian release and
# architecture the package is for (on the Pi itself, or a matching container).
set -euo pipefail

SRC=$(cd "$(dirname "$0")/.." && pwd)
OUT=$SRC/dist
PYTHON=${PYTHON:-/usr/bin/python3}
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT=$2; shift 2 ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "build-deb.sh: unknown argument: $1" >&2; exit 64 ;;
  esac
done

PACKAGE=meter-gateway
PREFIX=/opt/meter-gateway
VERSION=$("$PYTHON" -c 'import re,sys; print(re.search(r"__version__ = \"(.+)\"", open(sys.argv[1]).read())[1])' \
  "$SRC/gateway/__init__.py")
ARCH=$(dpkg --print-architecture)
PYVER=$("$PYTHON" -c 'import sys; assert sys.version_info >= (3, 11); print("%d.%d" % sys.version_info[:2])')

stage=$(mktemp -d -t meter-gateway-deb.XXXXXX)
trap 'rm -rf "$stage"' EXIT
root=$stage/root
venv=$root$PREFIX/venv

# The venv, without pip (nothing is ever installed into it on the site).
# pip builds in the tree it is given (setuptools' build/): a clean copy, so nothing stale gets in
mkdir "$stage/source"
cp -r "$SRC/pyproject.toml" "$SRC/README.md" "$SRC/core" "$SRC/drivers" "$SRC/gateway" "$stage/source/"
"$PYTHON" -m venv "$venv"
"$venv/bin/python" -m pip install -q --disable-pip-version-check --no-compile "$stage/source"
"$venv/bin/python" -m pip uninstall -q -y pip setuptools
rm -f "$venv"/bin/activate* "$venv"/bin/Activate.ps1 "$venv"/bin/pip*
rm -f "$venv"/lib/python*/site-packages/meter_gateway-*.dist-info/direct_url.json  # the build dir
# Move it: every text file of bin/ (the #! lines) and pyvenv.cfg name the final path.
grep -rlI --null "$root" "$venv/bin" "$venv/pyvenv.cfg" | xargs -0 -r sed -i "s#$root##g"
# Compile every module as the final path, hash-checked (the files under /opt never change).
"$venv/bin/python" -W ignore -m compileall -q -f -j 0 --invalidation-mode unchecked-hash \
  -s "$root" -p / "$venv/lib" >/dev/null

# The rest of the tree.
install -d -m 755 "$root/usr/bin" "$root/lib/systemd/system" "$root/usr/share/doc/$PACKAGE"
ln -s "$PREFIX/venv/bin/meter-gateway" "$root/usr/bin/meter-gateway"
install -m 644 "$SRC/systemd/meter-gateway.service" "$root/lib/systemd/system/"
install -d -m 755 "$root/etc/meter-gateway" "$root$PREFIX/doc"
install -d -m 700 "$root/etc/meter-gateway/credentials"
install -m 640 "$SRC/config.example.yaml" "$root/etc/meter-gateway/config.yaml"
cp -r "$SRC/docs" "$root$PREFIX/doc/docs"  # the repository's layout: links resolve
install -m 644 "$SRC/README.md" "$SRC/config.example.yaml" "$root$PREFIX/doc/"
cat > "$root/usr/share/doc/$PACKAGE/copyright" <<EOF
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: meter-gateway
License: MIT
Comment: the Python packages in $PREFIX/venv keep their own licenses (see each one's
 *.dist-info directory there).
EOF
find "$root" -type d -exec chmod g-w,o-w {} +

# Control files: the maintainer scripts honour DPKG_ROOT (dpkg --root --force-script-chrootless).
install -d -m 755 "$root/DEBIAN"
for script in postinst prerm postrm; do
  install -m 755 "$SRC/scripts/deb/$script" "$root/DEBIAN/$script"
done
echo "/etc/meter-gateway/config.yaml" > "$root/DEBIAN/conffiles"
cat > "$root/DEBIAN/control" <<EOF
Package: $PACKAGE
Version: $VERSION
Architecture: $ARCH
Maintainer: meter-gateway maintainers <meter-gateway@localhost>
Installed-Size: $(du -sk --exclude=DEBIAN "$root" | cut -f1)
Depends: python$PYVER, passwd
Section: misc
Priority: optional
Description: energy-site gateway: meters to energy platforms, every sample kept
 Reads Modbus, D0, DSMR P1 and SML meters and the Coherent MTS and Locus Energy head-end
 systems, keeps every sample in a local SQLite queue and forwards it, in order and
 surviving days offline, to Wattics, EnerKey and MassCEC PTS. A systemd service configured
 by /etc/meter-gateway/config.yaml, with secrets in /etc/meter-gateway/credentials/.
EOF

mkdir -p "$OUT"
deb=$OUT/${PACKAGE}_${VERSION}_${ARCH}.deb
dpkg-deb --build --root-owner-group -Zxz "$root" "$deb" >/dev/null
echo "built $deb"
