#!/usr/bin/env bash
# End-to-end rig: real WireGuard peers (Debian's wireguard-go, configured with wg) behind two
# NAT namespaces talk through wgrelay running in a "public" namespace. Pings and iperf3 go
# through the tunnels; the relay's own counters are reported for each case.
#
#   pub (router, the "internet")
#    |-- relay   203.0.113.10      wgrelay --listen 203.0.113.10:51820
#    |-- nat-a   198.51.100.2      nftables masquerade
#    |     |-- peer-a  198.18.1.2  wireguard-go, tunnel 192.0.2.1
#    |     `-- peer-c  198.18.3.2  wireguard-go, tunnel 192.0.2.3 (key not allowed)
#    |-- nat-b   198.51.100.18     nftables masquerade (+ a port forward for the baseline)
#    |     |-- peer-b  198.18.2.2  wireguard-go, tunnel 192.0.2.2
#    |     `-- peer-d  198.18.4.2  wireguard-go, tunnel 192.0.2.4 (proxy client; also
#    |                             2001:db8:4::2, routed without NAT, for the IPv6 leg)
#    `-- srv     198.51.100.34     wireguard-go server, tunnel 192.0.2.9 (proxy case)
#
#    and, for the boringtun case: peer-e 198.18.5.2 (boringtun-cli, tunnel 192.0.2.5) behind
#    nat-a, peer-f 198.18.6.2 (wireguard-go, tunnel 192.0.2.6) behind nat-b, with a relay of
#    their own on 203.0.113.10:51823.
#
# The proxy case runs a second relay in the relay namespace, 203.0.113.10:51821 and
# [2001:db8:10::10]:51821, with --server 198.51.100.34:51820 --server-key <srv's key>.
#
# Needs root, /dev/net/tun and: ip nft conntrack wg wireguard-go iperf3 ping (scripts/test.sh
# installs them). Without them it prints one "e2e: skipped: ..." line and exits 0.
# Knobs (environment): E2E_KEEP=1 keeps the log directory, E2E_IPERF_SECS (default 5),
# E2E_SOCKBUF (bytes, default 4194304; 0 leaves the kernel's socket buffer defaults alone),
# E2E_COOKIE (the relay's --cookie, default always), E2E_BT_ROUNDS (boringtun case: device
# restarts per relay mode, default 6), E2E_BT_BOUND (seconds, default 12), E2E_BORINGTUN
# (boringtun-cli binary; default: PATH, then ~/.cargo/bin; the case is skipped without it),
# WGRELAY_BIN (default: target/release/wgrelay, built with cargo when missing), E2E_CPU_REPS
# (rounds of the relay-CPU-per-GB measurement against wgproxy; default 0: not run),
# E2E_CPU_SECS (its iperf3 seconds, default 10), E2E_WGPROXY (wgproxy binary; default: PATH,
# then /opt/wgproxy/bin), E2E_ONLY (cases to run, e.g. "proxy cpu"; default all).
# See docs/e2e.md.
set -Eeuo pipefail
cd "$(dirname "$0")/.."

IPERF_SECS=${E2E_IPERF_SECS:-5}
SOCKBUF=${E2E_SOCKBUF:-4194304}
KEEP=${E2E_KEEP:-0}
COOKIE=${E2E_COOKIE:-always}
BT_ROUNDS=${E2E_BT_ROUNDS:-6}
BT_BOUND=${E2E_BT_BOUND:-12}
BT_WAIT=30 # how long a boringtun round watches the pings, to say how late they came

skip() {
    echo "e2e: skipped: $*"
    exit 0
}

# ---- preconditions: skip loudly, never silently ---------------------------------------------
[ "$(id -u)" -eq 0 ] || skip "not root"
[ -c /dev/net/tun ] || skip "no /dev/net/tun"
for tool in ip nft conntrack wg wireguard-go iperf3 ping flock timeout ss; do
    command -v "$tool" >/dev/null 2>&1 ||
        skip "$tool not found (apt-get install wireguard-go wireguard-tools nftables iperf3 iproute2 conntrack iputils-ping)"
done
probe_ns="wge2e$$-probe"
ip netns add "$probe_ns" 2>/dev/null || skip "cannot create network namespaces (ip netns add failed)"
if ! ip netns exec "$probe_ns" nft -f - >/dev/null 2>&1 <<'EOF'; then
table ip probe {
    chain p {
        type nat hook postrouting priority srcnat; policy accept;
        masquerade
    }
}
EOF
    ip netns del "$probe_ns"
    skip "the kernel cannot do nftables NAT (nf_tables/nf_nat missing)"
fi
ip netns del "$probe_ns"

RELAY_BIN=${WGRELAY_BIN:-target/release/wgrelay}
if [ -z "${WGRELAY_BIN:-}" ] && command -v cargo >/dev/null 2>&1; then
    if ! cargo build --release --quiet --bin wgrelay; then
        echo "e2e: error: cargo build --release --bin wgrelay failed"
        echo "e2e: 0 passed, 1 failed"
        exit 1
    fi
fi
[ -x "$RELAY_BIN" ] || skip "no relay binary at $RELAY_BIN and no cargo to build it"
RELAY_BIN=$(realpath "$RELAY_BIN")
# boringtun-cli is optional: only the boringtun case needs it (cargo install boringtun-cli --locked).
BT_BIN=${E2E_BORINGTUN:-$(command -v boringtun-cli 2>/dev/null || true)}
if [ -z "$BT_BIN" ] && [ -x "${CARGO_HOME:-$HOME/.cargo}/bin/boringtun-cli" ]; then
    BT_BIN="${CARGO_HOME:-$HOME/.cargo}/bin/boringtun-cli"
fi

# ---- names: unique per run (PID), interfaces within IFNAMSIZ (15 chars) -----------------------
ID=$$
NS_PUB="wge2e$ID-pub"
NS_RELAY="wge2e$ID-relay"
NS_NATA="wge2e$ID-nat-a"
NS_NATB="wge2e$ID-nat-b"
NS_A="wge2e$ID-peer-a"
NS_B="wge2e$ID-peer-b"
NS_C="wge2e$ID-peer-c"
NS_D="wge2e$ID-peer-d"
NS_SRV="wge2e$ID-srv"
NS_E="wge2e$ID-peer-e"
NS_F="wge2e$ID-peer-f"
ALL_NS=("$NS_PUB" "$NS_RELAY" "$NS_NATA" "$NS_NATB" "$NS_A" "$NS_B" "$NS_C" "$NS_D" "$NS_SRV"
    "$NS_E" "$NS_F")
I="we${ID}" # at most 9 characters; suffixes below add at most 3
# wireguard-go's UAPI socket (/var/run/wireguard/NAME.sock) is not namespaced: unique names.
WG_A="${I}wga"
WG_B="${I}wgb"
WG_C="${I}wgc"
WG_D="${I}wgd"
WG_S="${I}wgs"
WG_E="${I}bte" # boringtun-cli's UAPI socket is /var/run/wireguard/NAME.sock as well
WG_F="${I}wgf"

RELAY_IP=203.0.113.10
RELAY_PORT=51820
NATA_IP=198.51.100.2
NATB_IP=198.51.100.18
WG_PORT=51820
TUN_A=192.0.2.1
TUN_B=192.0.2.2
TUN_C=192.0.2.3
# proxy case: a WireGuard server on the "internet", a client behind NAT B, a second relay
SRV_IP=198.51.100.34
TUN_D=192.0.2.4
TUN_S=192.0.2.9
PROXY_PORT=51821
RELAY_PORT_MORE=51824 # the listener case_reload adds
WG_PORT_D=51822 # peer-d shares NAT B with peer-b: another source port
RELAY_IP6=2001:db8:10::10
PEER_D_IP6=2001:db8:4::2
# boringtun case: boringtun-cli (peer-e, behind NAT A) and wireguard-go (peer-f, behind NAT B)
TUN_E=192.0.2.5
TUN_F=192.0.2.6
BT_PORT=51823 # their relay

LOG=$(mktemp -d /tmp/wgrelay-e2e.XXXXXX)
PIDS=()
CREATED_NS=()
HAVE_V6=0
RELAY_PID=
RELAY_LOG=
SUMMARY_DONE=0
PASSED=0
FAILED=0
IPERF_RUN=0
BG_PID=
SYSCTL_RAISED=0
SYSCTL_ORIG_R=
SYSCTL_ORIG_W=
SYSCTL_LOCK=/run/lock/wgrelay-e2e-sockbuf.lock

