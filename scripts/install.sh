#!/usr/bin/env bash
# Installs wgrelay from this checkout where packaging/wgrelay.service expects it:
#
#   DIR/usr/local/bin/wgrelay                         the binary, stripped (no symbols, no debug info)
#   DIR/usr/lib/debug/.build-id/XX/YYYY.debug         its symbols and debug info, found by build id
#                                                     (perf, gdb) - unless --no-debuginfo
#   DIR/etc/systemd/system/wgrelay.service            the unit (replaced: local changes belong in
#                                                     a drop-in, `systemctl edit wgrelay`)
#   DIR/etc/wgrelay/wgrelay.toml                      the default configuration, only if there is
#                                                     none yet (an existing one is never overwritten)
#   DIR/var/lib/private/wgrelay, DIR/var/lib/wgrelay  the unit's StateDirectory=, laid out as systemd
#                                                     lays it out for DynamicUser=yes (a directory in
#                                                     private/ and a symlink to it); systemd chowns
#                                                     it to the service's dynamic user at each start
#
# Usage: scripts/install.sh [--root DIR] [--no-build] [--no-debuginfo]
#   --root DIR      install below DIR instead of / (a package build, an image, a test)
#   --no-build      take the existing target/release/wgrelay instead of running
#                   `cargo build --release --locked`
#   --no-debuginfo  do not install the separate debug file
#
# The build uses Cargo.lock as it is (--locked), unlike a bare `cargo install --path .`. The
# release profile keeps line tables (debug = 1 in Cargo.toml), so target/release/wgrelay itself
# stays good for perf; only the installed copy is stripped (24 MB -> about 3 MB).
# Safe to run again. It starts nothing: it prints the systemctl commands instead.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { sed -n '/^# Usage:/,/^#   --no-debuginfo/s/^# \{0,1\}//p' "$0"; }
die() { echo "install.sh: $*" >&2; exit 1; }

root=/
build=1
debuginfo=1
while [ "$#" -gt 0 ]; do
    case "$1" in
        --root) [ "$#" -ge 2 ] || die "--root needs a directory"; root=$2; shift 2 ;;
        --root=*) root=${1#--root=}; shift ;;
        --no-build) build=0; shift ;;
        --no-debuginfo) debuginfo=0; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "install.sh: unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
done
[ -n "$root" ] || die "--root needs a directory"
mkdir -p "$root"
root=$(cd "$root" && pwd)
prefix=${root%/}   # "" for /, so paths below read "$prefix/usr/..."

for tool in objcopy readelf install; do
    command -v "$tool" >/dev/null || die "$tool not found (Debian: apt-get install binutils coreutils)"
done

target=${CARGO_TARGET_DIR:-target}
bin=$target/release/wgrelay
if [ "$build" -eq 1 ]; then
    command -v cargo >/dev/null || die "cargo not found: install Rust 1.85 or newer (https://rustup.rs), or pass --no-build with a built $bin"
    cargo build --release --locked --bin wgrelay
fi
[ -x "$bin" ] || die "$bin not found: build it (cargo build --release --locked) or drop --no-build"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# Split the build: the debug file keeps everything that strip removes, the binary keeps a
# .gnu_debuglink to it; both carry the same build id, which is how perf and gdb pair them.
objcopy --only-keep-debug "$bin" "$tmp/wgrelay.debug"
objcopy --strip-all --add-gnu-debuglink="$tmp/wgrelay.debug" "$bin" "$tmp/wgrelay"
build_id=$(readelf -n "$bin" | awk '/Build ID:/ { print $3; exit }')

install -D -m 0755 "$tmp/wgrelay" "$prefix/usr/local/bin/wgrelay"
echo "installed $prefix/usr/local/bin/wgrelay ($(stat -c %s "$prefix/usr/local/bin/wgrelay") bytes, stripped)"
if [ "$debuginfo" -eq 1 ]; then
    if [ -n "$build_id" ]; then
        debug_path=$prefix/usr/lib/debug/.build-id/${build_id:0:2}/${build_id:2}.debug
    else
        # No build id (a linker without --build-id): gdb still finds it by the debuglink.
        debug_path=$prefix/usr/lib/debug/usr/local/bin/wgrelay.debug
    fi
    install -D -m 0644 "$tmp/wgrelay.debug" "$debug_path"
    echo "installed $debug_path (symbols and debug info for perf and gdb)"
fi

install -D -m 0644 packaging/wgrelay.service "$prefix/etc/systemd/system/wgrelay.service"
echo "installed $prefix/etc/systemd/system/wgrelay.service"

config=$prefix/etc/wgrelay/wgrelay.toml
if [ -e "$config" ]; then
    echo "kept the existing $config (the shipped default is packaging/wgrelay.toml)"
else
    install -D -m 0644 packaging/wgrelay.toml "$config"
    echo "installed $config"
fi

# StateDirectory=wgrelay with DynamicUser=yes: /var/lib/private/ is 0700 root, so no other
# user can reach the state through it; the directory inside is the dynamic user's at each start.
if [ ! -d "$prefix/var/lib/private" ]; then
    install -d -m 0700 "$prefix/var/lib/private"
fi
if [ ! -d "$prefix/var/lib/private/wgrelay" ]; then
    install -d -m 0755 "$prefix/var/lib/private/wgrelay"
fi
if [ ! -e "$prefix/var/lib/wgrelay" ] && [ ! -L "$prefix/var/lib/wgrelay" ]; then
    ln -s private/wgrelay "$prefix/var/lib/wgrelay"
fi
echo "state directory $prefix/var/lib/wgrelay (the state file: $prefix/var/lib/wgrelay/state)"

if [ "$root" = / ]; then
    echo "next: systemctl daemon-reload && systemctl enable --now wgrelay   (logs: journalctl -u wgrelay)"
fi
