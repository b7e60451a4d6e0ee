#!/bin/bash
# Prints the path of a Debian 13 (trixie) root holding what a Debian 13 host installs for
# procmond: its dependencies from trixie and the distribution's kernel headers (the running
# kernel's own are not in trixie). Made with mmdebstrap the first time (~40 s here, mostly
# downloads), then cached: the cache's name carries a hash of this script, so a changed
# recipe makes a new root and the old one is removed; a root older than 30 days is made anew
# (trixie's point releases).
#
# PROCMOND_TEST_CACHE (default /var/cache/procmond-tests) and PROCMOND_DEBIAN_MIRROR change
# where it is kept and where packages come from.
set -euo pipefail
CACHE=${PROCMOND_TEST_CACHE:-/var/cache/procmond-tests}
MIRROR=${PROCMOND_DEBIAN_MIRROR:-http://deb.debian.org/debian}
arch=$(dpkg --print-architecture)
packages=python3-bpfcc,python3-prometheus-client,python3-yaml,python3-sdnotify
packages+=,linux-headers-cloud-$arch
root=$CACHE/trixie-$arch-$(sha256sum < "${BASH_SOURCE[0]}" | cut -c1-12)

mkdir -p "$CACHE"
exec 9> "$CACHE/.lock"
flock 9  # one build at a time; a second caller waits and then finds it made
if [ -z "$(find "$root/.complete" -mtime -30 2>/dev/null)" ]; then
    rm -rf "$CACHE"/trixie-*
    echo "debian13-root: making $root with mmdebstrap (cached for later runs)" >&2
    # quiet unless it fails: its log goes to stderr only then
    log=$CACHE/mmdebstrap.log
    # Debian's keyring named, not the host's apt keys: on Ubuntu those are Ubuntu's
    if ! mmdebstrap --variant=minbase --include="$packages" \
        --keyring=/usr/share/keyrings/debian-archive-keyring.gpg \
        --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
        --dpkgopt='path-exclude=/usr/share/locale/*' \
        trixie "$root.new" "$MIRROR" > "$log" 2>&1; then
        cat "$log" >&2
        rm -rf "$root.new"
        exit 1
    fi
    touch "$root.new/.complete"
    mv "$root.new" "$root"
fi
echo "$root"