# ---- cleanup: always, whatever happened ----------------------------------------------------------
cleanup() {
    local rc=$?
    set +e
    trap - ERR
    restore_sockbuf
    local pid
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null; done
    for _ in $(seq 20); do # up to 2 s for a clean exit (wireguard-go removes its socket)
        local alive=0
        for pid in "${PIDS[@]}"; do
            [ -e "/proc/$pid" ] && [ "$(awk '{ print $3 }' "/proc/$pid/stat" 2>/dev/null)" != Z ] && alive=1
        done
        [ "$alive" -eq 0 ] && break
        sleep 0.1
    done
    for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null; done
    local ns
    for ns in "${CREATED_NS[@]}"; do
        # Anything still running inside one of our namespaces was started by this script.
        for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null; done
        ip netns del "$ns" 2>/dev/null
    done
    local dev
    for dev in "$WG_A" "$WG_B" "$WG_C" "$WG_D" "$WG_S" "$WG_E" "$WG_F"; do rm -f "/var/run/wireguard/$dev.sock"; done
    if [ "$KEEP" = 1 ]; then
        echo "e2e: logs kept in $LOG"
    else
        rm -rf "$LOG"
    fi
    if [ "$SUMMARY_DONE" -eq 0 ]; then
        # Aborted before the summary (setup error or signal): that is a failure too.
        echo "e2e: $PASSED passed, $((FAILED + 1)) failed"
        [ "$rc" -eq 0 ] && rc=1
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'echo "e2e: error: line $LINENO: $BASH_COMMAND failed" >&2' ERR

# ---- small helpers -------------------------------------------------------------------------------
now() { date +%s.%N; }
# elapsed START [END]: seconds between two now() values, 1 decimal
elapsed() { awk -v a="$1" -v b="${2:-$(now)}" 'BEGIN { printf "%.1f", b - a }'; }
pass() {
    PASSED=$((PASSED + 1))
    echo "PASS $1: $2"
}
fail() {
    FAILED=$((FAILED + 1))
    echo "FAIL $1: $2"
}
info() { echo "     $*"; }
# nsx NS CMD...: run CMD in NS (in the foreground; background jobs call ip netns exec directly,
# so that $! is the process itself and not a subshell)
nsx() {
    local ns=$1
    shift
    ip netns exec "$ns" "$@"
}
new_ns() {
    ip netns add "$1"
    CREATED_NS+=("$1")
    ip -n "$1" link set lo up
}
# veth NS1 IF1 ADDR1 NS2 IF2 ADDR2: a veth pair created directly inside the two namespaces
veth() {
    ip link add "$2" netns "$1" type veth peer name "$5" netns "$4"
    ip -n "$1" addr add "$3" dev "$2"
    ip -n "$4" addr add "$6" dev "$5"
    ip -n "$1" link set "$2" up
    ip -n "$4" link set "$5" up
}
# wait_for SECONDS CMD...: poll CMD every 0.2 s; 0 as soon as it succeeds, 1 after SECONDS
wait_for() {
    local deadline
    deadline=$(awk -v t="$(now)" -v s="$1" 'BEGIN { printf "%.3f", t + s }')
    shift
    while :; do
        "$@" >/dev/null 2>&1 && return 0
        awk -v t="$(now)" -v d="$deadline" 'BEGIN { exit !(t >= d) }' && return 1
        sleep 0.2
    done
}

# Socket buffers. wireguard-go 0.0.20220316 (Debian 12) never sets SO_RCVBUF/SO_SNDBUF, so its
# UDP sockets get net.core.{r,w}mem_default (208 KiB). Upstream wireguard-go asks for 7 MiB
# (with SO_*BUFFORCE) since 2023. On this kernel those sysctls are global: read-only inside a
# network namespace, which shows the init namespace's value. So the host default is raised
# only while the peers' sockets are created, under a lock, and put back right after (and in
# cleanup). A socket keeps the size it was created with.
raise_sockbuf() {
    [ "$SOCKBUF" -gt 0 ] || return 0
    exec 9>"$SYSCTL_LOCK"
    flock -w 60 9 || {
        echo "e2e: could not take $SYSCTL_LOCK; keeping kernel default socket buffers" >&2
        exec 9>&-
        return 0
    }
    SYSCTL_ORIG_R=$(cat /proc/sys/net/core/rmem_default)
    SYSCTL_ORIG_W=$(cat /proc/sys/net/core/wmem_default)
    if [ "$SYSCTL_ORIG_R" -lt "$SOCKBUF" ] || [ "$SYSCTL_ORIG_W" -lt "$SOCKBUF" ]; then
        echo "$SOCKBUF" >/proc/sys/net/core/rmem_default
        echo "$SOCKBUF" >/proc/sys/net/core/wmem_default
        SYSCTL_RAISED=1
    fi
}
restore_sockbuf() {
    if [ "$SYSCTL_RAISED" -eq 1 ]; then
        [ "$(cat /proc/sys/net/core/rmem_default)" = "$SOCKBUF" ] &&
            echo "$SYSCTL_ORIG_R" >/proc/sys/net/core/rmem_default
        [ "$(cat /proc/sys/net/core/wmem_default)" = "$SOCKBUF" ] &&
            echo "$SYSCTL_ORIG_W" >/proc/sys/net/core/wmem_default
        SYSCTL_RAISED=0
    fi
    { exec 9>&-; } 2>/dev/null || true
}
# sockbuf NS: "rb=... tb=..." of the wireguard-go UDP socket in NS
sockbuf() {
    nsx "$1" ss -uanm "sport = :$WG_PORT" 2>/dev/null |
        grep -o 'skmem:([^)]*)' | head -1 | sed -E 's/.*,rb([0-9]+),t[0-9]+,tb([0-9]+),.*/rb=\1 tb=\2/'
}
# udp_errs NS: "RcvbufErrors SndbufErrors" from the namespace's /proc/net/snmp
udp_errs() {
    nsx "$1" awk '/^Udp:/ { if (!h) { for (i = 2; i <= NF; i++) k[$i] = i; h = 1 } else print $k["RcvbufErrors"], $k["SndbufErrors"] }' /proc/net/snmp
}

# ---- relay ---------------------------------------------------------------------------------------
start_relay() {
    RELAY_LOG="$LOG/relay.$1.log"
    # the keys and listeners come from a file, so that a reload (SIGHUP) can change them
    # (case_reload)
    [ -f "$LOG/relay.toml" ] || relay_keys "$PUB_A" "$PUB_B"
    ip netns exec "$NS_RELAY" "$RELAY_BIN" run \
        --config "$LOG/relay.toml" --cookie "$COOKIE" --log-level info --stats-interval 1 \
        --state-file "$LOG/relay.state" --control-socket "$LOG/ctl.$1.sock" 2>"$RELAY_LOG" &
    RELAY_PID=$!
    PIDS+=("$RELAY_PID")
    wait_for 10 grep -q "relaying on" "$RELAY_LOG" || {
        echo "e2e: relay did not start:" >&2
        cat "$RELAY_LOG" >&2
        return 1
    }
}
# relay_keys KEY...: the relay's configuration file, allowing exactly these keys, listening on
# RELAY_IP:RELAY_PORT and on $RELAY_MORE_LISTEN if set
relay_keys() {
    local list="" k
    for k in "$@"; do list="$list${list:+, }\"$k\""; done
    {
        echo "listen = [\"$RELAY_IP:$RELAY_PORT\"${RELAY_MORE_LISTEN:+, \"$RELAY_MORE_LISTEN\"}]"
        echo "allow = [$list]"
    } >"$LOG/relay.toml"
}
# reload_relay: SIGHUP, then wait for the relay to log the outcome; prints that line
reload_relay() {
    local n
    n=$(grep -cE 'reload: |reload refused' "$RELAY_LOG" || true)
    kill -HUP "$RELAY_PID"
    wait_for 5 awk -v n="$n" '/reload: |reload refused/ { c++ } END { exit !(c > n) }' "$RELAY_LOG" || true
    grep -E 'reload: |reload refused' "$RELAY_LOG" | tail -1 | sed -E 's/^\[[^]]*\] //'
}
stop_relay() {
    kill -TERM "$RELAY_PID" 2>/dev/null || true
    wait_for 5 grep -q "final stats" "$RELAY_LOG" || kill -KILL "$RELAY_PID" 2>/dev/null || true
    wait "$RELAY_PID" 2>/dev/null || true
}
# stats: the relay's latest counter line (logged every second)
stats() { grep -E '(final )?stats: received=' "$RELAY_LOG" | tail -1 | sed -E 's/.*stats: //'; }
# fresh_stats: the first counter line logged after now (so it includes everything so far)
fresh_stats() {
    local n
    sleep 0.2
    n=$(grep -c 'stats: received=' "$RELAY_LOG" || true)
    wait_for 3 awk -v n="$n" '/stats: received=/ { c++ } END { exit !(c > n) }' "$RELAY_LOG" || true
    stats
}
# stat LINE KEY: one counter from a stats line (0 when absent)
stat() { echo "$1" | tr ' ' '\n' | awk -F= -v k="$2" '$1 == k { v = $2 } END { print v + 0 }'; }
# stats_delta BEFORE AFTER: counters that changed, as key=+N (gauges indices/endpoints as is)
stats_delta() {
    awk -v a="$1" -v b="$2" 'BEGIN {
        n = split(a, x, " "); for (i = 1; i <= n; i++) { split(x[i], kv, "="); old[kv[1]] = kv[2] }
        n = split(b, y, " ")
        for (i = 1; i <= n; i++) {
            split(y[i], kv, "="); k = kv[1]
            if (k == "indices" || k == "endpoints") continue
            d = kv[2] - old[k]; if (d != 0) out = out sprintf("%s%s=+%d", out == "" ? "" : " ", k, d)
        }
        print out == "" ? "(no change)" : out }'
}
# drops LINE: the drop counters of a stats line
drops() { echo "$1" | tr ' ' '\n' | grep -E '^(dropped|drop_|send_failed|recv_errors)' | tr '\n' ' ' | sed 's/ $//'; }

