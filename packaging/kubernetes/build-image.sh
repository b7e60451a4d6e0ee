#!/bin/bash
# Build procmond's container image: the .deb first (scripts/build-deb.sh), then the image from a
# context holding only the Dockerfile, the .deb and the entrypoint.
#
#   packaging/kubernetes/build-image.sh [OPTIONS] [IMAGE] [-- BUILD-ARGS...]
#   packaging/kubernetes/build-image.sh --context DIR   only lay out the context in DIR
#
#   IMAGE            default procmond:<version>
#   --engine E       docker or podman (default: docker if it is installed, else podman)
#   --platform LIST  e.g. linux/amd64,linux/arm64: one image per platform under one manifest
#                    list (docker buildx, or podman's --manifest). A platform other than the
#                    machine's own runs the Dockerfile's apt-get under emulation: the machine
#                    needs binfmt_misc handlers for it (qemu-user-static), and the base image
#                    for that platform.
#   --push           push IMAGE once built (docker buildx keeps a multi-platform build in its
#                    cache unless it is pushed or the engine's image store holds such images)
#   --dry-run        print the commands instead of running them (the .deb is not built)
#   BUILD-ARGS       handed to the engine's build command as they are (e.g. --network host)
#
# The .deb, and so the image's layers, are reproducible: SOURCE_DATE_EPOCH defaults to the
# time of the checkout's last commit, so the same tree rebuilds from the engine's cache.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
VERSION=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$ROOT/procmond/__init__.py")

die() { echo "build-image: $*" >&2; exit 2; }

stage() {
    local context=$1 deb
    if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
        SOURCE_DATE_EPOCH=$(git -C "$ROOT" log -1 --format=%ct 2>/dev/null || date +%s)
        export SOURCE_DATE_EPOCH
    fi
    deb=$("$ROOT/scripts/build-deb.sh")
    mkdir -p "$context"
    cp "$ROOT/$deb" "$context/procmond.deb"
    cp "$HERE/Dockerfile" "$HERE/entrypoint.sh" "$context/"
}

if [ "${1:-}" = --context ]; then
    [ -n "${2:-}" ] || die "--context needs a folder"
    stage "$2"
    exit 0
fi

engine="" platform="" push="" dry_run="" image=""
while [ $# -gt 0 ]; do
    case $1 in
        --engine) [ -n "${2:-}" ] || die "--engine needs docker or podman"; engine=$2; shift 2;;
        --platform) [ -n "${2:-}" ] || die "--platform needs a list"; platform=$2; shift 2;;
        --push) push=1; shift;;
        --dry-run) dry_run=1; shift;;
        --) shift; break;;
        -*) die "unknown option $1 (see the comment at the top of $0)";;
        *) [ -z "$image" ] || die "one image name, not '$image' and '$1'"; image=$1; shift;;
    esac
done
image=${image:-procmond:$VERSION}
if [ -z "$engine" ]; then
    if command -v docker >/dev/null; then engine=docker; else engine=podman; fi
fi
case $engine in docker|podman) ;; *) die "--engine must be docker or podman, not '$engine'";; esac

quote() {  # the command as one line a shell reads back the same
    local arg out=()
    for arg in "$@"; do
        if [[ $arg =~ ^[A-Za-z0-9_./:,=@+-]+$ ]]; then out+=("$arg"); else out+=("$(printf '%q' "$arg")"); fi
    done
    echo "${out[*]}"
}
run() {  # run a command, or print it (--dry-run)
    if [ -n "$dry_run" ]; then quote "$@"; else "$@"; fi
}
maybe() {  # the same, for a step whose failure is fine
    if [ -n "$dry_run" ]; then echo "$(quote "$@") || true"; else "$@" >/dev/null 2>&1 || true; fi
}

if [ -n "$dry_run" ]; then
    CONTEXT=CONTEXT
    echo "scripts/build-deb.sh, then its .deb, Dockerfile and entrypoint.sh into CONTEXT"
else
    CONTEXT=$(mktemp -d)
    trap 'rm -rf "$CONTEXT"' EXIT
    stage "$CONTEXT"
fi
if [ -z "$platform" ]; then
    run "$engine" build -t "$image" "$@" "$CONTEXT"
    [ -z "$push" ] || run "$engine" push "$image"
elif [ "$engine" = docker ]; then
    run docker buildx build --platform "$platform" -t "$image" ${push:+--push} "$@" "$CONTEXT"
else
    maybe podman manifest rm "$image"  # --manifest adds to an existing list: start anew
    run podman build --platform "$platform" --manifest "$image" "$@" "$CONTEXT"
    [ -z "$push" ] || run podman manifest push --all "$image" "docker://$image"
fi
[ -n "$dry_run" ] || echo "build-image: built $image; deploy it with" \
    "\`kustomize edit set image procmond=$image\` in your overlay (packaging/kubernetes/README.md)" >&2
