#!/usr/bin/env bash
# Tests scripts/install.sh: installs into a temporary root (building with
# `cargo build --release --locked`, a no-op when target/release is up to date) and checks what
# landed there. The unit is checked with `systemd-analyze verify --root=ROOT`, which resolves
# ExecStart= inside ROOT, so it fails without the installed binary (checked too). The units the
# service depends on (sysinit.target, network-online.target, ...) are copied from the host's
# /usr/lib/systemd/system into the root, since --root looks for every unit there.
# Without systemd-analyze (Debian package: systemd) that part prints "skipped: <why>".
# Ends with "install-test: N passed, N failed"; exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."

passed=0
failed=0
ok() { passed=$((passed + 1)); echo "install-test: ok: $*"; }
bad() { failed=$((failed + 1)); echo "install-test: FAILED: $*"; }
check() { local what=$1; shift; if "$@"; then ok "$what"; else bad "$what"; fi; }

root=$(mktemp -d /tmp/wgrelay-install-test.XXXXXX)
trap 'rm -rf "$root"' EXIT

scripts/install.sh --root "$root"
bin=$root/usr/local/bin/wgrelay

check "binary installed and executable" test -x "$bin"
check "binary runs: $("$bin" --version 2>&1)" bash -c '"$1" --version >/dev/null' _ "$bin"
sections=$(readelf -S -W "$bin")
check "installed binary has no symbol table" bash -c '! grep -q "\.symtab" <<<"$1"' _ "$sections"
check "installed binary has no DWARF (.debug_info, .debug_line)" \
    bash -c '! grep -Eq "\.debug_(info|line|str)" <<<"$1"' _ "$sections"
size=$(stat -c %s "$bin")
check "installed binary is small: $size bytes (< 8 MB)" test "$size" -lt 8000000

build_id=$(readelf -n "$bin" | awk '/Build ID:/ { print $3; exit }')
debug=$root/usr/lib/debug/.build-id/${build_id:0:2}/${build_id:2}.debug
check "debug file at /usr/lib/debug/.build-id/${build_id:0:2}/${build_id:2}.debug" test -s "$debug"
check "debug file has the symbols" bash -c 'readelf -S -W "$1" 2>/dev/null | grep -q "\.symtab" && readelf -S -W "$1" 2>/dev/null | grep -q "\.debug_line"' _ "$debug"
check "debug file carries the binary's build id" \
    bash -c '[ "$(readelf -n "$1" 2>/dev/null | awk "/Build ID:/ { print \$3; exit }")" = "$2" ]' _ "$debug" "$build_id"
if command -v gdb >/dev/null; then
    where=$(gdb -batch -nx -iex "set debug-file-directory $root/usr/lib/debug" \
        -ex 'info line wgrelay::relay::Relay::start' "$bin" 2>/dev/null | grep '^Line' || true)
    check "gdb finds a source line of the stripped binary by build id: ${where%% starts*}" \
        grep -q 'src/relay/mod.rs' <<<"$where"
else
    echo "install-test: skipped: gdb symbol lookup (gdb not installed)"
fi

conf=$root/etc/wgrelay/wgrelay.toml
check "default configuration installed" cmp -s packaging/wgrelay.toml "$conf"
check "the installed binary accepts it (the unit's ExecStartPre)" \
    bash -c '"$1" check-config --config "$2" >/dev/null' _ "$bin" "$conf"
check "unit installed" cmp -s packaging/wgrelay.service "$root/etc/systemd/system/wgrelay.service"
check "state directory: /var/lib/wgrelay -> private/wgrelay, as systemd makes it for DynamicUser=yes" \
    bash -c '[ "$(readlink "$1/var/lib/wgrelay")" = private/wgrelay ] && [ -d "$1/var/lib/wgrelay/" ] && [ "$(stat -c %a "$1/var/lib/private")" = 700 ]' _ "$root"
check "the unit waits for READY=1 (Type=notify, from the relay's main process only)" \
    bash -c 'grep -qx "Type=notify" "$1" && grep -qx "NotifyAccess=main" "$1"' _ "$root/etc/systemd/system/wgrelay.service"
check "the unit's state file path is in it" grep -q -- '--state-file /var/lib/wgrelay/state' "$root/etc/systemd/system/wgrelay.service"

# Again, over an edited configuration: it stays, everything else is replaced.
echo '# edited by the operator' >>"$conf"
scripts/install.sh --root "$root" --no-build >/dev/null
check "a second install keeps the operator's configuration" grep -q '^# edited by the operator' "$conf"

if ! command -v systemd-analyze >/dev/null; then
    echo "install-test: skipped: systemd-analyze verify (systemd-analyze not found; Debian package: systemd)"
elif [ ! -f /usr/lib/systemd/system/sysinit.target ]; then
    echo "install-test: skipped: systemd-analyze verify (no /usr/lib/systemd/system/sysinit.target to resolve the unit's dependencies)"
else
    mkdir -p "$root/usr/lib/systemd"
    cp -a /usr/lib/systemd/system "$root/usr/lib/systemd/"
    if out=$(systemd-analyze verify --root="$root" wgrelay.service 2>&1); then
        ok "systemd-analyze verify --root=ROOT wgrelay.service${out:+ (said: $out)}"
    else
        bad "systemd-analyze verify --root=ROOT wgrelay.service: $out"
    fi
    # The same check must fail without the binary: proof that ExecStart= was resolved in ROOT.
    mv "$bin" "$bin.away"
    out=$(systemd-analyze verify --root="$root" wgrelay.service 2>&1) && rc=0 || rc=$?
    mv "$bin.away" "$bin"
    check "without the installed binary it fails (\"${out%%$'\n'*}\")" \
        bash -c '[ "$1" -ne 0 ] && grep -q "/usr/local/bin/wgrelay is not executable" <<<"$2"' _ "$rc" "$out"
fi

echo "install-test: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
