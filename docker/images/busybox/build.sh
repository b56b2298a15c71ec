#!/usr/bin/env bash
# Builds the test image swarmd-test/busybox:latest from Debian's busybox-static, with no registry access:
# a tiny rootfs (one static /bin/busybox plus its applet symlinks, root and nobody in /etc/passwd and
# /etc/group, /tmp 1777) that is `docker import`ed.
#
# The engine is the one the docker CLI finds: DOCKER_HOST from the environment, else its default socket.
# Idempotent: the image carries a label with a hash of its inputs (these scripts and the busybox binary); when
# an image with the same hash is already there, nothing is done. FORCE=1 rebuilds anyway.
#
# Usage: [DOCKER_HOST=unix:///path/docker.sock] [BUSYBOX=/bin/busybox] docker/images/busybox/build.sh
set -euo pipefail

IMAGE="${IMAGE:-swarmd-test/busybox:latest}"
BUSYBOX="${BUSYBOX:-/bin/busybox}"

say() { printf 'busybox-image: %s\n' "$*" >&2; }

# shellcheck source=../lib/rootfs.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/rootfs.sh"
require_static_busybox "$BUSYBOX"

self="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")"
inputs="$(cat "$self" "$ROOTFS_LIB" "$BUSYBOX" | sha256sum | cut -d' ' -f1)"
exit_if_current "$IMAGE" "$inputs"

work="$(mktemp -d "${TMPDIR:-/tmp}/swarmd-busybox.XXXXXX")"
trap 'rm -rf "$work"' EXIT
root="$work/rootfs"
busybox_rootfs "$root" "$BUSYBOX"

# Everything in the image belongs to root, whoever runs this script.
tar --numeric-owner --owner=0 --group=0 -C "$root" -cf - . |
  docker import \
    --change 'CMD ["/bin/sh"]' \
    --change "LABEL $LABEL_KEY=$inputs" \
    --message "swarmd test image from $("$BUSYBOX" 2>&1 | head -n1 || true)" \
    - "$IMAGE" >/dev/null
say "built $IMAGE ($inputs)"
