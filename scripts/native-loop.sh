#!/usr/bin/env bash
# One native run (no valgrind) of the relay under wgrelay-loadgen, for the kernel side and the
# CPU time of the whole-loop comparison (docs/benchmarks.md, "Whole loop, cachegrind"): counts
# the relay's system calls with perf's syscall tracepoints (no ptrace, so the batching is not
# disturbed) and its user and system CPU time, and prints one line:
#   label sessions size rate sent received forwarded polls recvmmsgs sendmmsgs user_ns sys_ns sched_ns_per_pkt
#
# usage: scripts/native-loop.sh RELAY LOADGEN LABEL SESSIONS SIZE RATE DURATION [RELAY FLAGS...]
set -euo pipefail
if [ $# -lt 7 ]; then
    sed -n '2,9p' "$0" >&2
    exit 2
fi
relay=$1 loadgen=$2 label=$3 sessions=$4 size=$5 rate=$6 duration=$7
shift 7
out=${OUTDIR:-/tmp/counters-cost}
mkdir -p "$out"
port=$(python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
base="$out/native-$label-s$sessions-b$size-r$rate-$(date +%s%N)"
taskset -c "${RELAY_CPU:-0}" "$relay" run --listen "127.0.0.1:$port" --threads 1 --stats-interval 0 \
    --backend mmsg --cookie never "$@" 2>"$base.relay.log" &
pid=$!
trap 'kill -TERM $pid 2>/dev/null || true' EXIT
want=$(printf ':%04X ' "$port")
for _ in $(seq 1 100); do grep -q "$want" "/proc/$pid/net/udp" 2>/dev/null && break; sleep 0.05; done
perf stat -x, -o "$base.perf" -e syscalls:sys_enter_poll,syscalls:sys_enter_recvmmsg,syscalls:sys_enter_sendmmsg -p "$pid" &
perf_pid=$!
ticks() { awk '{print $14, $15}' "/proc/$pid/stat"; }
read -r u0 s0 < <(ticks)
"$loadgen" run --relay-pid "$pid" --relay "127.0.0.1:$port" --cpu "${GEN_CPU:-1}" \
    --sessions "$sessions" --size "$size" --rate "$rate" --duration "$duration" \
    --direction both --quiet >"$base.out"
read -r u1 s1 < <(ticks)
kill -INT "$perf_pid"
wait "$perf_pid" || true
kill -TERM "$pid"
wait "$pid"
trap - EXIT
hz=$(getconf CLK_TCK)
fwd=$(grep -o ' forwarded=[0-9]*' "$base.relay.log" | tail -1 | cut -d= -f2)
count() { awk -F, -v e="$1" '$3 ~ e {print $1}' "$base.perf"; }
read -r sent received sched < <(tail -1 "$base.out" | jq -r '[.phases[0].sent, .phases[0].received, .phases[0].relay_cpu_ns_per_pkt_sched] | @tsv')
echo "$label $sessions $size $rate $sent $received $fwd $(count sys_enter_poll) $(count sys_enter_recvmmsg) $(count sys_enter_sendmmsg) $(( (u1 - u0) * 1000000000 / hz )) $(( (s1 - s0) * 1000000000 / hz )) $sched"
