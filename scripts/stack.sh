#!/usr/bin/env bash
# Runs the whole local stack end to end: litecoind (regtest), quarry-core and CPU miners.
# Options are passed to `quarry-loadtest stack` (try --help), e.g. --duration 120 --miners 0.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release --workspace --bins
exec target/release/quarry-loadtest stack "$@"
