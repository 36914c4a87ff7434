#!/usr/bin/env bash
# Tests the container image (packaging/Dockerfile, built by scripts/container-build.sh) with
# Debian's docker.io, on this machine only (loopback; no registry, no network).
#
# It starts its own dockerd for the run (--iptables=false --ip6tables=false --ip-forward=false
# --bridge=none, with its own socket, data root and exec root in a temporary directory),
# stopped by its PID at exit, and removes everything it made. Then:
#   - the image: FROM scratch with exactly the binary, the libraries ldd names, the config,
#     passwd/group; a numeric non-root user; the state directory a volume;
#   - --network none: the relay starts, says where it listens, is unreachable from the host
#     (real boringtun handshakes get nowhere), and `docker stop` ends it cleanly (exit 0);
#   - --network host, non-root, --cap-drop ALL, --read-only, state on a named volume: real
#     boringtun handshakes and data (tests/external.rs); `docker stop` (SIGTERM) saves the state
#     file on the volume, and the restarted container resumes the session with no handshake;
#   - capabilities: the non-root process has none (forced socket buffers fall back, logged);
#     CAP_NET_ADMIN is what SO_RCVBUFFORCE needs, and Docker makes it effective only for UID 0;
#   - a seccomp profile that blocks io_uring (ENOSYS, and EPERM as Docker >= 25 does): --backend
#     auto falls back to mmsg with one log line, --backend uring refuses to start; and the
#     fallback relays 200 pairs' real handshakes and data (wgrelay-loadgen timers).
# Needs root and dockerd (Debian: apt-get install docker.io); without them it prints one
# "container-test: skipped: <why>" line and exits 0. Builds what it needs with cargo first
# (the release binary and load generator, the external test). Ends with
# "container-test: N passed, N failed" and exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."

skip() { echo "container-test: skipped: $*"; exit 0; }
[ "$(id -u)" -eq 0 ] || skip "dockerd needs root"
command -v dockerd >/dev/null || skip "dockerd not found (Debian: apt-get install docker.io)"
if [ -z "${DOCKER:-}" ]; then
    if [ -x /usr/bin/docker ]; then DOCKER=/usr/bin/docker; else DOCKER=docker; fi
fi
command -v "$DOCKER" >/dev/null || skip "no docker client ($DOCKER)"
export DOCKER

target=${CARGO_TARGET_DIR:-target}
cargo build --release --locked --quiet --bin wgrelay
cargo build --release --locked --quiet -p wgrelay-loadgen
cargo test --locked --quiet --test external --no-run 2>/dev/null
loadgen=$target/release/wgrelay-loadgen

passed=0
failed=0
ok() { passed=$((passed + 1)); echo "container-test: ok: $*"; }
bad() { failed=$((failed + 1)); echo "container-test: FAILED: $*"; }
check() { local what=$1; shift; if "$@"; then ok "$what"; else bad "$what"; fi; }
d() { "$DOCKER" "$@"; }

work=$(mktemp -d /tmp/wgrelay-container-test.XXXXXX)
export DOCKER_HOST=unix://$work/docker.sock
dockerd_pid=
cleanup() {
    local rc=$?
    set +e
    if [ -n "$dockerd_pid" ] && kill -0 "$dockerd_pid" 2>/dev/null; then
        ids=$(d ps -aq 2>/dev/null)
        [ -z "$ids" ] || d rm -f -v $ids >/dev/null 2>&1
        d volume prune -f >/dev/null 2>&1
        kill "$dockerd_pid"
        for _ in $(seq 100); do kill -0 "$dockerd_pid" 2>/dev/null || break; sleep 0.2; done
        kill -0 "$dockerd_pid" 2>/dev/null && kill -9 "$dockerd_pid"
        wait "$dockerd_pid" 2>/dev/null
    fi
    # Whatever dockerd left mounted below the work directory (only after a kill -9).
    awk -v w="$work" 'index($2, w) == 1 { print $2 }' /proc/mounts | sort -r | xargs -r umount -l
    rm -rf "$work"
    exit "$rc"
}
trap cleanup EXIT

dockerd --iptables=false --ip6tables=false --ip-forward=false --bridge=none \
    --data-root "$work/data" --exec-root "$work/exec" --pidfile "$work/dockerd.pid" \
    -H "$DOCKER_HOST" >"$work/dockerd.log" 2>&1 &
