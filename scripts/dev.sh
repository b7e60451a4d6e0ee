#!/bin/bash
# procmond's developer entry point: sets the machine up (idempotently) and runs things.
#
#   sudo ./scripts/dev.sh run [procmond run args]   daemon in the foreground, embedded defaults
#   sudo ./scripts/dev.sh test [pytest args]        the whole test suite, plus lint
#   sudo ./scripts/dev.sh setup [--test]            only the set-up
#   sudo ./scripts/dev.sh bench [--quick|--help]    the benchmark (benchmarks/), as root
#
# Set-up on Debian 12 and Ubuntu 22.04/24.04: BCC (python3-bpfcc), kernel headers for BCC to
# compile against, tracefs, and a venv at .venv made with the system Python and its site
# packages (bcc is not on PyPI) with procmond installed in it. Each step that takes time says
# so; steps already done are skipped (pip runs again only when pyproject.toml changes).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=$ROOT/.venv
STAMP=$VENV/.procmond-installed  # "<sha256 of pyproject.toml> <extras>" of the last pip install
RELEASE=$(uname -r)
export DEBIAN_FRONTEND=noninteractive

say() { echo "dev.sh: $*" >&2; }
die() { say "$*"; exit 1; }

[ "$(id -u)" = 0 ] || die "needs root (BPF and apt): run it with sudo"

apt_updated=""
apt_install() {  # install the packages that are not installed yet
    local missing=() pkg
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep "ok installed" >/dev/null || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    apt_update
    say "installing ${missing[*]}"
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

apt_update() {
    [ -z "$apt_updated" ] || return 0
    say "updating apt's package lists"
    apt-get update -qq
    apt_updated=1
}

has_candidate() {
    apt_update
    apt-cache policy "$1" 2>/dev/null | grep "Candidate: [0-9]" >/dev/null  # no -q: SIGPIPE + pipefail
}

setup_headers() {
    # BCC compiles against /lib/modules/$(uname -r)/build. The exact headers are best; else
    # the distribution's generic ones, linked there by the same script the package uses:
    # procmond reads the struct offsets it needs from BTF, so their layout need not match.
    local build=/lib/modules/$RELEASE/build arch pkg
    [ -e "$build/Makefile" ] && return 0
    arch=$(dpkg --print-architecture)
    for pkg in "linux-headers-$RELEASE" "linux-headers-cloud-$arch" "linux-headers-$arch" \
        linux-headers-generic; do
        if has_candidate "$pkg"; then apt_install "$pkg"; break; fi
    done
    "$ROOT/packaging/debian/link-kernel-headers"
}

setup_tracefs() {
    [ -d /sys/kernel/tracing/events ] && return 0
    [ -d /sys/kernel/debug/tracing/events ] && return 0
    say "mounting tracefs on /sys/kernel/tracing"
    mount -t tracefs nodev /sys/kernel/tracing
}

pyproject_hash() { sha256sum < "$ROOT/pyproject.toml" | cut -d' ' -f1; }

installed_from_here() {  # the venv's procmond is this tree's (editable), for these extras
    local extras=$1 stamped_hash stamped_extras
    [ -f "$STAMP" ] || return 1
    read -r stamped_hash stamped_extras < "$STAMP" || true
    [ "$stamped_hash" = "$(pyproject_hash)" ] || return 1
    [ -z "$extras" ] || [ "$stamped_extras" = "$extras" ] || return 1
    # -I and cd /: import it as the daemon would, not from the working directory
    [ "$(cd / && "$VENV/bin/python" -I -c 'import procmond; print(procmond.__file__)' 2>/dev/null)" \
        = "$ROOT/procmond/__init__.py" ]
}

setup_venv() {
    local extras=$1
    if [ ! -x "$VENV/bin/python" ]; then
        say "creating $VENV (system Python, with its site packages: bcc comes from apt)"
        /usr/bin/python3 -m venv --system-site-packages "$VENV"
    fi
    if installed_from_here "$extras"; then
        say "procmond$extras is installed in $VENV from this tree: skipping pip"
        return 0
    fi
    say "installing procmond$extras and its dependencies into $VENV with pip (editable)"
    rm -f "$STAMP"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e "$ROOT$extras"
    echo "$(pyproject_hash) $extras" > "$STAMP"
}

setup() {
    local tests=${1:-}
    apt_install python3-bpfcc python3-venv python3-pip python3-yaml python3-sdnotify python3-bcrypt
    if [ -n "$tests" ]; then
        # gcc builds the tests' process creator; prometheus brings promtool and the server
        # the rule and dashboard tests run; python3-prometheus-client (Debian's 0.16) is what
        # the .deb runs on in the systemd tests. Keep services from starting while installing.
        local policy=/usr/sbin/policy-rc.d added=""
        if [ ! -e $policy ]; then printf '#!/bin/sh\nexit 101\n' > $policy; chmod +x $policy; added=1; fi
        # perf checks that procmond's syscall probes leave the events to other perf users.
        local perf=linux-perf  # Debian; Ubuntu ships perf in linux-tools
        has_candidate linux-perf || perf=linux-tools-generic
        # man-db renders the manual page's test; tmux drives `procmond top` in a real terminal;
        # mmdebstrap makes the Debian 13 root that tests/e2e/test_debian13.py runs procmond in,
        # and the base of the container image that podman (with runc: crun refuses hybrid
        # cgroups) builds and runs as the DaemonSet does (tests/packaging/test_kubernetes_image.py);
        # docker.io, containerd and busybox-static run the containers tests/e2e/test_containers.py
        # names (images made from a local busybox root: no registry needed).
        apt_install gcc libc6-dev prometheus openssl python3-prometheus-client $perf man-db tmux \
            mmdebstrap debian-archive-keyring podman runc containerd docker.io busybox-static \
            || { [ -z "$added" ] || rm -f $policy; exit 1; }
        [ -z "$added" ] || rm -f $policy
        # The Kubernetes tests render the manifests with kustomize (`kubectl kustomize`, from
        # kubectl 1.21 on); Debian 12's kubectl is 1.20, too old: the machine must bring one.
        command -v kubectl >/dev/null ||
            say "no kubectl: tests/packaging/test_kubernetes.py needs kubectl 1.21 or later"
    fi
    setup_headers
    setup_tracefs
    setup_venv "${tests:+[test]}"
}

cmd=${1:-}
shift || true
case $cmd in
    setup) setup "${1:-}";;
    run)
        setup
        say "starting procmond run${*:+ $*}; Ctrl-C stops it"
        exec "$VENV/bin/procmond" run "$@";;
    test)
        setup --test
        cd "$ROOT"
        "$VENV/bin/ruff" check .
        "$VENV/bin/ruff" format --check .
        exec "$VENV/bin/python" -m pytest "$@";;
    bench)
        setup
        apt_install gcc libc6-dev  # builds the load generator
        cd "$ROOT"
        exec "$VENV/bin/python" -m benchmarks "$@";;
    *) die "usage: $0 run|test|bench|setup [--test]";;
esac
