#!/bin/bash
# The spoofed-initiation matrix of docs/benchmarks.md: 2000 spoofed initiations/s against a
# legit pair in every mode, warm and cold. Needs a release build (cargo build --release
# --workspace). Usage: scripts/attack-matrix.sh OUTDIR [NAME-FILTER]
# Each run writes OUTDIR/NAME.json (the report) and OUTDIR/NAME.txt (the summary).
set -u
cd "$(dirname "$0")/.."
out=${1:?usage: scripts/attack-matrix.sh OUTDIR [NAME-FILTER]}
filter=${2:-}
mkdir -p "$out"
R="target/release/wgrelay --listen 127.0.0.1:51820"
W="--rate 2000 --seconds 12 --after 5"
OPEN="$R"
ALLOW="$R --allow {KEY_A} --allow {KEY_B}"
GRP="$R --config scripts/attack-groups.toml"
PROXY="$R --server {B_ADDR} --server-key {KEY_B}"
PP="$R --peer 51900={KEY_B}@{B_ADDR}"
# B as a server is a boringtun device: its handshake limit is the device's 100/s, not a lone
# Tunn's 10/s (the relay's budget for a pinned key is server-sized: 20/s, burst 40)
SRV="--peer-handshake-limit 100"
r() {
    local name=$1
    shift
    [[ -n $filter && $name != *$filter* ]] && return
    echo "### $name: wgrelay-loadgen attack $*" | tee "$out/$name.txt"
    target/release/wgrelay-loadgen attack --quiet "$@" >"$out/$name.json" 2>>"$out/$name.txt"
    echo "rc=$?" >>"$out/$name.txt"
    tail -n +2 "$out/$name.txt"
    sleep 2
}
r open-warm-restart $W --forge random --spawn "$OPEN"
r open-warm-rekey $W --forge random --rehandshake rekey --spawn "$OPEN"
r open-warm-validmac1 $W --forge valid-mac1 --spawn "$OPEN"
r open-warm-replay $W --forge replay --spawn "$OPEN"
r open-cold --rate 2000 --seconds 22 --after 5 --forge random --cold --spawn "$OPEN"
r open-cold-replay --rate 2000 --seconds 22 --after 5 --forge replay --cold --spawn "$OPEN"
r allow-warm-restart $W --forge valid-mac1 --spawn "$ALLOW"
r allow-warm-rekey $W --forge valid-mac1 --rehandshake rekey --spawn "$ALLOW"
r allow-warm-replay $W --forge replay --spawn "$ALLOW"
r allow-cold $W --forge valid-mac1 --cold --spawn "$ALLOW"
r allow-cold-replay $W --forge replay --cold --spawn "$ALLOW"
r groups-warm-restart $W --forge valid-mac1 --spawn "$GRP"
r groups-warm-rekey $W --forge valid-mac1 --rehandshake rekey --spawn "$GRP"
r groups-cold $W --forge valid-mac1 --cold --spawn "$GRP"
r proxy-warm-restart $W --forge valid-mac1 --legit-server $SRV --spawn "$PROXY"
r proxy-warm-rekey $W --forge valid-mac1 --rehandshake rekey --legit-server $SRV --spawn "$PROXY"
r proxy-warm-replay $W --forge replay --legit-server $SRV --spawn "$PROXY"
r proxy-cold $W --forge valid-mac1 --cold --legit-server $SRV --spawn "$PROXY"
r pp-warm-restart $W --forge valid-mac1 --port-peer 51900 $SRV --spawn "$PP"
r pp-warm-rekey $W --forge valid-mac1 --rehandshake rekey --port-peer 51900 $SRV --spawn "$PP"
r pp-warm-replay $W --forge replay --port-peer 51900 $SRV --spawn "$PP"
for i in 1 2 3; do
    r pp-cold-$i $W --forge valid-mac1 --cold --port-peer 51900 $SRV --spawn "$PP"
done
