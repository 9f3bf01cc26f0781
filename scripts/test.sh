#!/usr/bin/env bash
# The whole test suite: builds the static guest agent (needed by the image and VM tests), then runs every
# test of the workspace. With SMOLVM_E2E=1 the tests that boot real VMs must run (a missing prerequisite
# fails them); without it they skip and say why.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build-agent.sh
cargo test --workspace --all-targets -- --test-threads="${SMOLVM_TEST_THREADS:-4}"
