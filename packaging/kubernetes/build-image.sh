#!/bin/bash
# Build procmond's container image: the .deb first (scripts/build-deb.sh), then `docker build`
# on a context holding only the Dockerfile, the .deb and the entrypoint.
#
#   packaging/kubernetes/build-image.sh [IMAGE]       default IMAGE: procmond:<version>
#   packaging/kubernetes/build-image.sh --context DIR  only lay out the context in DIR
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
VERSION=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$ROOT/procmond/__init__.py")

stage() {
    local context=$1 deb
    deb=$("$ROOT/scripts/build-deb.sh")
    mkdir -p "$context"
    cp "$ROOT/$deb" "$context/procmond.deb"
    cp "$HERE/Dockerfile" "$HERE/entrypoint.sh" "$context/"
}

if [ "${1:-}" = --context ]; then
    [ -n "${2:-}" ] || { echo "build-image: --context needs a folder" >&2; exit 2; }
    stage "$2"
    exit 0
fi
CONTEXT=$(mktemp -d)
trap 'rm -rf "$CONTEXT"' EXIT
stage "$CONTEXT"
docker build -t "${1:-procmond:$VERSION}" "$CONTEXT"
