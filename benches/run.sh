#!/bin/sh
# sipguard's load harness: builds release and runs every scenario (benches/README.md).
# Usage: benches/run.sh [--quick] [--runs N]
set -eu
cd "$(dirname "$0")/.."
cargo build --release -p sipguard -p sipguard-bench
exec "${CARGO_TARGET_DIR:-target}/release/sipguard-bench" run "$@"
