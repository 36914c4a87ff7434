#!/bin/sh
# Benchmark matrix: wgrelay vs the null relay (issues 4 and 5). Builds both, runs the matrix
# with the relay and the generator pinned to different CPUs, and writes docs/benchmarks.md and
# docs/benchmarks.svg (raw JSON lines: target/bench-results.jsonl). Everything on loopback.
# Sections (--sections datapath,gso,shards; default all):
#   datapath  per-datagram traffic: backend mmsg,uring x sessions 1,1k,10k x sizes 64,1420
#             x rates 100k,max, wgrelay vs the null relay; also set-up time and memory
#   gso       GSO-sent / GRO-received traffic (16 and 64 segments, 1 session): wgrelay
#             --gso on --gro on (mmsg, uring) vs the coalescing (--gro) and per-datagram nulls
#   shards    wgrelay --threads 1 (pinned) vs --threads 2 (both CPUs), 1000 sessions
#   scripts/bench.sh            all sections, 3 repetitions, 2 s phases (about 15 minutes)
#   scripts/bench.sh --quick    datapath sessions 1,1k, one repetition, 1 s phases (about 1.5 min)
#   scripts/bench.sh --sections gso,shards     only those (the datapath takes ~9 of the 15 min)
#   scripts/bench.sh --from-raw target/bench-results.jsonl   rewrite the report, no runs
# Other flags go to `wgrelay-loadgen matrix` (see --help), e.g. --relay-cpu 1, --gso-segments 16.
set -eu
cd "$(dirname "$0")/.."
cargo build --release --bin wgrelay -p wgrelay >&2
cargo build --release -p wgrelay-loadgen >&2
mkdir -p docs target
exec timeout 2400 target/release/wgrelay-loadgen matrix --command "scripts/bench.sh $*" "$@"
