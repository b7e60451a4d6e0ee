#!/bin/bash
# Build dist/procmond_<version>_all.deb from this tree with dpkg-deb (no debhelper needed).
# The package installs the Python package for the system python3 (which has BCC), the unit,
# /etc/procmond/config.yaml as a conffile, /usr/bin/procmond, the procmond(8) manual page, and
# the Prometheus rules and Grafana dashboard under /usr/share/procmond.
#
# The version and the maintainer come from packaging/debian/changelog, whose newest entry must
# be for procmond/__init__.py's __version__ (a new version needs a changelog entry).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
die() { echo "build-deb: $*" >&2; exit 1; }
UPSTREAM=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' procmond/__init__.py)
[ -n "$UPSTREAM" ] || die "no __version__ in procmond/__init__.py"
CHANGELOG=packaging/debian/changelog
VERSION=$(sed -n '1s/^procmond (\([^)]*\)) .*/\1/p' "$CHANGELOG")
MAINTAINER=$(sed -n 's/^ -- \(.*>\)  .*/\1/p' "$CHANGELOG" | head -n 1)
[ "${VERSION%-*}" = "$UPSTREAM" ] ||
    die "$CHANGELOG is at ${VERSION:-no version} but __version__ is $UPSTREAM: add an entry"
[ -n "$MAINTAINER" ] || die "no maintainer line (' -- Name <email>  date') in $CHANGELOG"
STAGE=$(mktemp -d)
trap 'rm -rf "$STAGE"' EXIT
PKG=$STAGE/procmond
PY=$PKG/usr/lib/python3/dist-packages/procmond
DOC=$PKG/usr/share/doc/procmond
SHARE=$PKG/usr/share/procmond

install -d "$PKG/DEBIAN" "$PKG/usr/bin" "$PY/bpf" "$PKG/lib/systemd/system" \
    "$PKG/etc/procmond" "$PKG/usr/lib/procmond" "$DOC" "$PKG/usr/share/man/man8" \
    "$SHARE/prometheus" "$SHARE/grafana"
install -m 0644 procmond/*.py "$PY/"
# every subpackage, one folder a stage (procmond/kernel/, procmond/naming/, ...)
for folder in procmond/*/; do
    sub=$(basename "$folder")
    [ -f "$folder/__init__.py" ] || continue
    install -d "$PY/$sub"
    install -m 0644 "$folder"*.py "$PY/$sub/"
done
install -m 0644 bpf/__init__.py bpf/*.c bpf/*.h "$PY/bpf/"
install -m 0644 packaging/systemd/procmond.service "$PKG/lib/systemd/system/"
install -m 0644 config/procmond.yaml "$PKG/etc/procmond/config.yaml"
install -m 0755 packaging/debian/link-kernel-headers "$PKG/usr/lib/procmond/"
install -m 0644 packaging/prometheus/procmond.rules.yml packaging/prometheus/README.md \
    "$SHARE/prometheus/"
install -m 0644 packaging/grafana/procmond.json "$SHARE/grafana/"
install -m 0644 README.md packaging/debian/copyright "$DOC/"
if [ -d docs ]; then install -d "$DOC/docs" && install -m 0644 docs/*.md "$DOC/docs/"; fi
gzip -9n < "$CHANGELOG" > "$DOC/changelog.Debian.gz"
gzip -9n < packaging/man/procmond.8 > "$PKG/usr/share/man/man8/procmond.8.gz"
chmod 0644 "$DOC/changelog.Debian.gz" "$PKG/usr/share/man/man8/procmond.8.gz"
cat > "$PKG/usr/bin/procmond" <<'PYEOF'
#!/usr/bin/python3
import sys

from procmond.__main__ import main

sys.exit(main())
PYEOF
chmod 0755 "$PKG/usr/bin/procmond"

install -m 0644 packaging/debian/conffiles "$PKG/DEBIAN/"
install -m 0755 packaging/debian/postinst packaging/debian/prerm packaging/debian/postrm \
    "$PKG/DEBIAN/"
(cd "$PKG" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z |
    xargs -0 md5sum) > "$PKG/DEBIAN/md5sums"
chmod 0644 "$PKG/DEBIAN/md5sums"
SIZE=$(du -sk --exclude=DEBIAN "$PKG" | cut -f1)
sed -e "s/@VERSION@/$VERSION/" -e "s/@SIZE@/$SIZE/" -e "s/@MAINTAINER@/$MAINTAINER/" \
    packaging/debian/control.in > "$PKG/DEBIAN/control"

mkdir -p dist
dpkg-deb --root-owner-group -Zxz --build "$PKG" "dist/procmond_${VERSION}_all.deb" >/dev/null
echo "dist/procmond_${VERSION}_all.deb"
