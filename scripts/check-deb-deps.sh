#!/bin/bash
# Proves that a procmond .deb installs on each target distribution and architecture: that apt
# finds an installable alternative for every dependency (the kernel headers above all, whose
# package names differ between Debian, Ubuntu and architectures).
#
#   scripts/check-deb-deps.sh [DEB] [TARGET...]
#
# DEB defaults to the newest dist/procmond_*_all.deb. A TARGET is DISTRIBUTION:SUITE:ARCH,
# e.g. debian:bookworm:arm64 or ubuntu:noble:arm64; the default is Debian 12 and 13 on amd64
# and arm64. For each target it makes a private apt tree in a temporary folder (its own
# sources, package lists, cache and an empty dpkg status, with that architecture as apt's
# native one), fetches the target's lists into it with `apt-get update`, and runs
# `apt-get install --simulate ./DEB` there: a bare system of that kind installing procmond.
#
# The host's apt and dpkg state is never written: no `dpkg --add-architecture`, no change to
# /etc/apt or /var/lib/apt; the temporary folder goes at exit. Ubuntu targets need Ubuntu's
# archive keyring (/usr/share/keyrings/ubuntu-archive-keyring.gpg, package ubuntu-keyring) to
# verify its lists.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
die() { echo "check-deb-deps: $*" >&2; exit 2; }

if [ $# -gt 0 ] && [[ $1 == *.deb ]]; then DEB=$1; shift; else
    DEB=$(ls -t "$ROOT"/dist/procmond_*_all.deb 2>/dev/null | head -n 1) ||
        true
    [ -n "$DEB" ] || die "no dist/procmond_*_all.deb: run scripts/build-deb.sh first"
fi
[ -f "$DEB" ] || die "$DEB: no such file"
DEB=$(realpath "$DEB")
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] ||
    TARGETS=(debian:bookworm:amd64 debian:bookworm:arm64 debian:trixie:amd64 debian:trixie:arm64)

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
host_state() { dpkg --print-foreign-architectures | tr '\n' ' '; ls /etc/apt/sources.list.d; }
BEFORE=$(host_state)

source_line() {  # distribution suite arch -> one deb822 stanza for the private sources
    local distribution=$1 suite=$2 arch=$3 uri components keyring
    case $distribution in
        debian)
            uri=http://deb.debian.org/debian components=main
            keyring=/usr/share/keyrings/debian-archive-keyring.gpg;;
        ubuntu)
            components="main universe"
            keyring=/usr/share/keyrings/ubuntu-archive-keyring.gpg
            # amd64 lives on the main archive, every other architecture on ports
            if [ "$arch" = amd64 ]; then uri=http://archive.ubuntu.com/ubuntu; else
                uri=http://ports.ubuntu.com/ubuntu-ports; fi;;
        *) die "unknown distribution $distribution (debian or ubuntu)";;
    esac
    [ -r "$keyring" ] || die "$distribution needs $keyring to verify its lists"
    printf 'Types: deb\nURIs: %s\nSuites: %s\nComponents: %s\nArchitectures: %s\nSigned-By: %s\n' \
        "$uri" "$suite" "$components" "$arch" "$keyring"
}

check() {  # distribution:suite:arch -> 0 when procmond installs there
    local distribution suite arch tree out
    IFS=: read -r distribution suite arch <<< "$1"
    [ -n "$arch" ] || die "$1: a target is DISTRIBUTION:SUITE:ARCH"
    tree=$WORK/$distribution-$suite-$arch
    mkdir -p "$tree/sources.list.d" "$tree/preferences.d" "$tree/state/lists/partial" \
        "$tree/cache/archives/partial"
    source_line "$distribution" "$suite" "$arch" > "$tree/sources.list.d/target.sources"
    : > "$tree/status"
    local apt=(
        apt-get -q
        -o "Dir::Etc::SourceList=/dev/null" -o "Dir::Etc::SourceParts=$tree/sources.list.d"
        -o "Dir::Etc::Preferences=/dev/null" -o "Dir::Etc::PreferencesParts=$tree/preferences.d"
        -o "Dir::State=$tree/state" -o "Dir::State::status=$tree/status"
        -o "Dir::Cache=$tree/cache" -o "APT::Architecture=$arch"
        -o "APT::Architectures::=$arch" -o "Debug::NoLocking=true"
    )
    echo "== $distribution $suite $arch"
    if ! out=$("${apt[@]}" update 2>&1); then
        echo "$out" | grep -E '^(E|W):' >&2
        echo "$distribution $suite $arch: FAILED: apt-get update (see above)"
        return 1
    fi
    if ! out=$("${apt[@]}" install --simulate --no-install-recommends "$DEB" 2>&1); then
        echo "$out" | grep -vE '^(Reading|Building|Note, selecting)' | sed 's/^/  /'
        echo "$distribution $suite $arch: FAILED: procmond's dependencies do not resolve"
        return 1
    fi
    echo "$out" | grep -E '^Inst (procmond|linux-headers-[^ ]+|python3-(bpfcc|prometheus-client|sdnotify|yaml)) ' |
        sed 's/^/  /'
    echo "$distribution $suite $arch: OK, $(echo "$out" | grep -c '^Inst ') packages to install"
}

failed=0
for target in "${TARGETS[@]}"; do check "$target" || failed=1; done
[ "$(host_state)" = "$BEFORE" ] || { echo "check-deb-deps: the host's apt state changed" >&2; exit 2; }
echo "host apt state unchanged (foreign architectures: $(dpkg --print-foreign-architectures | tr '\n' ' ' | sed 's/ $//' | grep . || echo none))"
exit $failed