# ---- WireGuard peers -----------------------------------------------------------------------------
start_wg() { # NS NAME
    # 9>&-: the socket-buffer lock must not live on in the daemon
    LOG_LEVEL=verbose ip netns exec "$1" wireguard-go -f "$2" >"$LOG/$2.log" 2>&1 9>&- &
    PIDS+=("$!")
    wait_for 10 test -S "/var/run/wireguard/$2.sock" || {
        echo "e2e: wireguard-go $2 did not start:" >&2
        cat "$LOG/$2.log" >&2
        return 1
    }
}
# handshake_at NS DEV PUBKEY: unix time of the latest handshake with PUBKEY (0 = none)
handshake_at() { nsx "$1" wg show "$2" latest-handshakes | awk -v k="$3" '$1 == k { print $2 }'; }
has_handshake() { [ "$(handshake_at "$@")" != 0 ]; }
# handshakes LOGFILE: handshakes completed so far, as logged by wireguard-go (either role)
handshakes() { grep -cE 'Received handshake response|Sending handshake response' "$1" || true; }

# ping_bg NS DST FILE: ping every 0.1 s until killed, with timestamps, and -O so that every
# sequence number sent appears in FILE (a reply, or "no answer yet"); pid in BG_PID
ping_bg() {
    ip netns exec "$1" ping -D -O -n -i 0.1 "$2" >"$3" 2>&1 &
    BG_PID=$!
    PIDS+=("$BG_PID")
}
# recovery FILE T0: how the pings in FILE behaved after the event at T0 (unix time).
# The last reply received before T0 has sequence number SB. The 5 most recent pings (0.5 s)
# are still in flight and not judged. If some later ping was not answered, the outage
# lasted until the first reply to a ping sent after the first unanswered one: prints
# "SECONDS LOST" (SECONDS from T0 to that reply, LOST unanswered pings), or "pending" while
# that has not happened. If every judged ping after SB was answered: "0.0 0".
recovery() {
    sed -nE 's/^\[([0-9.]+)\] (.*icmp_seq=([0-9]+) .*time=|no answer yet for icmp_seq=([0-9]+)).*/\1 \3\4 \2/p' "$1" |
        awk -v t0="$2" '
        { if ($2 > sent) sent = $2 }
        $3 != "no" { ts[$2] = $1; if ($1 <= t0 && $2 > sb) sb = $2 }
        END {
            judged = sent - 5
            for (s = sb + 1; s <= judged; s++) if (!(s in ts)) { m = s; break }
            if (!m) { print (judged > sb ? "0.0 0" : "pending"); exit }
            first = 0
            for (s in ts) if (s + 0 > m && (first == 0 || ts[s] < first)) first = ts[s]
            if (first == 0) { print "pending"; exit }
            lost = 0
            for (s = sb + 1; s <= judged; s++) if (!(s in ts)) lost++
            printf "%.1f %d\n", first - t0, lost
        }'
}
recovered() { [ "$(recovery "$1" "$2")" != pending ]; }
both_recovered() { recovered "$1" "$3" && recovered "$2" "$3"; }

# ---- iperf3 --------------------------------------------------------------------------------------
# iperf FROM_NS TO_IP TO_NS: TCP for IPERF_SECS; sets IPERF_MBITS and IPERF_RETR, or fails
iperf() {
    local out="$LOG/iperf.$((++IPERF_RUN)).log"
    IPERF_MBITS=
    IPERF_RETR=
    ip netns exec "$3" iperf3 -s -1 -B "$2" -p 5201 >"$out.server" 2>&1 &
    local spid=$!
    PIDS+=("$spid")
    wait_for 5 sh -c "ip netns exec '$3' ss -ltn 'sport = :5201' | grep -q 5201" || return 1
    nsx "$1" timeout $((IPERF_SECS + 20)) iperf3 -c "$2" -p 5201 -t "$IPERF_SECS" -f m \
        --connect-timeout 5000 >"$out" 2>&1 || {
        kill "$spid" 2>/dev/null || true
        return 1
    }
    wait "$spid" 2>/dev/null || true
    IPERF_MBITS=$(awk '/receiver$/ { print $(NF - 2) }' "$out")
    IPERF_RETR=$(awk '/sender$/ { print $(NF - 1) }' "$out")
    [ -n "$IPERF_MBITS" ]
}

# ===================================================================================================
echo "e2e: relay $RELAY_BIN, logs in $LOG"

# ---- topology ------------------------------------------------------------------------------------
for ns in "${ALL_NS[@]}"; do new_ns "$ns"; done
for ns in "$NS_PUB" "$NS_NATA" "$NS_NATB"; do
    nsx "$ns" sh -c 'echo 1 >/proc/sys/net/ipv4/ip_forward' # /proc/sys/net is per namespace
done

veth "$NS_PUB" "${I}r" 203.0.113.1/24 "$NS_RELAY" "${I}p" "$RELAY_IP/24"
veth "$NS_PUB" "${I}a" 198.51.100.1/28 "$NS_NATA" "${I}w" "$NATA_IP/28"
veth "$NS_PUB" "${I}b" 198.51.100.17/28 "$NS_NATB" "${I}w" "$NATB_IP/28"
veth "$NS_NATA" "${I}la" 198.18.1.1/24 "$NS_A" "${I}e" 198.18.1.2/24
veth "$NS_NATA" "${I}lc" 198.18.3.1/24 "$NS_C" "${I}e" 198.18.3.2/24
veth "$NS_NATB" "${I}lb" 198.18.2.1/24 "$NS_B" "${I}e" 198.18.2.2/24
veth "$NS_NATB" "${I}ld" 198.18.4.1/24 "$NS_D" "${I}e" 198.18.4.2/24
veth "$NS_NATA" "${I}le" 198.18.5.1/24 "$NS_E" "${I}e" 198.18.5.2/24
veth "$NS_NATB" "${I}lf" 198.18.6.1/24 "$NS_F" "${I}e" 198.18.6.2/24
veth "$NS_PUB" "${I}s" 198.51.100.33/28 "$NS_SRV" "${I}w" "$SRV_IP/28"
ip -n "$NS_RELAY" route add default via 203.0.113.1
ip -n "$NS_NATA" route add default via 198.51.100.1
ip -n "$NS_NATB" route add default via 198.51.100.17
ip -n "$NS_A" route add default via 198.18.1.1
ip -n "$NS_C" route add default via 198.18.3.1
ip -n "$NS_B" route add default via 198.18.2.1
ip -n "$NS_D" route add default via 198.18.4.1
ip -n "$NS_E" route add default via 198.18.5.1
ip -n "$NS_F" route add default via 198.18.6.1
ip -n "$NS_SRV" route add default via 198.51.100.33
# IPv6 for the proxy case's IPv6 leg: relay and peer-d only, routed by pub and nat-b (no NAT66).
# nodad: the addresses are usable at once. Without IPv6 in the kernel the leg is skipped.
if [ -d /proc/sys/net/ipv6 ]; then
    for ns in "$NS_PUB" "$NS_NATB"; do
        nsx "$ns" sh -c 'echo 1 >/proc/sys/net/ipv6/conf/all/forwarding'
    done
    ip -n "$NS_PUB" addr add 2001:db8:10::1/64 dev "${I}r" nodad
    ip -n "$NS_RELAY" addr add "$RELAY_IP6/64" dev "${I}p" nodad
    ip -n "$NS_PUB" addr add 2001:db8:2::1/64 dev "${I}b" nodad
    ip -n "$NS_NATB" addr add 2001:db8:2::2/64 dev "${I}w" nodad
    ip -n "$NS_NATB" addr add 2001:db8:4::1/64 dev "${I}ld" nodad
    ip -n "$NS_D" addr add "$PEER_D_IP6/64" dev "${I}e" nodad
    ip -n "$NS_PUB" route add 2001:db8:4::/64 via 2001:db8:2::2
    ip -n "$NS_RELAY" route add default via 2001:db8:10::1
    ip -n "$NS_NATB" route add default via 2001:db8:2::1
    ip -n "$NS_D" route add default via 2001:db8:4::1
    HAVE_V6=1
fi

nat_rules() { # NS [MASQUERADE-ARGS]
    nsx "$1" nft -f - <<EOF
table ip nat {
    chain postrouting {
        type nat hook postrouting priority srcnat; policy accept;
        oifname "${I}w" meta l4proto udp masquerade ${2:-}
        oifname "${I}w" masquerade
    }
}
EOF
}
nat_rules "$NS_NATA"
nat_rules "$NS_NATB"

# ---- keys, peers, relay --------------------------------------------------------------------------
umask 077
for p in A B C D S E F; do
    wg genkey >"$LOG/key.$p"
    wg pubkey <"$LOG/key.$p" >"$LOG/pub.$p"
done
PUB_A=$(cat "$LOG/pub.A")
PUB_B=$(cat "$LOG/pub.B")
PUB_C=$(cat "$LOG/pub.C")
PUB_D=$(cat "$LOG/pub.D")
PUB_S=$(cat "$LOG/pub.S")
PUB_E=$(cat "$LOG/pub.E")
PUB_F=$(cat "$LOG/pub.F")

start_relay 1

