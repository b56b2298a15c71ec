#!/usr/bin/env bash
# Builds the test image swarmd-test/busybox:latest from Debian's busybox-static, with no registry access:
# a tiny rootfs (one static /bin/busybox plus its applet symlinks, root and nobody in /etc/passwd and
# /etc/group, /tmp 1777) that is `docker import`ed.
#
# The engine is the one the docker CLI finds: DOCKER_HOST from the environment, else its default socket.
# Idempotent: the image carries a label with a hash of its inputs (this script and the busybox binary); when
# an image with the same hash is already there, nothing is done. FORCE=1 rebuilds anyway.
#
# Usage: [DOCKER_HOST=unix:///path/docker.sock] [BUSYBOX=/bin/busybox] docker/images/busybox/build.sh
set -euo pipefail

IMAGE="${IMAGE:-swarmd-test/busybox:latest}"
BUSYBOX="${BUSYBOX:-/bin/busybox}"
LABEL_KEY='org.swarmd.test.inputs'

say() { printf 'busybox-image: %s\n' "$*" >&2; }

if [[ ! -x "$BUSYBOX" ]]; then
  say "no $BUSYBOX; install Debian's busybox-static (apt-get install -y busybox-static)"
  exit 1
fi
# The image has no libc: a dynamically linked busybox would not run in it.
if command -v ldd >/dev/null 2>&1 && ldd "$BUSYBOX" 2>&1 | grep -q '=>'; then
  say "$BUSYBOX is dynamically linked; the image needs a static one (Debian's busybox-static)"
  exit 1
fi

self="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")"
inputs="$(cat "$self" "$BUSYBOX" | sha256sum | cut -d' ' -f1)"

if [[ "${FORCE:-0}" != 1 ]]; then
  existing="$(docker image inspect --format "{{ index .Config.Labels \"$LABEL_KEY\" }}" "$IMAGE" 2>/dev/null || true)"
  if [[ "$existing" == "$inputs" ]]; then
    say "$IMAGE is up to date ($inputs)"
    exit 0
  fi
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/swarmd-busybox.XXXXXX")"
trap 'rm -rf "$work"' EXIT
root="$work/rootfs"

mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,etc,root,tmp,proc,sys,dev,home,var/tmp}
install -m 0755 "$BUSYBOX" "$root/bin/busybox"
if [[ "$(id -u)" == 0 ]]; then
  # Inside the rootfs, so that every link points at /bin/busybox and lands in the applet's usual directory.
  chroot "$root" /bin/busybox --install -s
else
  # Without root there is no chroot: make the same links from busybox's own list of applet paths.
  while read -r applet; do
    [[ -e "$root/$applet" || -L "$root/$applet" ]] || ln -s /bin/busybox "$root/$applet"
  done < <("$BUSYBOX" --list-full)
fi

cat >"$root/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
PASSWD
cat >"$root/etc/group" <<'GROUP'
root:x:0:
nogroup:x:65534:
GROUP
chmod 0644 "$root/etc/passwd" "$root/etc/group"
chmod 0700 "$root/root"
chmod 1777 "$root/tmp" "$root/var/tmp"

# Everything in the image belongs to root, whoever runs this script.
tar --numeric-owner --owner=0 --group=0 -C "$root" -cf - . |
  docker import \
    --change 'CMD ["/bin/sh"]' \
    --change "LABEL $LABEL_KEY=$inputs" \
    --message "swarmd test image from $("$BUSYBOX" 2>&1 | head -n1 || true)" \
    - "$IMAGE" >/dev/null
say "built $IMAGE ($inputs)"
