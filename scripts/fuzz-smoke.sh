#!/usr/bin/env bash
# Fuzz smoke run: builds the cargo-fuzz targets in fuzz/ and runs each one for SECONDS
# (default 30) from its committed seeds (fuzz/seeds/<target>) and the inputs that once found
# a bug (fuzz/regressions/<target>), with a scratch corpus so nothing in the tree changes.
# Fails if any target crashes, panics, breaks an invariant or hangs (an input running over
# 10 s); the input that did it is copied to fuzz/artifacts/. Where cargo-fuzz or a nightly
# toolchain is missing it prints one "fuzz-smoke: skipped: <why>" line and exits 0.
# docs/fuzzing.md has the targets and the long run.
#
#   scripts/fuzz-smoke.sh [SECONDS]
#
# FUZZ_TARGET_DIR, if set, is the build directory (default fuzz/target).
set -euo pipefail
cd "$(dirname "$0")/.."

secs="${1:-30}"
if ! [[ "$secs" =~ ^[0-9]+$ ]] || [ "$secs" -eq 0 ]; then
    echo "usage: $0 [SECONDS]   (SECONDS: a positive integer, default 30)" >&2
    exit 2
fi

skip() {
    echo "fuzz-smoke: skipped: $*"
    exit 0
}
command -v cargo >/dev/null || skip "cargo not found"
cargo +nightly --version >/dev/null 2>&1 \
    || skip "no nightly toolchain (cargo-fuzz needs one: rustup toolchain install nightly)"
cargo +nightly fuzz --version >/dev/null 2>&1 \
    || skip "cargo-fuzz is not installed (cargo install cargo-fuzz --locked)"

# The fuzzed code is safe Rust (the only unsafe on these paths calls target_feature
# functions), so no AddressSanitizer: twice the executions in the same time. Debug
# assertions and overflow checks stay on (cargo-fuzz's default).
flags=(--sanitizer none)
if [ -n "${FUZZ_TARGET_DIR:-}" ]; then
    flags+=(--target-dir "$FUZZ_TARGET_DIR")
fi

start=$SECONDS
cargo +nightly fuzz build "${flags[@]}"
echo "fuzz-smoke: built in $((SECONDS - start)) s"

mapfile -t targets < <(cargo +nightly fuzz list)
[ "${#targets[@]}" -gt 0 ] || { echo "fuzz-smoke: no fuzz targets found" >&2; exit 1; }
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
failed=()
for t in "${targets[@]}"; do
    mkdir -p "$scratch/$t/corpus" "$scratch/$t/artifacts"
    log="$scratch/$t/log"
    # The seeds, and the inputs that once found a bug (fuzz/regressions/<target>, if any).
    inputs=("$PWD/fuzz/seeds/$t")
    [ -d "fuzz/regressions/$t" ] && inputs+=("$PWD/fuzz/regressions/$t")
    if cargo +nightly fuzz run "${flags[@]}" "$t" "$scratch/$t/corpus" "${inputs[@]}" -- \
        -max_total_time="$secs" -timeout=10 -print_final_stats=1 \
        -artifact_prefix="$scratch/$t/artifacts/" >"$log" 2>&1; then
        runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
        echo "fuzz-smoke: $t: ${runs:-?} executions in ${secs} s, no crash"
    else
        failed+=("$t")
        mkdir -p fuzz/artifacts/"$t"
        cp "$scratch/$t/artifacts/"* fuzz/artifacts/"$t"/ 2>/dev/null || true
        echo "fuzz-smoke: $t: FAILED (input kept in fuzz/artifacts/$t/; reproduce with" \
            "cargo +nightly fuzz run --sanitizer none $t fuzz/artifacts/$t/<file>)"
        grep -v -e '^#[0-9]' -e '^INFO:' "$log" | tail -n 40
    fi
done
echo "fuzz-smoke: ${#targets[@]} targets in $((SECONDS - start)) s"
if [ "${#failed[@]}" -gt 0 ]; then
    echo "fuzz-smoke: failed: ${failed[*]}" >&2
    exit 1
fi
