#!/usr/bin/env bash
# scripts/proftpd-prepare.sh — ProFTPD (with mod_tls) from Debian's packages, unpacked, not installed.
#
#   scripts/proftpd-prepare.sh        make sure the unpacked tree is there; print its root on stdout
#
# Debian's proftpd-basic conflicts with vsftpd as packages (installing one removes the other), and
# the test suite and the local stack run both. So the packages and the libraries they need that the
# machine lacks are fetched with `apt-get download` and unpacked with `dpkg -x` into a cache folder
# that outlives the clone (repeated runs on one machine download nothing):
#
#   ${UI_PROFTPD_CACHE:-/var/cache/user-import-stack/proftpd}/root/usr/sbin/proftpd
#   …/root/usr/lib/proftpd/mod_tls.so                       (ModulePath)
#   …/root/usr/lib/x86_64-linux-gnu                         (LD_LIBRARY_PATH for the binary)
#
# Run the server with LD_LIBRARY_PATH set to that library folder (scripts/stack.sh and the test
# harness do). A cold run needs root and the network (apt-get); a warm one needs neither.
set -euo pipefail

CACHE=${UI_PROFTPD_CACHE:-/var/cache/user-import-stack/proftpd}
ROOTFS="$CACHE/root"
# The server, its TLS module, and the libraries proftpd-core links that Debian 12 does not install
# with vsftpd (found with ldd; the check below fails loudly if the list ever falls short).
PACKAGES=(proftpd-basic proftpd-core proftpd-mod-crypto
  libhiredis0.14 libmemcached11 libmemcachedutil2 libhashkit2 libpcre2-posix3)

log() { printf 'proftpd-prepare: %s\n' "$*" >&2; }
die() {
  printf 'proftpd-prepare: error: %s\n' "$*" >&2
  exit 1
}

libdir() {
  local arch
  arch=$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || echo x86_64-linux-gnu)
  printf '%s' "$ROOTFS/usr/lib/$arch"
}

# The unpacked server starts (`-V` loads every linked library) and mod_tls links completely.
usable() {
  [[ -x $ROOTFS/usr/sbin/proftpd && -f $ROOTFS/usr/lib/proftpd/mod_tls.so ]] || return 1
  LD_LIBRARY_PATH=$(libdir) "$ROOTFS/usr/sbin/proftpd" -V >/dev/null 2>&1 || return 1
  ! LD_LIBRARY_PATH=$(libdir) ldd "$ROOTFS/usr/sbin/proftpd" "$ROOTFS/usr/lib/proftpd/mod_tls.so" |
    grep -q 'not found'
}

if usable; then
  printf '%s\n' "$ROOTFS"
  exit 0
fi

[[ $EUID -eq 0 ]] || die "the ProFTPD tree at $ROOTFS is missing; run as root once to fetch it"
command -v apt-get >/dev/null || die "apt-get not found (a Debian machine is needed)"
log "fetching ${PACKAGES[*]} into $CACHE"
debs="$CACHE/debs"
mkdir -p "$debs"
# apt-get download writes as the _apt user when it can: give it the folder.
chown _apt "$debs" 2>/dev/null || true
if ! (cd "$debs" && apt-get download "${PACKAGES[@]}" >&2); then
  log "download failed; refreshing the package lists and trying once more"
  apt-get update -qq >&2
  (cd "$debs" && apt-get download "${PACKAGES[@]}" >&2) || die "apt-get download failed"
fi
# Unpack into a fresh folder, then swap it in: a half-unpacked tree is never taken as usable.
staging="$CACHE/root.new"
rm -rf "$staging"
mkdir -p "$staging"
for pkg in "${PACKAGES[@]}"; do
  deb=$(find "$debs" -maxdepth 1 -name "${pkg}_*.deb" | sort | tail -n 1)
  [[ -n $deb ]] || die "no .deb for $pkg in $debs"
  dpkg -x "$deb" "$staging"
done
rm -rf "$ROOTFS"
mv "$staging" "$ROOTFS"
if ! usable; then
  LD_LIBRARY_PATH=$(libdir) ldd "$ROOTFS/usr/sbin/proftpd" "$ROOTFS/usr/lib/proftpd/mod_tls.so" |
    grep 'not found' >&2 || true
  die "the unpacked ProFTPD does not start (missing libraries above?)"
fi
log "ready: $ROOTFS"
printf '%s\n' "$ROOTFS"