RELAY_EP="$RELAY_IP:$RELAY_PORT"
# A and B both accept C: only the relay's allow-list keeps C out. T_UP is when A and B start.
conf_wg() { # NS DEV KEY ADDR
    nsx "$1" wg set "$2" private-key "$3" listen-port "$WG_PORT"
    ip -n "$1" addr add "$4/24" dev "$2"
}
raise_sockbuf
start_wg "$NS_A" "$WG_A"
start_wg "$NS_B" "$WG_B"
start_wg "$NS_C" "$WG_C"
conf_wg "$NS_A" "$WG_A" "$LOG/key.A" "$TUN_A"
conf_wg "$NS_B" "$WG_B" "$LOG/key.B" "$TUN_B"
conf_wg "$NS_C" "$WG_C" "$LOG/key.C" "$TUN_C"
T_UP=$(now)
nsx "$NS_A" wg set "$WG_A" \
    peer "$PUB_B" allowed-ips "$TUN_B/32" endpoint "$RELAY_EP" persistent-keepalive 25 \
    peer "$PUB_C" allowed-ips "$TUN_C/32"
nsx "$NS_B" wg set "$WG_B" \
    peer "$PUB_A" allowed-ips "$TUN_A/32" endpoint "$RELAY_EP" persistent-keepalive 25 \
    peer "$PUB_C" allowed-ips "$TUN_C/32"
# wireguard-go brings its device up by itself: a peer starts handshaking as soon as it is
# configured. peer-c gets its peers only in its own case.
for ns in "$NS_A" "$NS_B" "$NS_C"; do ip -n "$ns" link set "${I}wg${ns##*-}" up; done
# The sockets exist once both devices are up and listening.
wait_for 5 sh -c "ip netns exec '$NS_A' ss -uan 'sport = :$WG_PORT' | grep -q $WG_PORT &&
                  ip netns exec '$NS_B' ss -uan 'sport = :$WG_PORT' | grep -q $WG_PORT" || true
restore_sockbuf
info "peer sockets: peer-a $(sockbuf "$NS_A"), peer-b $(sockbuf "$NS_B")" \
    "(E2E_SOCKBUF=$SOCKBUF; host rmem_default back to $(cat /proc/sys/net/core/rmem_default))"

TUNNEL_OK=0

# ---- case 1: exchange mode, allow-list A+B, --cookie always ---------------------------------------
case_exchange() {
    local name="exchange (allow A,B; cookie $COOKIE)"
    if ! wait_for 20 has_handshake "$NS_A" "$WG_A" "$PUB_B"; then
        fail "$name" "no handshake within 20 s; relay: $(stats)"
        return
    fi
    local t_hs
    t_hs=$(elapsed "$T_UP")
    local ab ba
    ab=$(nsx "$NS_A" ping -n -c 3 -i 0.2 -W 2 "$TUN_B" | grep -c 'bytes from' || true)
    ba=$(nsx "$NS_B" ping -n -c 3 -i 0.2 -W 2 "$TUN_A" | grep -c 'bytes from' || true)
    local s
    s=$(fresh_stats)
    if [ "$ab" -gt 0 ] && [ "$ba" -gt 0 ]; then
        TUNNEL_OK=1
        pass "$name" "handshake after ${t_hs} s, ping a->b $ab/3, b->a $ba/3"
    else
        fail "$name" "handshake after ${t_hs} s but ping a->b $ab/3, b->a $ba/3"
    fi
    info "relay: cookie_replies=$(stat "$s" cookie_replies) parked=$(stat "$s" parked)" \
        "paired=$(stat "$s" paired) confirmed=$(stat "$s" confirmed) $(drops "$s")"
}

# ---- case 2: iperf3 through the relay -------------------------------------------------------------
RELAY_MBITS=
case_iperf_relay() {
    local name="iperf3 via relay (${IPERF_SECS} s, a->b)"
    [ "$TUNNEL_OK" = 1 ] || {
        fail "$name" "no tunnel (exchange failed)"
        return
    }
    local s0 r0 a0 b0 res s1
    s0=$(fresh_stats)
    r0=$(udp_errs "$NS_RELAY")
    a0=$(udp_errs "$NS_A")
    b0=$(udp_errs "$NS_B")
    if ! iperf "$NS_A" "$TUN_B" "$NS_B"; then
        fail "$name" "iperf3 failed: $(tail -2 "$LOG/iperf.$IPERF_RUN.log" | tr '\n' ' ')"
        return
    fi
    s1=$(fresh_stats)
    RELAY_MBITS=$IPERF_MBITS
    pass "$name" "$RELAY_MBITS Mbit/s (TCP retransmits $IPERF_RETR)"
    info "relay counters during the run: $(stats_delta "$s0" "$s1")"
    info "UDP RcvbufErrors/SndbufErrors: relay ns $r0 -> $(udp_errs "$NS_RELAY")," \
        "peer-a $a0 -> $(udp_errs "$NS_A"), peer-b $b0 -> $(udp_errs "$NS_B")"
}

# ---- case 3: NAT rebinding of peer-a mid-stream ----------------------------------------------------
nat_port() { # NS SRC: the public source port NAT gives SRC's WireGuard flow to the relay
    nsx "$1" conntrack -L -p udp -s "$2" --sport "$WG_PORT" -d "$RELAY_IP" 2>/dev/null |
        sed -nE 's/.*dst=[0-9.]+ sport=[0-9]+ dport=([0-9]+).*/\1/p' | head -1
}
case_rebind() {
    local name="NAT rebinding of peer-a"
    [ "$TUNNEL_OK" = 1 ] || {
        fail "$name" "no tunnel (exchange failed)"
        return
    }
    local f="$LOG/ping.rebind" pid s0 hs0 h0 port0 port1 t0 res s1 hs1 h1
    ping_bg "$NS_A" "$TUN_B" "$f"
    pid=$BG_PID
    sleep 1.5
    s0=$(stats)
    hs0=$(handshake_at "$NS_A" "$WG_A" "$PUB_B")
    h0=$(handshakes "$LOG/$WG_A.log")
    port0=$(nat_port "$NS_NATA" 198.18.1.2)
    # New mappings get a port from another range; forget the current one.
    t0=$(now)
    nsx "$NS_NATA" nft flush ruleset
    nat_rules "$NS_NATA" "to :20000-29999"
    nsx "$NS_NATA" conntrack -D -p udp -s 198.18.1.2 >/dev/null 2>&1 || true
    sleep 3 # observe at least 3 s, so an outage that starts late is seen too
    wait_for 20 recovered "$f" "$t0" || true
    sleep 1.5
    kill -INT "$pid" 2>/dev/null || true
    res=$(recovery "$f" "$t0")
    port1=$(nat_port "$NS_NATA" 198.18.1.2)
    s1=$(fresh_stats)
    hs1=$(handshake_at "$NS_A" "$WG_A" "$PUB_B")
    h1=$(handshakes "$LOG/$WG_A.log")
    local hsnote="no new handshake"
    { [ "$hs1" != "$hs0" ] || [ "$h1" != "$h0" ]; } && hsnote="a new handshake happened"
    if [ "$res" = pending ]; then
        fail "$name" "NAT port $port0 -> ${port1:-?}: pings did not flow again within 20 s"
    elif [ -z "$port1" ] || [ "$port1" = "$port0" ]; then
        fail "$name" "NAT port did not change ($port0 -> ${port1:-none})"
    else
        pass "$name" "NAT port $port0 -> $port1: pings flow again after ${res% *} s (${res#* } lost), $hsnote"
    fi
    info "relay: roams=+$(($(stat "$s1" roams) - $(stat "$s0" roams)))" \
        "paired=+$(($(stat "$s1" paired) - $(stat "$s0" paired)))" \
        "confirmed=+$(($(stat "$s1" confirmed) - $(stat "$s0" confirmed)));" \
        "all changes: $(stats_delta "$s0" "$s1")"
}

# ---- case 4: relay restart mid-stream -------------------------------------------------------------
# case_restart keep|cold: with the state file the new relay carries on with the sessions;
# without it (deleted before the start), the peers must handshake again.
case_restart() {
    local mode=$1 n=$2 name
    if [ "$mode" = keep ]; then
        name="relay restart, state file kept"
    else
        name="relay restart, no state"
    fi
    [ "$TUNNEL_OK" = 1 ] || {
        fail "$name" "no tunnel (exchange failed)"
        return
    }
    local fa="$LOG/ping.restart.ab" fb="$LOG/ping.restart.ba" pa pb hs0 t0 ra rb s1
    ping_bg "$NS_A" "$TUN_B" "$fa"
    pa=$BG_PID
    ping_bg "$NS_B" "$TUN_A" "$fb"
    pb=$BG_PID
    sleep 1.5
    hs0=$(handshake_at "$NS_A" "$WG_A" "$PUB_B")
    t0=$(now)
    local old_log=$RELAY_LOG
    stop_relay
    [ "$mode" = keep ] || rm -f "$LOG/relay.state"
    start_relay "$n"
    info "relay restarted in $(elapsed "$t0") s; $(grep -o 'restored .*\|no state file.*' "$RELAY_LOG" | head -1)"
    info "old relay's $(grep -o 'final stats:.*' "$old_log" |
        sed -E 's/ (fanout_copies|parked|confirmed|send_failed|recv_errors|indices|endpoints)=[0-9]+//g')"
    sleep 3
    wait_for 45 both_recovered "$fa" "$fb" "$t0" || true
    sleep 1
    kill -INT "$pa" "$pb" 2>/dev/null || true
    ra=$(recovery "$fa" "$t0")
    rb=$(recovery "$fb" "$t0")
    s1=$(fresh_stats)
    local hs1 hsnote
    hs1=$(handshake_at "$NS_A" "$WG_A" "$PUB_B")
    hsnote="no new handshake"
    [ "$hs1" != "$hs0" ] && hsnote="new handshake $((hs1 - ${t0%.*})) s after the restart"
    if [ "$ra" = pending ] || [ "$rb" = pending ]; then
        fail "$name" "pings did not flow again within 45 s (a->b: $ra, b->a: $rb)"
    else
        local worst
        worst=$(awk -v a="${ra% *}" -v b="${rb% *}" 'BEGIN { printf "%.1f", (a > b ? a : b) }')
        pass "$name" "pings flow both ways again after $worst s (a->b ${ra% *} s, b->a ${rb% *} s), $hsnote"
    fi
    info "new relay: cookie_replies=$(stat "$s1" cookie_replies) parked=$(stat "$s1" parked)" \
        "paired=$(stat "$s1" paired) confirmed=$(stat "$s1" confirmed) $(drops "$s1")"
}

