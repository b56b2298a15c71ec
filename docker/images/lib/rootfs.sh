# Shared by the test image builders (docker/images/*/build.sh), sourced, not run: checks and the busybox
# rootfs that every image starts from, and the "already built from these inputs" test. Callers define say().

LABEL_KEY='org.swarmd.test.inputs'
ROOTFS_LIB="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")"

# The image has no libc of its own: busybox must be the static build (Debian's busybox-static).
require_static_busybox() {
  local busybox="$1"
  if [[ ! -x "$busybox" ]]; then
    say "no $busybox; install Debian's busybox-static (apt-get install -y busybox-static)"
    exit 1
  fi
  if command -v ldd >/dev/null 2>&1 && ldd "$busybox" 2>&1 | grep -q '=>'; then
    say "$busybox is dynamically linked; the image needs a static one (Debian's busybox-static)"
    exit 1
  fi
}

# Exits 0 (the whole script) when IMAGE was built from INPUTS already, unless FORCE=1.
exit_if_current() {
  local image="$1" inputs="$2" existing
  [[ "${FORCE:-0}" != 1 ]] || return 0
  existing="$(docker image inspect --format "{{ index .Config.Labels \"$LABEL_KEY\" }}" "$image" 2>/dev/null || true)"
  if [[ "$existing" == "$inputs" ]]; then
    say "$image is up to date ($inputs)"
    exit 0
  fi
}

# ROOT gets the usual directories, /bin/busybox with its applet links, root and nobody in /etc/passwd and
# /etc/group, and /tmp 1777.
busybox_rootfs() {
  local root="$1" busybox="$2"
  mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,usr/local/bin,etc,root,tmp,proc,sys,dev,home,var/tmp}
  install -m 0755 "$busybox" "$root/bin/busybox"
  if [[ "$(id -u)" == 0 ]]; then
    # Inside the rootfs, so that every link points at /bin/busybox and lands in the applet's usual directory.
    chroot "$root" /bin/busybox --install -s
  else
    # Without root there is no chroot: make the same links from busybox's own list of applet paths.
    while read -r applet; do
      [[ -e "$root/$applet" || -L "$root/$applet" ]] || ln -s /bin/busybox "$root/$applet"
    done < <("$busybox" --list-full)
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
}
