#!/usr/bin/env bash
# The whole test suite: every test of the workspace, then the Python package built into a fresh
# virtualenv with its pytest suite. With SMOLVM_E2E=1 the tests that boot real VMs must run (a missing
# prerequisite fails them); without it they skip and say why.
set -euo pipefail
cd "$(dirname "$0")/.."
threads="${SMOLVM_TEST_THREADS:-4}"
if [ "${SMOLVM_E2E:-}" = 1 ]; then
    # The minimal-kernel test compiles a kernel on every core for minutes (once per machine: cached
    # under target/tmp): run it alone first, so the compile does not slow down VM boots of other tests.
    cargo test -p smolvm --test minimal_kernel_e2e
fi
cargo test --workspace --all-targets -- --test-threads="$threads"
if [ "${SMOLVM_E2E:-}" = 1 ]; then
    # A short chaos soak (random faults during VM lifecycles; the audit after it must find no leak).
    cargo build -p smolvm-cli
    scripts/soak.sh --workers 2 --cycles 6 --minutes 3 --fault-every 3
fi
scripts/test-python.sh -q