dockerd_pid=$!
for _ in $(seq 150); do
    d info >/dev/null 2>&1 && break
    kill -0 "$dockerd_pid" 2>/dev/null || break
    sleep 0.2
done
if ! d info >/dev/null 2>&1; then
    why=$(grep -v '^$' "$work/dockerd.log" | tail -1)
    if kill -0 "$dockerd_pid" 2>/dev/null; then
        skip "dockerd did not answer within 30 s: ${why:-no output}"
    fi
    skip "dockerd exited: ${why:-no output}"
fi
echo "container-test: dockerd $(d version --format '{{.Server.Version}}') (pid $dockerd_pid), socket $DOCKER_HOST"

free_port() {
    python3 -c 'import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
# wait_log NAME REGEX SECONDS: until the container's log matches (or it stopped).
wait_log() {
    for _ in $(seq $(($3 * 10))); do
        d logs "$1" 2>&1 | grep -Eq "$2" && return 0
        [ "$(d inspect -f '{{.State.Running}}' "$1" 2>/dev/null)" = true ] || break
        sleep 0.1
    done
    d logs "$1" 2>&1 | grep -Eq "$2"
}
status_of() { grep -E "^$2:" "/proc/$(d inspect -f '{{.State.Pid}}' "$1")/status" | awk '{ print $2 }'; }
image=wgrelay:test

# --- the image -------------------------------------------------------------------------------
t0=$(date +%s%N)
scripts/container-build.sh --no-build --tag "$image"
echo "container-test: image built in $((($(date +%s%N) - t0) / 1000000)) ms"
mkdir -p "$work/save"
d save "$image" | tar -C "$work/save" -x
files=$(python3 - "$work/save" <<'EOF'
import json, sys, tarfile
root = sys.argv[1]
manifest = json.load(open(f"{root}/manifest.json"))[0]
names = set()
for layer in manifest["Layers"]:
    with tarfile.open(f"{root}/{layer}") as t:
        names |= {m.name for m in t.getmembers() if not m.isdir()}
print(" ".join(sorted(names)))
EOF
)
want=$(
    { printf '%s\n' etc/group etc/passwd etc/wgrelay/wgrelay.toml usr/local/bin/wgrelay
      ldd "$target/release/wgrelay" | awk '{ for (i = 1; i <= NF; i++) if ($i ~ /^\//) print substr($i, 2) }'
    } | sort -u | tr '\n' ' '
)
check "image holds exactly: $files" [ "$files" = "${want% }" ]
check "image user is numeric and not root: $(d image inspect -f '{{.Config.User}}' "$image")" \
    [ "$(d image inspect -f '{{.Config.User}}' "$image")" = 65532:65532 ]
check "the state directory is a volume" \
    bash -c '[[ "$("$DOCKER" image inspect -f "{{json .Config.Volumes}}" "$1")" == *"/var/lib/wgrelay"* ]]' _ "$image"
check "the image's wgrelay accepts the image's config" \
    bash -c '"$DOCKER" run --rm --network none "$1" check-config --config /etc/wgrelay/wgrelay.toml | grep -q "configuration OK"' _ "$image"

secure=(--read-only --cap-drop ALL)

# --- --network none ----------------------------------------------------------------------------
port=$(free_port)
d run -d --name wgrelay-none --network none "${secure[@]}" "$image" \
    run --config /etc/wgrelay/wgrelay.toml --state-file /var/lib/wgrelay/state \
    --listen "127.0.0.1:$port" >/dev/null
check "--network none: starts and says where it listens (its own loopback)" \
    wait_log wgrelay-none "relaying on 127.0.0.1:$port" 10
"$loadgen" timers --quiet --relay "127.0.0.1:$port" --pairs 1 --groups open --duration 3 \
    >"$work/none.json" 2>/dev/null || true
working=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["working_end"])' "$work/none.json" 2>/dev/null || echo "?")
check "--network none: a pair on the host's loopback gets nowhere in 3 s (working $working/1)" [ "$working" = 0 ]
d stop -t 10 wgrelay-none >/dev/null
check "--network none: docker stop ends it cleanly (exit $(d inspect -f '{{.State.ExitCode}}' wgrelay-none), \"$(d logs wgrelay-none 2>&1 | grep -o 'saved .*' || true)\")" \
    bash -c '[ "$("$DOCKER" inspect -f "{{.State.ExitCode}}" wgrelay-none)" = 0 ] && "$DOCKER" logs wgrelay-none 2>&1 | grep -q "saved 0 sessions"'

