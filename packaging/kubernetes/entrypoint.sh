#!/bin/sh
# The image's entrypoint: point BCC at kernel headers, then run procmond with the arguments.
#
# BCC compiles the probe against /lib/modules/$(uname -r)/build. In the pod that folder is
# empty and writable; the node's /lib/modules and /usr/src are mounted read-only under /host.
# When the node has headers for its kernel, link them (a link on the node is absolute, so it
# is followed under /host); otherwise link the image's own Debian headers, as the .deb's
# link-kernel-headers does on a host: procmond reads the struct offsets it needs from the
# kernel's BTF, so headers of another version compile a correct probe.
#
# PROCMOND_HOST_ROOT, PROCMOND_MODULES_DIR, PROCMOND_KERNEL_RELEASE, PROCMOND_LINK_HEADERS and
# PROCMOND_BIN change the paths and commands, for tests.
set -eu
host=${PROCMOND_HOST_ROOT:-/host}
modules=${PROCMOND_MODULES_DIR:-/lib/modules}
release=${PROCMOND_KERNEL_RELEASE:-$(uname -r)}

# A folder of the node's /lib/modules/$release, as a path inside this container.
on_host() {
    entry=$host/lib/modules/$release/$1
    target=$(readlink "$entry" 2>/dev/null || true)
    case $target in
        /*) echo "$host$target" ;;  # absolute on the node: follow it under $host
        *) echo "$entry" ;;         # a relative link or a real folder resolves as it is
    esac
}

build=$(on_host build)
if [ -e "$build/Makefile" ]; then
    source=$(on_host source)
    [ -e "$source" ] || source=$build
    mkdir -p "$modules/$release"
    ln -sfn "$build" "$modules/$release/build"
    ln -sfn "$source" "$modules/$release/source"
    echo "procmond: compiling against the node's kernel headers ($build)" >&2
else
    echo "procmond: the node has no headers for $release; using the image's" >&2
    ${PROCMOND_LINK_HEADERS:-/usr/lib/procmond/link-kernel-headers}
fi
exec ${PROCMOND_BIN:-/usr/bin/procmond} "$@"