# ---- case 5: a peer whose key is not allowed --------------------------------------------------------
case_not_allowed() {
    local name="peer-c (key not allowed) is kept out"
    local s0 s1 hb ha pc_b pc_a pid_b pid_a
    s0=$(fresh_stats)
    nsx "$NS_C" wg set "$WG_C" \
        peer "$PUB_A" allowed-ips "$TUN_A/32" endpoint "$RELAY_EP" persistent-keepalive 25 \
        peer "$PUB_B" allowed-ips "$TUN_B/32" endpoint "$RELAY_EP" persistent-keepalive 25
    # 12 s covers the cookie round (the retry with mac2 comes after REKEY_TIMEOUT, 5 s).
    ip netns exec "$NS_C" ping -n -c 12 -i 1 -W 1 "$TUN_B" >"$LOG/ping.c.b" 2>&1 &
    pid_b=$!
    ip netns exec "$NS_C" ping -n -c 12 -i 1 -W 1 "$TUN_A" >"$LOG/ping.c.a" 2>&1 &
    pid_a=$!
    PIDS+=("$pid_b" "$pid_a")
    wait "$pid_b" 2>/dev/null || true
    wait "$pid_a" 2>/dev/null || true
    s1=$(fresh_stats)
    pc_b=$(grep -c 'bytes from' "$LOG/ping.c.b" || true)
    pc_a=$(grep -c 'bytes from' "$LOG/ping.c.a" || true)
    hb=$(handshake_at "$NS_B" "$WG_B" "$PUB_C")
    ha=$(handshake_at "$NS_A" "$WG_A" "$PUB_C")
    local dropped=$(($(stat "$s1" dropped) - $(stat "$s0" dropped)))
    local ab
    ab=$(nsx "$NS_A" ping -n -c 3 -i 0.2 -W 2 "$TUN_B" | grep -c 'bytes from' || true)
    nsx "$NS_C" wg set "$WG_C" peer "$PUB_A" remove peer "$PUB_B" remove
    if [ "$pc_b" -eq 0 ] && [ "$pc_a" -eq 0 ] && [ "$hb" = 0 ] && [ "$ha" = 0 ] && [ "$dropped" -gt 0 ]; then
        pass "$name" "c->b 0/12, c->a 0/12 replies, no handshake, relay dropped $dropped; a->b still $ab/3"
    else
        fail "$name" "c->b $pc_b/12, c->a $pc_a/12 replies, handshake at b=$hb a=$ha, relay dropped $dropped"
    fi
    info "relay counters during the attempt: $(stats_delta "$s0" "$s1")"
}

# ---- case 5b: reload (SIGHUP) adds peer-c's key, then removes it, while a and b ping ------------
case_reload() {
    local name="reload adds a third key and a listener, then removes both"
    [ "$TUNNEL_OK" = 1 ] || {
        fail "$name" "no tunnel (exchange failed)"
        return
    }
    local fa="$LOG/ping.reload.ab" fb="$LOG/ping.reload.ba" pa pb hs0 h0 t0 line1 line2 pc gone
    ping_bg "$NS_A" "$TUN_B" "$fa"
    pa=$BG_PID
    ping_bg "$NS_B" "$TUN_A" "$fb"
    pb=$BG_PID
    sleep 1.5
    hs0=$(handshake_at "$NS_A" "$WG_A" "$PUB_B")
    h0=$(handshakes "$LOG/$WG_A.log")
    t0=$(now)
    # a new listener restarts the shards on the new set of sockets; a and b's stays open
    RELAY_MORE_LISTEN="$RELAY_IP:$RELAY_PORT_MORE" relay_keys "$PUB_A" "$PUB_B" "$PUB_C"
    line1=$(reload_relay)
    # peer-c now gets through the new listener: its cookie round, then pings to a
    nsx "$NS_C" wg set "$WG_C" peer "$PUB_A" allowed-ips "$TUN_A/32" \
        endpoint "$RELAY_IP:$RELAY_PORT_MORE" persistent-keepalive 25
    pc=$(nsx "$NS_C" ping -n -c 14 -i 1 -W 1 "$TUN_A" | grep -c 'bytes from' || true)
    # and out again, key and listener: its sessions end, a and b carry on
    relay_keys "$PUB_A" "$PUB_B"
    line2=$(reload_relay)
    sleep 1
    gone=$(nsx "$NS_C" ping -n -c 4 -i 0.5 -W 1 "$TUN_A" | grep -c 'bytes from' || true)
    sleep 1
    kill -INT "$pa" "$pb" 2>/dev/null || true
    nsx "$NS_C" wg set "$WG_C" peer "$PUB_A" remove
    local ra rb hs1 h1 hsnote="no new a-b handshake"
    ra=$(recovery "$fa" "$t0")
    rb=$(recovery "$fb" "$t0")
    hs1=$(handshake_at "$NS_A" "$WG_A" "$PUB_B")
    h1=$(handshakes "$LOG/$WG_A.log")
    # wireguard-go rekeys every 120 s by itself (REKEY_AFTER_TIME): only an earlier one counts
    if [ "$hs1" != "$hs0" ] && [ $((hs1 - hs0)) -lt 120 ]; then
        hsnote="a new a-b handshake ($((hs1 - hs0)) s after the last)"
    fi
    info "reload 1: $line1"
    info "reload 2: $line2"
    if [ "$ra" = "0.0 0" ] && [ "$rb" = "0.0 0" ] && [ "$hsnote" = "no new a-b handshake" ] &&
        [ "$pc" -gt 0 ] && [ "$gone" -eq 0 ] && [[ "$line1" == *"applied listen: +$RELAY_IP:$RELAY_PORT_MORE; allow: +1"* ]] &&
        [[ "$line2" == *"sessions ended"* ]]; then
        pass "$name" "a<->b pings: none lost over both reloads, $hsnote; c->a $pc/14 after the first, $gone/4 after the second"
    else
        fail "$name" "a->b $ra, b->a $rb (seconds, lost), $hsnote (handshakes logged $h0 -> $h1); c->a $pc/14, then $gone/4"
    fi
}

# ---- case 6: baseline, the same peers directly (NAT B forwards its port to peer-b) ----------------
case_direct() {
    local name="iperf3 direct baseline (${IPERF_SECS} s, a->b)"
    [ "$TUNNEL_OK" = 1 ] || {
        fail "$name" "no tunnel (exchange failed)"
        return
    }
    nsx "$NS_NATB" nft -f - <<EOF
table ip nat {
    chain prerouting {
        type nat hook prerouting priority dstnat; policy accept;
        iifname "${I}w" udp dport $WG_PORT dnat to 198.18.2.2:$WG_PORT
    }
}
EOF
    nsx "$NS_A" wg set "$WG_A" peer "$PUB_B" endpoint "$NATB_IP:$WG_PORT"
    local ok=0
    wait_for 10 nsx "$NS_A" ping -n -c 1 -W 1 "$TUN_B" && ok=1
    local epb
    epb=$(nsx "$NS_B" wg show "$WG_B" endpoints | awk -v k="$PUB_A" '$1 == k { print $2 }')
    if [ "$ok" = 0 ]; then
        fail "$name" "no ping over the direct path within 10 s"
        return
    fi
    local s0 s1 a0 b0
    s0=$(fresh_stats)
    a0=$(udp_errs "$NS_A")
    b0=$(udp_errs "$NS_B")
    if ! iperf "$NS_A" "$TUN_B" "$NS_B"; then
        fail "$name" "iperf3 failed: $(tail -2 "$LOG/iperf.$IPERF_RUN.log" | tr '\n' ' ')"
        return
    fi
    s1=$(fresh_stats)
    local via_relay=$(($(stat "$s1" forwarded) - $(stat "$s0" forwarded)))
    local direct=$IPERF_MBITS ratio
    ratio=$(awk -v r="${RELAY_MBITS:-0}" -v d="$direct" 'BEGIN { printf "%.2f", (d > 0 ? r / d : 0) }')
    if [ "$via_relay" -gt 10 ]; then
        fail "$name" "the relay forwarded $via_relay packets during the direct run"
    else
        pass "$name" "$direct Mbit/s (TCP retransmits $IPERF_RETR); relay/direct = ${RELAY_MBITS:-?}/$direct = $ratio"
    fi
    info "peer-b sees peer-a at $epb; relay forwarded $via_relay packets meanwhile"
    info "UDP RcvbufErrors/SndbufErrors: peer-a $a0 -> $(udp_errs "$NS_A"), peer-b $b0 -> $(udp_errs "$NS_B")"
}

