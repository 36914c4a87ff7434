#!/usr/bin/env bash
# Builds and runs the relay. With no arguments: `wgrelay run` with the defaults (listen on
# [::]:51820, dual-stack, open mode, cookie challenge under load). Any arguments go to wgrelay,
# e.g. scripts/run.sh run --allow KEY_A --allow KEY_B
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cargo >/dev/null; then
    echo "run.sh: cargo not found: install Rust 1.85 or newer (https://rustup.rs)" >&2
    exit 1
fi
cargo build --release --quiet --bin wgrelay
if [ "$#" -eq 0 ]; then
    set -- run
fi
exec target/release/wgrelay "$@"
