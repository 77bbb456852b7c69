#!/usr/bin/env bash
# Runs every test: formatting, lints, unit tests, and the integration tests that start real
# processes (litecoind in regtest, quarry-core, quarry-edge) on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings
# Integration tests start the binaries as real processes: build them first.
cargo build --workspace --bins
cargo test --workspace