# ---- case 7: proxy mode, a wireguard-go server behind a second relay ------------------------------
# The client (peer-d, behind NAT B) has only the server's key and the relay as its endpoint. The
# relay has only the server's address and key (--server/--server-key, no --allow): it learns
# the client from the client's own initiation, as wgproxy does. The server has the client's
# key and no endpoint for it; it answers whatever address the initiation came from (the relay).
PROXY_PID=
PROXY_LOG=
pstats() { grep -E '(final )?stats: received=' "$PROXY_LOG" | tail -1 | sed -E 's/.*stats: //'; }
# srv_sees: the endpoint the server has for peer-d (the relay's IPv4 listener when relayed)
srv_sees() { nsx "$NS_SRV" wg show "$WG_S" endpoints | awk -v k="$PUB_D" '$1 == k { print $2 }'; }
# pings NS DST: replies to 5 pings (0.2 s apart, 2 s wait)
pings() { nsx "$1" ping -n -c 5 -i 0.2 -W 2 "$2" 2>/dev/null | grep -c 'bytes from' || true; }
case_proxy() {
    local name="proxy: client behind NAT -> relay -> wireguard-go server (relay knows only the server's key)"
    local t0 listen=(--listen "$RELAY_IP:$PROXY_PORT")
    [ "$HAVE_V6" = 1 ] && listen+=(--listen "[$RELAY_IP6]:$PROXY_PORT")
    t0=$(now)
    PROXY_LOG="$LOG/relay.proxy.log"
    ip netns exec "$NS_RELAY" "$RELAY_BIN" run "${listen[@]}" \
        --server "$SRV_IP:$WG_PORT" --server-key "$PUB_S" --cookie "$COOKIE" \
        --log-level info --stats-interval 1 --control-socket "$LOG/ctl.proxy.sock" 2>"$PROXY_LOG" &
    PROXY_PID=$!
    PIDS+=("$PROXY_PID")
    if ! wait_for 10 grep -q "relaying on" "$PROXY_LOG"; then
        fail "$name" "proxy relay did not start: $(tail -3 "$PROXY_LOG" | tr '\n' ' ')"
        return
    fi
    start_wg "$NS_SRV" "$WG_S"
    start_wg "$NS_D" "$WG_D"
    nsx "$NS_SRV" wg set "$WG_S" private-key "$LOG/key.S" listen-port "$WG_PORT" \
        peer "$PUB_D" allowed-ips "$TUN_D/32"
    ip -n "$NS_SRV" addr add "$TUN_S/24" dev "$WG_S"
    ip -n "$NS_SRV" link set "$WG_S" up
    nsx "$NS_D" wg set "$WG_D" private-key "$LOG/key.D" listen-port "$WG_PORT_D"
    ip -n "$NS_D" addr add "$TUN_D/24" dev "$WG_D"
    ip -n "$NS_D" link set "$WG_D" up
    local t_up
    t_up=$(now)
    nsx "$NS_D" wg set "$WG_D" peer "$PUB_S" allowed-ips "$TUN_S/32" \
        endpoint "$RELAY_IP:$PROXY_PORT" persistent-keepalive 25
    if ! wait_for 20 has_handshake "$NS_D" "$WG_D" "$PUB_S"; then
        fail "$name" "no handshake within 20 s; proxy relay: $(pstats)"
        info "proxy relay log: $(grep -E 'server|WARN|ERROR' "$PROXY_LOG" | tail -3 | tr '\n' ' ')"
        return
    fi
    local t_hs ds sd seen s
    t_hs=$(elapsed "$t_up")
    ds=$(pings "$NS_D" "$TUN_S")
    sd=$(pings "$NS_SRV" "$TUN_D")
    seen=$(srv_sees)
    s=$(pstats)
    if [ "$ds" -gt 0 ] && [ "$sd" -gt 0 ] && [ "$seen" = "$RELAY_IP:$PROXY_PORT" ]; then
        pass "$name" "handshake after ${t_hs} s, ping client->server $ds/5, server->client $sd/5; server sees the client at $seen"
    else
        fail "$name" "handshake after ${t_hs} s, ping client->server $ds/5, server->client $sd/5; server sees the client at ${seen:-nothing}"
    fi
    info "proxy relay: $(grep -o 'server .* is at .*' "$PROXY_LOG" | head -1);" \
        "forwarded=$(stat "$s" forwarded) cookie_replies=$(stat "$s" cookie_replies)" \
        "confirmed=$(stat "$s" confirmed) $(drops "$s")"

    # IPv6 leg: the same client, now reaching the relay over IPv6; the server stays IPv4-only.
    # The peer is re-added, so this is a fresh handshake from a new source.
    local name6="proxy, IPv6 client leg -> IPv4 server"
    if [ "$HAVE_V6" != 1 ]; then
        info "skipped: $name6 (no IPv6 in this kernel)"
    else
        nsx "$NS_D" wg set "$WG_D" peer "$PUB_S" remove
        t_up=$(now)
        nsx "$NS_D" wg set "$WG_D" peer "$PUB_S" allowed-ips "$TUN_S/32" \
            endpoint "[$RELAY_IP6]:$PROXY_PORT" persistent-keepalive 25
        if ! wait_for 20 has_handshake "$NS_D" "$WG_D" "$PUB_S"; then
            fail "$name6" "no handshake within 20 s; proxy relay: $(pstats)"
        else
            t_hs=$(elapsed "$t_up")
            ds=$(pings "$NS_D" "$TUN_S")
            sd=$(pings "$NS_SRV" "$TUN_D")
            seen=$(srv_sees)
            local dsee
            dsee=$(nsx "$NS_D" wg show "$WG_D" endpoints | awk '{ print $2 }')
            if [ "$ds" -gt 0 ] && [ "$sd" -gt 0 ] && [ "$seen" = "$RELAY_IP:$PROXY_PORT" ]; then
                pass "$name6" "handshake after ${t_hs} s, ping client->server $ds/5, server->client $sd/5; client uses $dsee, server sees $seen"
            else
                fail "$name6" "handshake after ${t_hs} s, ping client->server $ds/5, server->client $sd/5; client uses $dsee, server sees ${seen:-nothing}"
            fi
        fi
    fi
    nsx "$NS_D" wg set "$WG_D" peer "$PUB_S" remove # no keepalives to a stopped relay
    kill -TERM "$PROXY_PID" 2>/dev/null || true
    wait_for 5 grep -q "final stats" "$PROXY_LOG" || kill -KILL "$PROXY_PID" 2>/dev/null || true
    wait "$PROXY_PID" 2>/dev/null || true
    s=$(pstats)
    info "proxy relay final: received=$(stat "$s" received) forwarded=$(stat "$s" forwarded)" \
        "cookie_replies=$(stat "$s" cookie_replies) confirmed=$(stat "$s" confirmed) $(drops "$s");" \
        "case took $(elapsed "$t0") s"
}

