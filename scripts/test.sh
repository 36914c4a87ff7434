#!/usr/bin/env bash
# Installs what the test suite needs, then runs it: formatting, lints, and every test.
# Used as is by CI (.ci/run) and by developers. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

need_root() { [ "$(id -u)" -eq 0 ] || { echo "test.sh: installing $* needs root (or install it yourself)" >&2; exit 1; }; }

# Debian packages: gcc is the linker driver rustc uses on Linux.
missing=()
for pkg in gcc; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ] && command -v apt-get >/dev/null; then
    need_root "${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi

if ! command -v cargo >/dev/null; then
    echo "test.sh: cargo not found: install Rust 1.85 or newer (https://rustup.rs)" >&2
    exit 1
fi
rustup component add rustfmt clippy >/dev/null 2>&1 || true

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace
