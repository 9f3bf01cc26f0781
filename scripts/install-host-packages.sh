#!/usr/bin/env bash
# Installs the Debian/Ubuntu packages smolvm and its tests use: QEMU, the image tools (mkfs.ext4/debugfs,
# busybox, dropbear, cpio, lz4), networking (nft, ip) and the SSH client.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"
$SUDO apt-get update
$SUDO apt-get install -y --no-install-recommends \
    qemu-system-x86 qemu-utils e2fsprogs nftables iproute2 openssh-client \
    busybox-static dropbear-bin iptables cpio lz4 zstd xz-utils binutils ca-certificates
