#!/usr/bin/env bash
# Installs the Debian/Ubuntu packages smolvm and its tests use: one consistent QEMU (system emulator and
# utilities of the same version), the image tools (mkfs.ext4/debugfs, busybox, dropbear, cpio, lz4), networking
# (nft, ip), the SSH client, Python's venv for the Python package, and the kernel build tools for the
# minimal guest kernel, mmdebstrap/skopeo/umoci for Debian and OCI images, and a registry for the tests.
#
# Unattended and idempotent. Supported: Debian 12 (as shipped, or with newer backports QEMU pieces already
# installed), Debian 13, Ubuntu 22.04 and 24.04. On Debian 12 it prefers QEMU from bookworm-backports (10.x):
# snapshots (mapped-ram migration) and newer microvm fixes need QEMU >= 9. A backports entry goes in its own
# file, /etc/apt/sources.list.d/smolvm-backports.sources; the distribution's own sources are never edited.
#
#   SMOLVM_NO_BACKPORTS=1   on Debian 12, stay on bookworm's QEMU 7.2 (downgrading newer pieces if needed)
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"
APT=($SUDO apt-get -y -q -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold)

say() { printf 'install-host-packages: %s\n' "$*" >&2; }

# The tools besides QEMU, from the distribution's default suite.
TOOLS=(e2fsprogs nftables iproute2 openssh-client busybox-static dropbear-bin iptables cpio lz4 zstd
    xz-utils binutils ca-certificates util-linux procps openssl python3-venv
    make gcc flex bison bc libelf-dev  # `smolvm image build --kernel minimal`
    mmdebstrap skopeo umoci            # Debian and OCI images
    docker-registry)                   # the tests' loopback registry for `smolvm image pull`
# QEMU, installed as one set so every piece comes from the same version.
QEMU=(qemu-system-x86 qemu-utils)

. /etc/os-release
say "host: ${PRETTY_NAME:-unknown}"
codename="${VERSION_CODENAME:-}"

# Debian 12: add bookworm-backports (in its own file) unless some source already provides it.
backports=""
if [ "${ID:-}" = debian ] && [ "$codename" = bookworm ] && [ "${SMOLVM_NO_BACKPORTS:-0}" != 1 ]; then
    if ! grep -rqsE '(^|\s)bookworm-backports(\s|$)' /etc/apt/sources.list /etc/apt/sources.list.d/; then
        # The mirror the machine already uses for bookworm (deb822 or one-line format), else Debian's.
        uris=$(grep -rhsE '^URIs:\s*\S+/debian/?$' /etc/apt/sources.list.d/ || true)
        mirror=$(awk 'NR == 1 {print $2}' <<<"$uris")
        lines=$(grep -hsE '^deb\s+\S+/debian/?\s+bookworm\s' /etc/apt/sources.list || true)
        [ -n "$mirror" ] || mirror=$(awk 'NR == 1 {print $2}' <<<"$lines")
        [ -n "$mirror" ] || mirror=http://deb.debian.org/debian
        say "adding bookworm-backports from $mirror in /etc/apt/sources.list.d/smolvm-backports.sources"
        printf 'Types: deb\nURIs: %s\nSuites: bookworm-backports\nComponents: main\nSigned-By: %s\n' \
            "$mirror" /usr/share/keyrings/debian-archive-keyring.gpg |
            $SUDO tee /etc/apt/sources.list.d/smolvm-backports.sources >/dev/null
    fi
    backports=bookworm-backports
fi

$SUDO apt-get update -q
"${APT[@]}" install --no-install-recommends "${TOOLS[@]}"

# Which suite QEMU comes from: backports when it has qemu-system-x86 there, else the default suite.
suite=""
# (Outputs are read whole before filtering: with pipefail, a reader that stops early, like `grep -q`,
# would make the writer die of SIGPIPE and the pipeline fail at random.)
versions=$(apt-cache madison qemu-system-x86)
if [ -n "$backports" ] && grep -q "$backports" <<<"$versions"; then
    suite=$backports
elif [ -n "$backports" ]; then
    say "bookworm-backports has no qemu-system-x86 on this mirror: using bookworm's QEMU"
fi

if [ -n "$suite" ]; then
    "${APT[@]}" install --no-install-recommends -t "$suite" "${QEMU[@]}"
else
    # Every QEMU piece at the newest version outside backports: the emulator, the utilities and any
    # qemu-* package already installed newer by someone else (today's machine images carry backports'
    # qemu-utils). apt's own candidate would keep an installed newer version, hence explicit versions.
    newest() {
        local all
        all=$(apt-cache madison "$1")
        awk -F'|' '$3 !~ /backports/ {gsub(/ /, "", $2); print $2; exit}' <<<"$all"
    }
    pins=()
    for p in "${QEMU[@]}" $(dpkg-query -W -f '${Package} ${Status}\n' 'qemu-*' 2>/dev/null |
        awk '/ installed$/ {print $1}'); do
        v=$(newest "$p")
        [ -n "$v" ] && pins+=("$p=$v")
    done
    if [ -z "$(newest qemu-system-x86)" ]; then
        say "no installable qemu-system-x86 in this machine's package sources"
        exit 1
    fi
    "${APT[@]}" install --no-install-recommends --allow-downgrades $(printf '%s\n' "${pins[@]}" | sort -u)
fi

# Report what is installed, and from where.
for p in "${QEMU[@]}" qemu-system-common; do
    v=$(dpkg-query -W -f '${Version}' "$p" 2>/dev/null) || continue
    policy=$(apt-cache policy "$p")
    from=$(awk -v v="$v" '
        $1 == "***" && $2 == v {mine=1; next}
        mine && /^ +[0-9]+ / {print $2, $3; exit}
        /^ +(\*\*\* )?[0-9:]/ {mine=0}' <<<"$policy")
    say "$p $v (${from:-local})"
done
qemu_version=$(qemu-system-x86_64 --version)
echo "${qemu_version%%$'\n'*}" >&2
