#!/bin/sh
# Benchmark matrix: wgrelay vs the null relay (issue 4). Builds both, runs the matrix with the
# relay and the generator pinned to different CPUs, and writes docs/benchmarks.md and
# docs/benchmarks.svg. Everything stays on loopback; each point is a few seconds.
#   scripts/bench.sh            full matrix: sessions 1,1k,10k x sizes 64,1420 x rates 100k,max
#                               x {wgrelay, null}, 3 repetitions (about 5-10 minutes)
#   scripts/bench.sh --quick    sessions 1,1k, one repetition, 1 s phases (about 1 minute)
# Other flags go to `wgrelay-loadgen matrix` (see --help), e.g. --relay-cpu 1.
set -eu
cd "$(dirname "$0")/.."
cargo build --release --bin wgrelay -p wgrelay >&2
cargo build --release -p wgrelay-loadgen >&2
mkdir -p docs target
exec timeout 1800 target/release/wgrelay-loadgen matrix --command "scripts/bench.sh $*" "$@"
