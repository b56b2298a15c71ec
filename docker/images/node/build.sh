#!/usr/bin/env bash
# Builds the test image swarmd-test/node:latest, a stand-in for node:24-bookworm-slim as the NODE_IMAGE of
# docker/Dockerfile, with no registry access: this machine's Node binary at /usr/local/bin/node with the shared
# libraries `ldd` lists for it (at the same paths), plus Debian's busybox-static for /bin/sh, /usr/bin/env and
# the few tools docker/compose-join.sh uses (sleep, cat, mv). The rootfs is `docker import`ed.
#
# The engine is the one the docker CLI finds: DOCKER_HOST from the environment, else its default socket.
# Idempotent: the image carries a label with a hash of its inputs (this script, the node binary, its libraries
# and busybox); when an image with the same hash is already there, nothing is done. FORCE=1 rebuilds anyway.
#
# Usage: [DOCKER_HOST=unix:///path/docker.sock] [NODE=/path/to/node] [BUSYBOX=/bin/busybox] [IMAGE=name:tag] \
#          docker/images/node/build.sh
set -euo pipefail

IMAGE="${IMAGE:-swarmd-test/node:latest}"
NODE="${NODE:-$(command -v node || true)}"
BUSYBOX="${BUSYBOX:-/bin/busybox}"

say() { printf 'node-image: %s\n' "$*" >&2; }

if [[ -z "$NODE" || ! -x "$NODE" ]]; then
  say "no node binary (NODE=${NODE:-unset}); set NODE=/path/to/node"
  exit 1
fi
NODE="$(readlink -f "$NODE")"
major="$("$NODE" -p 'process.versions.node.split(".")[0]')"
if ((major < 22)); then
  say "$NODE is Node $("$NODE" --version); swarmd needs Node >= 22"
  exit 1
fi
# shellcheck source=../lib/rootfs.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/rootfs.sh"
require_static_busybox "$BUSYBOX"

# The libraries node loads, by the paths the dynamic loader will look for them at: `libc.so.6 => /lib/...`
# lines, and the loader itself (`/lib64/ld-linux-x86-64.so.2 (0x...)`).
mapfile -t libs < <(ldd "$NODE" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' | sort -u)
if ((${#libs[@]} == 0)); then
  say "ldd lists no libraries for $NODE (a static build?); nothing to copy beside it"
fi

self="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")"
inputs="$(cat "$self" "$ROOTFS_LIB" "$NODE" "$BUSYBOX" "${libs[@]}" | sha256sum | cut -d' ' -f1)"

exit_if_current "$IMAGE" "$inputs"

work="$(mktemp -d "${TMPDIR:-/tmp}/swarmd-node-image.XXXXXX")"
trap 'rm -rf "$work"' EXIT
root="$work/rootfs"

busybox_rootfs "$root" "$BUSYBOX"
install -m 0755 "$NODE" "$root/usr/local/bin/node"
for lib in "${libs[@]}"; do
  mkdir -p "$root$(dirname "$lib")"
  cp -L "$lib" "$root$lib" # the file itself, not the host's symlink
done

tar --numeric-owner --owner=0 --group=0 -C "$root" -cf - . |
  docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["node"]' \
    --change "LABEL $LABEL_KEY=$inputs" \
    --message "swarmd test image: Node $("$NODE" --version) from $NODE, busybox" \
    - "$IMAGE" >/dev/null
say "built $IMAGE (Node $("$NODE" --version), $inputs)"
