#!/usr/bin/env bash
# One run of the whole relay loop under callgrind: spawn wgrelay under valgrind, drive a fixed
# workload through it with wgrelay-loadgen (real handshakes, then transport packets at a fixed
# rate in both directions), stop it with SIGTERM, and print one line:
#   label backend sessions size rate duration sent received forwarded fast_forwarded Ir polls recvmmsgs sendmmsgs file
# Ir is every user-space instruction the relay process ran (all threads, start to exit; the same
# count cachegrind's Ir is); polls/recvmmsgs/sendmmsgs are callgrind's exact call counts of those
# libc functions: one recvmmsg per pass of the shard loop that found data. Fit
# Ir = a*packets + b*recvmmsgs + c over
# runs of different lengths and rates (scripts/fit-per-packet.py): a is the cost per packet, b
# per pass (batch), c start-up, set-up and shutdown (docs/benchmarks.md, "Whole loop, cachegrind").
#
# usage: scripts/callgrind-loop.sh RELAY LOADGEN OUTDIR LABEL BACKEND SESSIONS SIZE RATE DURATION [RELAY FLAGS...]
#   RELAY_CPU  CPU of the relay [0]; GEN_CPU CPU of the generator [1]
#   VG_FLAGS   more valgrind flags (e.g. --cache-sim=yes for D1/LL misses)
#   ZERO_AFTER_SETUP=1  zero the counts (callgrind_control -z) once the sessions are up: Ir,
#              the calls and the packets (then: calls of Router::transport) are the traffic's only
set -euo pipefail

if [ $# -lt 9 ]; then
    sed -n '2,18p' "$0" >&2
    exit 2
fi
relay=$1 loadgen=$2 outdir=$3 label=$4 backend=$5 sessions=$6 size=$7 rate=$8 duration=$9
shift 9
relay_cpu=${RELAY_CPU:-0}
gen_cpu=${GEN_CPU:-1}
here=$(cd "$(dirname "$0")" && pwd)

mkdir -p "$outdir"
# a free UDP port (another may take it before the relay binds: then the run fails loudly)
port=$(python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
base="$outdir/$label-$backend-s$sessions-b$size-r$rate-d$duration-$(date +%s%N)"

# shellcheck disable=SC2086 # VG_FLAGS is a list of flags
taskset -c "$relay_cpu" valgrind --tool=callgrind ${VG_FLAGS:-} --callgrind-out-file="$base.cg" \
    "$relay" run --listen "127.0.0.1:$port" --threads 1 --stats-interval 0 \
    --backend "$backend" --cookie never "$@" 2>"$base.relay.log" &
pid=$!
trap 'kill -TERM $pid 2>/dev/null || true' EXIT

# bound: the relay's socket is in its /proc/PID/net/udp (valgrind start-up takes seconds)
want=$(printf ':%04X ' "$port")
for _ in $(seq 1 600); do
    if grep -q "$want" "/proc/$pid/net/udp" 2>/dev/null; then
        break
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
        echo "relay exited before binding; its log: $base.relay.log" >&2
        exit 1
    fi
    sleep 0.1
done
grep -q "$want" "/proc/$pid/net/udp" || { echo "relay did not bind 127.0.0.1:$port in 60 s" >&2; exit 1; }

"$loadgen" run --relay-pid "$pid" --relay "127.0.0.1:$port" --cpu "$gen_cpu" \
    --sessions "$sessions" --size "$size" --rate "$rate" --duration "$duration" \
    --direction both --hs-timeout-ms 3000 >"$base.out" 2>"$base.gen.log" &
gen=$!
if [ -n "${ZERO_AFTER_SETUP:-}" ]; then
    # Count from the end of the set-up on: with many sessions the handshakes' cost (and its
    # retries) varies by more than the traffic's. The generator says when they are ready.
    for _ in $(seq 1 1200); do
        grep -q 'sessions ready' "$base.gen.log" && break
        kill -0 "$gen" 2>/dev/null || break
        sleep 0.05
    done
    callgrind_control -z "$pid" >/dev/null
fi
wait "$gen"
tail -1 "$base.out" >"$base.json" # the report is the last line (the human summary first)

kill -TERM "$pid"
wait "$pid" || { echo "relay exited non-zero; its log: $base.relay.log" >&2; exit 1; }
trap - EXIT

ir=$(awk '/^summary:/ {print $2}' "$base.cg")
stats=$(grep -o 'final stats:.*' "$base.relay.log" | tail -1)
forwarded=$(grep -o ' forwarded=[0-9]*' <<<"$stats" | head -1 | cut -d= -f2)
fast=$(grep -o 'fast_forwarded=[0-9]*' <<<"$stats" | cut -d= -f2)
read -r sent received ready < <(jq -r '[.phases[0].sent, .phases[0].received, .setup.ready] | @tsv' "$base.json")
if [ "$ready" != "$sessions" ]; then
    echo "only $ready of $sessions sessions came up ($base.json)" >&2
    exit 1
fi
calls=$(python3 "$here/callgrind-calls.py" "$base.cg" poll recvmmsg sendmmsg 'wgrelay::shard::Router::transport')
read -r polls recvs sends routed <<<"$calls"
if [ -n "${ZERO_AFTER_SETUP:-}" ]; then
    # the packets counted: the transport packets the shard routed since the zeroing
    forwarded=$routed
fi
echo "$label $backend $sessions $size $rate $duration $sent $received ${forwarded:-?} ${fast:-?} $ir $polls $recvs $sends $base.cg"
