#!/usr/bin/env bash
# The whole test suite: every test of the workspace. With SMOLVM_E2E=1 the tests that boot real VMs must
# run (a missing prerequisite fails them); without it they skip and say why.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace --all-targets -- --test-threads="${SMOLVM_TEST_THREADS:-4}"
