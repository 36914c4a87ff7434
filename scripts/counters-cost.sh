#!/usr/bin/env bash
# The per-session counters' cost over the whole relay loop (docs/benchmarks.md, "Whole loop,
# cachegrind"): for each point, both builds, interleaved, REPS times: three runs under callgrind
# (1000 pps for 8 s, 4000 pps for 8 s and for 2 s: two packet counts, and two batchings at one
# packet count), one result line each (scripts/callgrind-loop.sh) appended to RESULTS.
#
# usage: scripts/counters-cost.sh BEFORE_BIN AFTER_BIN LOADGEN RESULTS BACKEND SESSIONS SIZE [REPS]
#   then: scripts/fit-per-packet.py RESULTS
set -euo pipefail
if [ $# -lt 7 ]; then
    sed -n '2,9p' "$0" >&2
    exit 2
fi
before=$1 after=$2 loadgen=$3 results=$4 backend=$5 sessions=$6 size=$7 reps=${8:-2}
here=$(cd "$(dirname "$0")" && pwd)
out=${OUTDIR:-/tmp/counters-cost}
for _ in $(seq 1 "$reps"); do
    for build in before after; do
        if [ "$build" = before ]; then bin=$before; flags=(); else
            bin=$after
            # the control socket is on by default: keep it on, off the shared /run path
            flags=(--control-socket "$out/ctl-$$.sock")
        fi
        for rd in 1000:8 4000:8 4000:2; do
            "$here/callgrind-loop.sh" "$bin" "$loadgen" "$out" "$build" "$backend" "$sessions" \
                "$size" "${rd%:*}" "${rd#*:}" "${flags[@]}" | tee -a "$results"
        done
    done
done
