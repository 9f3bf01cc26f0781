#!/bin/sh
# Builds the guest agent as a static binary (the guest image has no C library of its own for it).
#   scripts/build-agent.sh            -> target/x86_64-unknown-linux-gnu/release/smolvm-agent
#   scripts/build-agent.sh --debug    -> target/x86_64-unknown-linux-gnu/debug/smolvm-agent
# The explicit --target matters: with it, RUSTFLAGS apply to the agent only and not to proc-macros and
# build scripts (which cannot be linked statically). No musl target is needed: glibc's static libc is
# enough for what the agent does (no NSS lookups).
set -eu
cd "$(dirname "$0")/.."
profile=--release
if [ "${1:-}" = "--debug" ]; then profile=; fi
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
    cargo build -p smolvm-agent $profile --target x86_64-unknown-linux-gnu
dir=release
[ -z "$profile" ] && dir=debug
bin="target/x86_64-unknown-linux-gnu/$dir/smolvm-agent"
if readelf -l "$bin" 2>/dev/null | grep -q 'Requesting program interpreter'; then
    echo "error: $bin is dynamically linked" >&2
    exit 1
fi
echo "$bin"
