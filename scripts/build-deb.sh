#!/bin/bash
# Build dist/procmond_<version>_all.deb from this tree with dpkg-deb (no debhelper needed).
# The package installs the Python package for the system python3 (which has BCC), the unit,
# /etc/procmond/config.yaml as a conffile, and /usr/bin/procmond.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
VERSION=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' procmond/__init__.py)
[ -n "$VERSION" ] || { echo "build-deb: no __version__ in procmond/__init__.py" >&2; exit 1; }
STAGE=$(mktemp -d)
trap 'rm -rf "$STAGE"' EXIT
PKG=$STAGE/procmond
PY=$PKG/usr/lib/python3/dist-packages/procmond

install -d "$PKG/DEBIAN" "$PKG/usr/bin" "$PY/bpf" "$PKG/lib/systemd/system" \
    "$PKG/etc/procmond" "$PKG/usr/lib/procmond" "$PKG/usr/share/doc/procmond"
install -m 0644 procmond/*.py "$PY/"
install -m 0644 bpf/__init__.py bpf/*.c bpf/*.h "$PY/bpf/"
install -m 0644 packaging/systemd/procmond.service "$PKG/lib/systemd/system/"
install -m 0644 config/procmond.yaml "$PKG/etc/procmond/config.yaml"
install -m 0755 packaging/debian/link-kernel-headers "$PKG/usr/lib/procmond/"
install -m 0644 README.md "$PKG/usr/share/doc/procmond/"
install -m 0644 packaging/debian/copyright "$PKG/usr/share/doc/procmond/"
cat > "$PKG/usr/bin/procmond" <<'PYEOF'
#!/usr/bin/python3
import sys

from procmond.cli import main

sys.exit(main())
PYEOF
chmod 0755 "$PKG/usr/bin/procmond"

install -m 0644 packaging/debian/conffiles "$PKG/DEBIAN/"
install -m 0755 packaging/debian/postinst packaging/debian/prerm packaging/debian/postrm \
    "$PKG/DEBIAN/"
SIZE=$(du -sk --exclude=DEBIAN "$PKG" | cut -f1)
sed -e "s/@VERSION@/$VERSION/" -e "s/@SIZE@/$SIZE/" packaging/debian/control.in \
    > "$PKG/DEBIAN/control"

mkdir -p dist
dpkg-deb --root-owner-group -Zxz --build "$PKG" "dist/procmond_${VERSION}_all.deb" >/dev/null
echo "dist/procmond_${VERSION}_all.deb"
