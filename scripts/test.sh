#!/usr/bin/env bash
# Runs every Kelson test: set-up first (packages), then the whole workspace test suite,
# including the end-to-end tests that drive the `kelson` binary with real kubectl and etcd.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
cargo build --bin kelson
cargo test --workspace --no-fail-fast -- --include-ignored
