#!/usr/bin/env bash
# Installs what the test suite needs, then runs it: formatting, lints, and every test.
# Used as is by CI (.ci/run) and by developers. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

need_root() { [ "$(id -u)" -eq 0 ] || { echo "test.sh: installing $* needs root (or install it yourself)" >&2; exit 1; }; }

# Debian packages: gcc is the linker driver rustc uses on Linux; binutils' objcopy and readelf
# split the installed binary from its symbols (scripts/install.sh).
missing=()
for pkg in gcc binutils; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
# The end-to-end rig (scripts/e2e.sh) needs wireguard-go and wireguard-tools (the peers and
# `wg`), nftables (the NATs), iperf3, iproute2 (`ip netns`, `ss`), conntrack (NAT rebinding)
# and iputils-ping. It runs only as root, so they are installed only as root; without them
# e2e.sh says why it skips. No recommends: wireguard-tools recommends a whole kernel image.
e2e_missing=()
for pkg in wireguard-go wireguard-tools nftables iperf3 iproute2 conntrack iputils-ping; do
    dpkg -s "$pkg" >/dev/null 2>&1 || e2e_missing+=("$pkg")
done
# The packaging tests: systemd (systemd-analyze verify on the installed unit) and Debian's
# docker.io (the container test runs a dockerd of its own, as root). Root only too; without them
# those tests print why they skip. No recommends: containerd, runc and tini are depends.
# python3-venv: the offline Kubernetes schema check (scripts/kubernetes-test.sh).
for pkg in systemd docker.io python3-venv; do
    dpkg -s "$pkg" >/dev/null 2>&1 || e2e_missing+=("$pkg")
done
[ "$(id -u)" -eq 0 ] || e2e_missing=()
if [ "$((${#missing[@]} + ${#e2e_missing[@]}))" -gt 0 ] && command -v apt-get >/dev/null; then
    [ "${#missing[@]}" -eq 0 ] || need_root "${missing[*]}"
    apt-get -o DPkg::Lock::Timeout=300 update -qq
    if [ "${#missing[@]}" -gt 0 ]; then
        DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq "${missing[@]}"
    fi
    if [ "${#e2e_missing[@]}" -gt 0 ]; then
        DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends "${e2e_missing[@]}"
    fi
fi

if ! command -v cargo >/dev/null; then
    echo "test.sh: cargo not found: install Rust 1.85 or newer (https://rustup.rs)" >&2
    exit 1
fi
rustup component add rustfmt clippy >/dev/null 2>&1 || true

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace
# The loopback suites once more on the portable backend (`auto` picks io_uring where it can run).
WGRELAY_TEST_BACKEND=mmsg cargo test -p wgrelay --test exchange --test cli --test scale --test proxy --test awg --test attack

# Packaging (README, "Deploying"): scripts/install.sh into a temporary root, checked with
# systemd-analyze verify; the Kubernetes manifests against the 1.37 schema, offline
# (kubernetes-validate from PyPI, in target/kubernetes-venv); the container image under a
# dockerd of its own, with real handshakes through it (root only: otherwise one
# "container-test: skipped: <why>" line).
scripts/install-test.sh
scripts/kubernetes-test.sh
scripts/container-test.sh

# Fuzzing smoke run (fuzz/, cargo-fuzz on the nightly toolchain): every target 20 s from its
# committed seeds; one "fuzz-smoke: skipped: <why>" line where nightly or cargo-fuzz is missing.
# cargo-fuzz is installed here (pinned, from its lock file) where nightly is present; a failed
# install leaves the smoke run to print its skip line.
if rustup toolchain list 2>/dev/null | grep -q '^nightly' && ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --version 0.13.2 --locked || echo "cargo-fuzz install failed"
fi
cargo fmt --manifest-path fuzz/Cargo.toml -- --check
scripts/fuzz-smoke.sh 20

# A second WireGuard implementation for the e2e rig's interop case (boringtun beside
# wireguard-go). Only as root (the rig needs root anyway); a failed install only skips that
# case, with the rig's one-line reason.
if [ "$(id -u)" -eq 0 ] && ! command -v boringtun-cli >/dev/null \
    && [ ! -x "${CARGO_HOME:-$HOME/.cargo}/bin/boringtun-cli" ]; then
    cargo install boringtun-cli --version 0.7.1 --locked --quiet \
        || echo "test.sh: boringtun-cli did not install; the e2e boringtun case will skip" >&2
fi

# End-to-end: wireguard-go peers behind two NAT namespaces, through the release binary.
# Prints one "e2e: skipped: <why>" line where it cannot run (not root, no /dev/net/tun).
scripts/e2e.sh