# --- --network host: handshakes, data, SIGTERM, resume ------------------------------------------
port=$(free_port)
volume=wgrelay-state-test
d volume create "$volume" >/dev/null
start="$DOCKER run -d --name wgrelay-host --network host ${secure[*]} -v $volume:/var/lib/wgrelay $image"
start+=" run --config /etc/wgrelay/wgrelay.toml --state-file /var/lib/wgrelay/state"
start+=" --listen 127.0.0.1:$port --allow {KEY_A} --allow {KEY_B} --stats-interval 0 >/dev/null"
if WGRELAY_EXTERNAL_ADDR=127.0.0.1:$port WGRELAY_EXTERNAL_START=$start \
    WGRELAY_EXTERNAL_RESTART="$DOCKER stop -t 10 wgrelay-host >/dev/null && $DOCKER start wgrelay-host >/dev/null" \
    timeout 120 cargo test --locked --quiet --test external -- --ignored --nocapture >"$work/external.log" 2>&1; then
    ok "--network host: real handshake and data through the container, then a restart resumed the session (tests/external.rs)"
else
    bad "--network host: tests/external.rs failed"
fi
grep '^external:' "$work/external.log" | sed 's/^/container-test:   /'
grep -q 'test result: ok. 1 passed' "$work/external.log" || tail -30 "$work/external.log"
logs=$(d logs wgrelay-host 2>&1)
check "docker stop (SIGTERM) saved the session: \"$(grep -o 'saved [0-9]* sessions.*' <<<"$logs" | head -1)\"" \
    grep -q 'saved 1 sessions to /var/lib/wgrelay/state' <<<"$logs"
check "the restarted container restored it: \"$(grep -o 'restored .*' <<<"$logs" | head -1)\"" \
    grep -q 'restored 1 sessions' <<<"$logs"
mountpoint=$(d volume inspect -f '{{.Mountpoint}}' "$volume")
check "the state file is on the volume: $(stat -c 'owner %u, mode %a, %s bytes' "$mountpoint/state" 2>/dev/null || echo missing)" \
    bash -c '[ "$(stat -c "%u %a" "$1")" = "65532 600" ]' _ "$mountpoint/state"
echo "container-test:   backend (default seccomp profile of dockerd $(d version --format '{{.Server.Version}}')): $(grep -o 'backend [a-z]*:' <<<"$logs" | head -1 | tr -d :)"
echo "container-test:   $(grep -o 'socket buffers: .*' <<<"$logs" | head -1) (net.core.rmem_max=$(cat /proc/sys/net/core/rmem_max), wmem_max=$(cat /proc/sys/net/core/wmem_max))"
check "runs as UID 65532 with no effective capability (CapEff $(status_of wgrelay-host CapEff))" \
    bash -c '[ "$1" = 65532 ] && [ "$2" = 0000000000000000 ]' _ "$(status_of wgrelay-host Uid)" "$(status_of wgrelay-host CapEff)"
d stop -t 10 wgrelay-host >/dev/null
check "stops cleanly (exit $(d inspect -f '{{.State.ExitCode}}' wgrelay-host))" \
    [ "$(d inspect -f '{{.State.ExitCode}}' wgrelay-host)" = 0 ]

# --- capabilities: what forced socket buffers need -----------------------------------------------
# SO_RCVBUFFORCE/SO_SNDBUFFORCE need CAP_NET_ADMIN. Docker puts an added capability of a non-root
# user only in the bounding set (no ambient capabilities), so it never becomes effective: a
# non-root relay always falls back to plain SO_RCVBUF, capped at net.core.rmem_max.
caps_run() { # NAME USER CAPS...
    local name=$1 user=$2; shift 2
    d run -d --name "$name" --network host --read-only --user "$user" "$@" "$image" \
        run --listen "127.0.0.1:$(free_port)" --log-level debug --stats-interval 0 >/dev/null
    wait_log "$name" 'relaying on' 10
}
caps_run caps-user 65532:65532 --cap-drop ALL --cap-add NET_ADMIN
caps_run caps-root 0:0 --cap-drop ALL --cap-add NET_ADMIN
check "non-root + --cap-add NET_ADMIN: bounding $(status_of caps-user CapBnd), effective $(status_of caps-user CapEff); SO_RCVBUFFORCE refused, plain option used" \
    bash -c '[ "$1" = 0000000000000000 ] && "$DOCKER" logs caps-user 2>&1 | grep -q "SO_RCVBUFFORCE(.*) failed"' _ "$(status_of caps-user CapEff)"
