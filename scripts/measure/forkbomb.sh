#!/bin/bash
# A real fork bomb, contained: a copy of bash named `forkbomb` runs `b(){ b|b& }; b` in a
# cgroup (v1 or v2 pids controller) with pids.max PIDS_MAX (default 200) for SECONDS (default
# 10), then every process in the cgroup is killed and the cgroup removed. Root only.
#
#   scripts/measure/forkbomb.sh [SECONDS] [PIDS_MAX]
set -euo pipefail
seconds=${1:-10} pids_max=${2:-200}
name=forkbomb-$$
if [ -e /sys/fs/cgroup/pids/cgroup.procs ]; then
    cg=/sys/fs/cgroup/pids/$name                                  # v1 pids hierarchy
else
    base=$(awk '$3 == "cgroup2" { print $2; exit }' /proc/mounts)  # v2
    grep -qw pids "$base/cgroup.subtree_control" || echo +pids > "$base/cgroup.subtree_control"
    cg=$base/$name
fi
mkdir "$cg"
tmp=$(mktemp -d)
cleanup() {
    # SIGKILL everything in the cgroup until it is empty (a dying bomb may still fork once).
    for _ in $(seq 200); do
        pids=$(cat "$cg/cgroup.procs")
        [ -z "$pids" ] && break
        kill -9 $pids 2>/dev/null || true
        sleep 0.05
    done
    rmdir "$cg"
    rm -rf "$tmp"
}
trap cleanup EXIT
echo "$pids_max" > "$cg/pids.max"
cp /bin/bash "$tmp/forkbomb"
# The bomb's shell joins the cgroup before it starts forking, and does not start unless it
# did; its stderr (fork: retry: ...) is dropped.
"$tmp/forkbomb" -c "echo \$\$ > $cg/cgroup.procs || exit 1; b(){ b|b& }; b" 2>/dev/null &
sleep "$seconds"
echo "forkbomb: pids.max $pids_max, peak $(cat "$cg/pids.current" 2>/dev/null || echo ?) now," \
    "$(cat "$cg/pids.events" 2>/dev/null | tr '\n' ' ')"