# ---- case 11 (opt-in): relay CPU per GB, against wgproxy 0.3.0 ----------------------------------
# The proxy topology again (peer-d behind NAT B -> relay :51821 -> the wireguard-go server), a
# TCP iperf3 d->srv through each relay in turn: wgrelay with its default flags (one shard per
# core, io_uring), wgrelay --threads 1, wgrelay --backend mmsg, and wgproxy 0.3.0 (one thread,
# one socket, one datagram per system call). The figure is the relay's CPU over the run
# (utime + stime of the whole process, /proc/PID/stat) divided by the GB iperf3 received; per
# datagram the relay namespace received, its CPU and how often it slept. The four take turns,
# E2E_CPU_REPS rounds, medians reported. A measurement, not a test: info lines, and a pass when
# every run moved data. Off by default (E2E_CPU_REPS=0). See docs/benchmarks.md.
CPU_REPS=${E2E_CPU_REPS:-0}
CPU_SECS=${E2E_CPU_SECS:-10}
WGPROXY_BIN=${E2E_WGPROXY:-$(command -v wgproxy 2>/dev/null || true)}
[ -n "$WGPROXY_BIN" ] || [ ! -x /opt/wgproxy/bin/wgproxy ] || WGPROXY_BIN=/opt/wgproxy/bin/wgproxy
CLK_TCK=$(getconf CLK_TCK)
# cpu_ticks PID: "USER SYSTEM" ticks of the process (all its threads) so far
cpu_ticks() { awk '{ print $14, $15 }' "/proc/$1/stat"; }
# switches PID: context switches of all the process's threads so far (voluntary: it slept)
switches() { cat /proc/"$1"/task/*/status 2>/dev/null | awk '/^voluntary_ctxt_switches/ { n += $2 } END { print n + 0 }'; }
# rx_packets: packets the relay namespace received on its link (nearly all of them the relayed
# datagrams)
rx_packets() { nsx "$NS_RELAY" cat "/sys/class/net/${I}p/statistics/rx_packets"; }
# listening NS PORT: some UDP socket is bound to PORT in NS
listening() { nsx "$1" ss -uan "sport = :$2" | grep -q ":$2"; }
# cpu_run KIND LOGFILE: one relay of KIND (default|one|wgproxy) relaying one iperf3 run; prints
# "S_PER_GB MBITS USER_S SYSTEM_S US_PER_DATAGRAM SLEEPS_PER_DATAGRAM" or nothing when the run failed (the reason in LOGFILE.why)
cpu_run() {
    local kind=$1 log=$2 pid c0 c1 mbits secs
    case $kind in
    default | one | mmsg)
        local extra=()
        [ "$kind" = one ] && extra=(--threads 1)
        [ "$kind" = mmsg ] && extra=(--backend mmsg)
        ip netns exec "$NS_RELAY" "$RELAY_BIN" run --listen "$RELAY_IP:$PROXY_PORT" \
            --server "$SRV_IP:$WG_PORT" --server-key "$PUB_S" "${extra[@]}" \
            --log-level warn --control-socket "$LOG/ctl.cpu.sock" 2>"$log" &
        ;;
    wgproxy)
        WGPROXY_SERVER="$SRV_IP:$WG_PORT" WGPROXY_PUBKEY="$PUB_S" \
            WGPROXY_LISTEN="$RELAY_IP:$PROXY_PORT" WGPROXY_LOGLEVEL=1 \
            ip netns exec "$NS_RELAY" "$WGPROXY_BIN" 2>"$log" &
        ;;
    esac
    pid=$!
    PIDS+=("$pid")
    if ! wait_for 10 listening "$NS_RELAY" "$PROXY_PORT"; then
        echo "$kind did not start: $(tail -2 "$log" | tr '\n' ' ')" >"$log.why"
    else
        nsx "$NS_D" wg set "$WG_D" peer "$PUB_S" allowed-ips "$TUN_S/32" \
            endpoint "$RELAY_IP:$PROXY_PORT" persistent-keepalive 25
        nsx "$NS_D" ping -n -c 1 -W 1 "$TUN_S" >/dev/null 2>&1 || true # starts the handshake
        if ! wait_for 20 has_handshake "$NS_D" "$WG_D" "$PUB_S"; then
            echo "$kind: no handshake within 20 s" >"$log.why"
        else
            local w0 p0 w1 p1
            c0=$(cpu_ticks "$pid")
            w0=$(switches "$pid")
            p0=$(rx_packets)
            if IPERF_SECS=$CPU_SECS iperf "$NS_D" "$TUN_S" "$NS_SRV"; then
                c1=$(cpu_ticks "$pid")
                w1=$(switches "$pid")
                p1=$(rx_packets)
                mbits=$IPERF_MBITS
                # the receiver's own interval (a little over CPU_SECS)
                secs=$(awk '/receiver$/ { split($3, t, "-"); print t[2] }' "$LOG/iperf.$IPERF_RUN.log")
                awk -v c0="$c0" -v c1="$c1" -v hz="$CLK_TCK" -v m="$mbits" -v t="${secs:-$CPU_SECS}" \
                    -v w=$((w1 - w0)) -v p=$((p1 - p0)) \
                    'BEGIN { split(c0, a, " "); split(c1, b, " "); u = (b[1] - a[1]) / hz; k = (b[2] - a[2]) / hz
                        gb = m * t / 8000; if (gb > 0 && p > 0) printf "%.3f %s %.2f %.2f %.2f %.3f\n",
                            (u + k) / gb, m, u, k, (u + k) * 1e6 / p, w / p }'
            else
                echo "$kind: iperf3 failed: $(tail -2 "$LOG/iperf.$IPERF_RUN.log" | tr '\n' ' ')" >"$log.why"
            fi
        fi
        nsx "$NS_D" wg set "$WG_D" peer "$PUB_S" remove
    fi
    kill -TERM "$pid" 2>/dev/null || true
    wait_for 5 gone "$pid" || kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}
# median VALUES...
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%.6g\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
case_cpu() {
    if [ "$CPU_REPS" -le 0 ]; then
        info "skipped: relay CPU per GB against wgproxy (opt-in: E2E_CPU_REPS=3; docs/e2e.md)"
        return
    fi
    local name="relay CPU per GB: wgrelay vs wgproxy 0.3.0 ($CPU_REPS rounds of ${CPU_SECS} s iperf3 d->srv)"
    if [ -z "$WGPROXY_BIN" ] || [ ! -x "$WGPROXY_BIN" ]; then
        info "skipped: $name (wgproxy not found: cargo install wgproxy --version 0.3.0 --locked," \
            "or set E2E_WGPROXY)"
        return
    fi
    if [ ! -S "/var/run/wireguard/$WG_D.sock" ] || [ ! -S "/var/run/wireguard/$WG_S.sock" ]; then
        fail "$name" "the proxy case's devices are not running"
        return
    fi
    local r kind out bad=() line s m u k us wp
    declare -A spg=() mb=()
    for r in $(seq "$CPU_REPS"); do
        for kind in default one mmsg wgproxy; do
            out=$(cpu_run "$kind" "$LOG/cpu.$kind.$r.log")
            if [ -z "$out" ]; then
                bad+=("round $r: $(cat "$LOG/cpu.$kind.$r.log.why" 2>/dev/null || echo "$kind: no result")")
                continue
            fi
            read -r s m u k us wp <<<"$out"
            info "round $r, $kind: $s s/GB ($m Mbit/s; relay CPU user $u s, system $k s;" \
                "$us us and $wp sleeps per datagram received)"
            spg[$kind]+="$s "
            mb[$kind]+="$m "
        done
    done
    if [ "${#bad[@]}" -gt 0 ]; then
        line=
        for r in "${bad[@]}"; do line+="${line:+; }$r"; done
        fail "$name" "$line"
        return
    fi
    local w label
    # shellcheck disable=SC2086 # the lists are words on purpose
    w=$(median ${spg[wgproxy]})
    line="medians:"
    for kind in default one mmsg wgproxy; do
        case $kind in
        default) label="wgrelay" ;;
        one) label="wgrelay --threads 1" ;;
        mmsg) label="wgrelay --backend mmsg" ;;
        wgproxy) label="wgproxy" ;;
        esac
        # shellcheck disable=SC2086
        s=$(median ${spg[$kind]})
        # shellcheck disable=SC2086
        line+=" $label $s s/GB ($(median ${mb[$kind]}) Mbit/s"
        [ "$kind" = wgproxy ] || line+=", $(awk -v a="$s" -v b="$w" 'BEGIN { printf "%.2f", a / b }')x wgproxy"
        line+=");"
    done
    pass "$name" "${line%;}"
}

# ---- case 8: boringtun and wireguard-go starting at once ------------------------------------------
# peer-e runs boringtun-cli (a second WireGuard implementation, configured with wg through its
# UAPI socket), peer-f wireguard-go. They have a relay of their own (:51823, --allow E --allow F),
# once with --cookie always and once with the default flags. Each round starts both devices
# afresh and at once: wireguard-go initiates on its first keepalive, boringtun on the first
# ping, and pings run both ways every 0.1 s. A round passes when both directions flow (3
# replies within a second) within BT_BOUND seconds: 12 allows one cookie round and one lost
# handshake attempt (5 s each, plus jitter), but not the 15 s after which a WireGuard peer that
# hears nothing on its session handshakes again, which is what a broken session costs.
# See docs/e2e.md ("boringtun and wireguard-go").
BT_E_PID=
BT_F_PID=
BT_T=
BT_NOTE=
BT_P=
# bt_why: what a failed round's device logs show (BT_P is the round's log prefix)
bt_why() {
    if grep -q 'stopped hearing back after 15 seconds' "$BT_P.wireguard-go.log" 2>/dev/null; then
        echo "wireguard-go sent on its new session and heard nothing back for 15 s, then handshook" \
            "again: the handshakes crossed (boringtun answered and initiated at once; docs/e2e.md)"
    elif ! grep -qE 'Received handshake[ _](initiation|response)' \
        "$BT_P.wireguard-go.log" "$BT_P.boringtun.log" 2>/dev/null; then
        echo "no handshake message reached either device: the relay kept every initiation (docs/e2e.md)"
    else
        echo "see $BT_P.*.log"
    fi
}
# bt_stats LOG [N]: the latest counter line of a relay's log, or its Nth (empty if none yet)
bt_stats() {
    { grep -E '(final )?stats: received=' "$1" || true; } |
        awk -v n="${2:-0}" '{ l = $0 } NR == n { print; f = 1; exit } END { if (!f && !n) print l }' |
        sed -E 's/.*stats: //'
}
# gone PID: exited (a zombie until waited for counts as exited)
gone() { [ ! -e "/proc/$1" ] || [ "$(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null)" = Z ]; }
bt_gone() { gone "$BT_E_PID" && gone "$BT_F_PID"; }
bt_stop() {
    kill -TERM "$BT_E_PID" "$BT_F_PID" 2>/dev/null || true
    wait_for 5 bt_gone || kill -KILL "$BT_E_PID" "$BT_F_PID" 2>/dev/null || true
    wait "$BT_E_PID" 2>/dev/null || true
    wait "$BT_F_PID" 2>/dev/null || true
    rm -f "/var/run/wireguard/$WG_E.sock" "/var/run/wireguard/$WG_F.sock"
    ip -n "$NS_E" link del "$WG_E" 2>/dev/null || true
    ip -n "$NS_F" link del "$WG_F" 2>/dev/null || true
}
bt_start() { # LOGPREFIX: both devices, keys and addresses, no peer yet
    ip netns exec "$NS_E" "$BT_BIN" --foreground --disable-drop-privileges --verbosity debug \
        "$WG_E" >"$1.boringtun.log" 2>&1 &
    BT_E_PID=$!
    LOG_LEVEL=verbose ip netns exec "$NS_F" wireguard-go -f "$WG_F" >"$1.wireguard-go.log" 2>&1 &
    BT_F_PID=$!
    PIDS+=("$BT_E_PID" "$BT_F_PID")
    wait_for 10 test -S "/var/run/wireguard/$WG_E.sock" || return 1
    wait_for 10 test -S "/var/run/wireguard/$WG_F.sock" || return 1
    nsx "$NS_E" wg set "$WG_E" private-key "$LOG/key.E" listen-port "$WG_PORT"
    nsx "$NS_F" wg set "$WG_F" private-key "$LOG/key.F" listen-port "$WG_PORT"
    ip -n "$NS_E" addr add "$TUN_E/24" dev "$WG_E"
    ip -n "$NS_F" addr add "$TUN_F/24" dev "$WG_F"
    ip -n "$NS_E" link set "$WG_E" up
    ip -n "$NS_F" link set "$WG_F" up
}
# flowing FILE: at least 3 replies in the last second of FILE (ping -D, every 0.1 s)
flowing() { awk -v t="$(now)" -F'[][]' '/bytes from/ && $2 >= t - 1 { n++ } END { exit !(n >= 3) }' "$1"; }
both_flowing() { flowing "$1" && flowing "$2"; }
# first_reply FILE T0: seconds from T0 to the first reply in FILE, or "none"
first_reply() {
    awk -v t0="$2" -F'[][]' '/bytes from/ && !f { printf "%.1f s", $2 - t0; f = 1 }
        END { if (!f) print "none" }' "$1"
}
# hs_seq LOG: a device's handshake messages in order ("init>" sent, "<init" received, ...)
hs_seq() {
    sed -nE -e 's/.*Sending handshake[ _]initiation.*/init>/p' \
        -e 's/.*Received handshake[ _]initiation.*/<init/p' \
        -e 's/.*Sending handshake[ _]response.*/resp>/p' \
        -e 's/.*Received handshake[ _]response.*/<resp/p' \
        -e 's/.*(Receiving cookie response|Received cookie_reply).*/<cookie/p' \
        -e 's/.*Received invalid (initiation|response).*/<invalid-\1/p' \
        -e 's/.*Failed to derive keypair.*/derive-failed/p' \
        -e 's/.*stopped hearing back after 15 seconds.*/[15 s silence]/p' "$1" |
        awk 'NR <= 16 { printf "%s%s", (NR > 1 ? " " : ""), $0 }'
}
bt_round() { # LABEL ROUND: sets BT_T (seconds until both directions flowed, or none) and BT_NOTE
    local p="$LOG/bt.$1.$2" t0 w1 w2 pe pf
    BT_P=$p
    BT_T=none
    if ! bt_start "$p"; then
        BT_NOTE="the devices did not start: $(tail -2 "$p.boringtun.log" "$p.wireguard-go.log" 2>/dev/null | tr '\n' ' ')"
        bt_stop
        return
    fi
    t0=$(now)
    nsx "$NS_E" wg set "$WG_E" peer "$PUB_F" allowed-ips "$TUN_F/32" \
        endpoint "$RELAY_IP:$BT_PORT" persistent-keepalive 25 &
    w1=$!
    nsx "$NS_F" wg set "$WG_F" peer "$PUB_E" allowed-ips "$TUN_E/32" \
        endpoint "$RELAY_IP:$BT_PORT" persistent-keepalive 25 &
    w2=$!
    wait "$w1"
    wait "$w2"
    ping_bg "$NS_E" "$TUN_F" "$p.ping.ef"
    pe=$BG_PID
    ping_bg "$NS_F" "$TUN_E" "$p.ping.fe"
    pf=$BG_PID
    wait_for "$BT_WAIT" both_flowing "$p.ping.ef" "$p.ping.fe" && BT_T=$(elapsed "$t0")
    kill -INT "$pe" "$pf" 2>/dev/null || true
    wait "$pe" 2>/dev/null || true
    wait "$pf" 2>/dev/null || true
    BT_NOTE="first reply e->f $(first_reply "$p.ping.ef" "$t0"), f->e $(first_reply "$p.ping.fe" "$t0");"
    BT_NOTE+=" wireguard-go: $(hs_seq "$p.wireguard-go.log"); boringtun: $(hs_seq "$p.boringtun.log")"
    bt_stop
}
bt_case() { # always|default
    local mode=$1 label flags=() log pid r bad=() times=() s s0 n0 why
    if [ "$mode" = always ]; then
        label="--cookie always"
        flags=(--cookie always)
    else
        label="default flags"
    fi
    local name="boringtun (peer-e) + wireguard-go (peer-f) via relay, $label, $BT_ROUNDS restarts"
    log="$LOG/relay.bt-$mode.log"
    ip netns exec "$NS_RELAY" "$RELAY_BIN" run --listen "$RELAY_IP:$BT_PORT" \
        --allow "$PUB_E" --allow "$PUB_F" "${flags[@]}" --log-level info --stats-interval 1 \
        --control-socket "$LOG/ctl.bt-$mode.sock" 2>"$log" &
    pid=$!
    PIDS+=("$pid")
    if ! wait_for 10 grep -q "relaying on" "$log"; then
        fail "$name" "relay did not start: $(tail -3 "$log" | tr '\n' ' ')"
        return
    fi
    for r in $(seq "$BT_ROUNDS"); do
        n0=$(grep -c 'stats: received=' "$log" || true)
        bt_round "$mode" "$r"
        why=
        if [ "$BT_T" = none ]; then
            why="round $r: pings did not flow both ways within $BT_WAIT s"
            info "round $r: pings not flowing both ways after $BT_WAIT s; $BT_NOTE"
        else
            awk -v t="$BT_T" -v b="$BT_BOUND" 'BEGIN { exit !(t > b) }' &&
                why="round $r: pings flowed both ways only after $BT_T s (bound $BT_BOUND s)"
            info "round $r: pings both ways after $BT_T s; $BT_NOTE"
        fi
        if [ -z "$why" ]; then
            times+=("$BT_T")
            continue
        fi
        bad+=("$why")
        sleep 1.2 # the relay logs its counters every second
        s0=$(bt_stats "$log" $((n0 + 1))) # the first counters logged in the round
        info "  round $r failed: $(bt_why); relay counters during the round:" \
            "$(stats_delta "$s0" "$(bt_stats "$log")")"
    done
    kill -TERM "$pid" 2>/dev/null || true
    wait_for 5 grep -q "final stats" "$log" || kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    s=$(bt_stats "$log")
    if [ "${#bad[@]}" -eq 0 ]; then
        pass "$name" "pings both ways within $BT_BOUND s in every round (after ${times[*]} s)"
    else
        local b
        why=
        for b in "${bad[@]}"; do why+="${why:+; }$b"; done
        fail "$name" "${#bad[@]}/$BT_ROUNDS rounds failed: $why"
    fi
    info "relay final: received=$(stat "$s" received) forwarded=$(stat "$s" forwarded)" \
        "cookie_replies=$(stat "$s" cookie_replies) handovers=$(stat "$s" handovers)" \
        "parked=$(stat "$s" parked) paired=$(stat "$s" paired) confirmed=$(stat "$s" confirmed) $(drops "$s")"
}
case_boringtun() {
    if [ -z "$BT_BIN" ] || [ ! -x "$BT_BIN" ]; then
        info "skipped: boringtun + wireguard-go (boringtun-cli not found;" \
            "cargo install boringtun-cli --locked, or set E2E_BORINGTUN)"
        return
    fi
    info "boringtun case: $("$BT_BIN" --version 2>&1 | head -1) as peer-e," \
        "$(wireguard-go --version 2>&1 | awk 'NR == 1 { print $1, $2 }') as peer-f"
    bt_case always
    bt_case default
}

# E2E_ONLY="proxy cpu" runs only those cases (names as in case_NAME; later cases may need
# earlier ones: iperf_relay, rebind, reload, restart and direct need exchange, cpu needs proxy).
want() { [ -z "${E2E_ONLY:-}" ] || [[ " $E2E_ONLY " == *" $1 "* ]]; }
run_case() { # NAME [ARGS]: case_NAME ARGS, unless E2E_ONLY leaves it out
    want "$1" || return 0
    "case_$1" "${@:2}"
}
run_case exchange
run_case iperf_relay
run_case rebind
run_case not_allowed
run_case reload
run_case proxy
run_case cpu
run_case boringtun
run_case restart keep 2
run_case restart cold 3
run_case direct

stop_relay
info "relay final: $(stats)"
SUMMARY_DONE=1
echo "e2e: $PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
