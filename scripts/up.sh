#!/usr/bin/env bash
# Starts Kelson on this machine: installs what it needs (containerd and local images included),
# builds the binary and runs the control plane and this machine's node agent, with its data in
# ${KELSON_DATA_DIR:-/var/lib/kelson}. Stop it with Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
cargo build --release --bin kelson
data_dir="${KELSON_DATA_DIR:-/var/lib/kelson}"
exec target/release/kelson up --data-dir "$data_dir" "$@"
