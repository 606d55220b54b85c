#!/usr/bin/env bash
# Prepares what tests/tests/systemd_boot.rs boots: systemd-nspawn, and a minimal Debian 12
# rootfs with systemd in it, cached outside the clone in a fixed folder, reused when present.
# Usage (root, Debian): tests/systemd-rootfs.sh [DIR]   DIR: /var/cache/blobsync-ci/bookworm
# About a minute and 200 MB the first time; nothing after.
set -euo pipefail
root=${1:-/var/cache/blobsync-ci/bookworm}
# No procps: the units must not need /bin/kill (a minimal system has none). sudo: the test
# runs the README's install steps as written.
packages=systemd,dbus,libpam-systemd,sudo

if ! command -v systemd-nspawn >/dev/null 2>&1 || ! command -v debootstrap >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends systemd-container debootstrap >/dev/null
fi

# The marker records what the rootfs was built with; a different list rebuilds it.
if [ "$(cat "$root/.blobsync-ci" 2>/dev/null)" = "bookworm minbase $packages" ]; then
    echo "rootfs $root: present, reused"
    exit 0
fi
# Built under a temp name and renamed when complete, so a killed run never leaves a half
# rootfs that the test (or the next run) would take for a whole one. Under the lock, any temp
# left by a killed run is garbage.
mkdir -p "$(dirname "$root")"
exec 9>"$root.lock"
flock 9
# debootstrap mounts /proc (and maybe /sys) inside: unmount before deleting, and never cross
# into another file system.
discard() {
    local d m
    for d in "$@"; do
        [ -e "$d" ] || continue
        for m in $(awk -v p="$d/" 'index($2, p) == 1 { print $2 }' /proc/mounts | sort -r); do
            umount -l "$m"
        done
        rm -rf --one-file-system "$d"
    done
}
discard "$root".tmp.*
tmp="$root.tmp.$$"
trap 'discard "$tmp"' EXIT
if ! debootstrap --variant=minbase --include="$packages" bookworm "$tmp" \
    http://deb.debian.org/debian >/dev/null; then
    tail -n 30 "$tmp/debootstrap/debootstrap.log" >&2 || true
    exit 1
fi
echo "bookworm minbase $packages" >"$tmp/.blobsync-ci"
discard "$root"
mv "$tmp" "$root"
trap - EXIT
echo "rootfs $root: built"