check "UID 0 + --cap-drop ALL --cap-add NET_ADMIN: effective $(status_of caps-root CapEff) (CAP_NET_ADMIN only); SO_RCVBUFFORCE accepted" \
    bash -c '[ "$1" = 0000000000001000 ] && ! "$DOCKER" logs caps-root 2>&1 | grep -q "SO_RCVBUFFORCE(.*) failed"' _ "$(status_of caps-root CapEff)"
d rm -f caps-user caps-root >/dev/null

# --- seccomp without io_uring ------------------------------------------------------------------
for errno in ENOSYS EPERM; do
    case $errno in
        ENOSYS) ret='"errnoRet": 38' ;;
        EPERM) ret='"errnoRet": 1' ;;
    esac
    cat >"$work/seccomp-$errno.json" <<EOF
{
  "defaultAction": "SCMP_ACT_ALLOW",
  "syscalls": [
    { "names": ["io_uring_setup", "io_uring_enter", "io_uring_register"], "action": "SCMP_ACT_ERRNO", $ret }
  ]
}
EOF
    port=$(free_port)
    "$loadgen" timers --relay "127.0.0.1:$port" --pairs 200 --groups per-pair --seed 11 \
        --write-config "$work/timers.toml" --config-only >/dev/null 2>&1
    chmod 0644 "$work/timers.toml"
    name=uring-blocked-$errno
    d run -d --name "$name" --network host "${secure[@]}" \
        --security-opt "seccomp=$work/seccomp-$errno.json" \
        -v "$work/timers.toml:/etc/wgrelay/timers.toml:ro" "$image" \
        run --config /etc/wgrelay/timers.toml --listen "127.0.0.1:$port" --backend auto --stats-interval 0 >/dev/null
    wait_log "$name" 'relaying on' 10 || true
    logs=$(d logs "$name" 2>&1)
    check "io_uring blocked ($errno): --backend auto logs one line: \"$(grep -o 'io_uring unavailable.*' <<<"$logs")\"" \
        bash -c '[ "$(grep -c "io_uring" <<<"$1")" = 1 ] && grep -q "backend mmsg:" <<<"$1"' _ "$logs"
    if [ "$errno" = EPERM ]; then
        "$loadgen" timers --quiet --relay "127.0.0.1:$port" --pairs 200 --groups per-pair --seed 11 \
            --relay-pid "$(d inspect -f '{{.State.Pid}}' "$name")" --duration 20 >"$work/timers.json" 2>"$work/timers.err" || true
        summary=$(python3 -c '
import json, sys
v = json.load(open(sys.argv[1]))
print(v["working_end"], v["pairs"], round(v["time_to"]["100%"], 2), round((v.get("relay_rss_max") or 0) / 1048576, 1))' "$work/timers.json" 2>/dev/null || echo "? ? ? ?")
        read -r working pairs t100 rss <<<"$summary"
        check "the mmsg fallback relays real handshakes and data: $working/$pairs pairs working (all after ${t100} s; relay RSS ${rss} MiB)" \
            [ "$working" = 200 ]
    fi
    d stop -t 10 "$name" >/dev/null
    out=$(timeout 30 "$DOCKER" run --rm --network host "${secure[@]}" \
        --security-opt "seccomp=$work/seccomp-$errno.json" "$image" \
        run --listen "127.0.0.1:$(free_port)" --backend uring 2>&1) && rc=0 || rc=$?
    check "io_uring blocked ($errno): --backend uring refuses to start (exit $rc): \"$out\"" \
        bash -c '[ "$1" = 1 ] && grep -q "^wgrelay: cannot start: --backend uring: io_uring unavailable" <<<"$2"' _ "$rc" "$out"
done

echo "container-test: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
