#!/usr/bin/env bash
# Builds the wgrelay container image (packaging/Dockerfile, FROM scratch) with Debian's docker.io.
# No registry is needed: the image holds only the stripped release binary and the shared
# libraries `ldd` names for it, copied from this machine. (A static musl build would need the
# x86_64-unknown-linux-musl target, which rustup cannot fetch here.)
#
# Usage: scripts/container-build.sh [--tag NAME:TAG]... [--no-build]
#   --tag NAME:TAG  image name (repeatable; default wgrelay:VERSION and wgrelay:latest)
#   --no-build      take the existing target/release/wgrelay instead of running
#                   `cargo build --release --locked`
# Environment: DOCKER, the docker client (default: Debian's /usr/bin/docker when it exists,
# which matches Debian's dockerd, else `docker` from PATH); DOCKER_HOST as usual.
# The build context is staged in target/container/ (rebuilt each time).
set -euo pipefail
cd "$(dirname "$0")/.."

die() { echo "container-build: $*" >&2; exit 1; }

tags=()
build=1
while [ "$#" -gt 0 ]; do
    case "$1" in
        --tag) [ "$#" -ge 2 ] || die "--tag needs NAME:TAG"; tags+=("$2"); shift 2 ;;
        --tag=*) tags+=("${1#--tag=}"); shift ;;
        --no-build) build=0; shift ;;
        -h|--help) sed -n '2,/^set -e/s/^# \{0,1\}//p' "$0"; exit 0 ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
done

if [ -z "${DOCKER:-}" ]; then
    if [ -x /usr/bin/docker ]; then DOCKER=/usr/bin/docker; else DOCKER=docker; fi
fi
command -v "$DOCKER" >/dev/null || die "$DOCKER not found (Debian: apt-get install docker.io)"
for tool in objcopy ldd; do
    command -v "$tool" >/dev/null || die "$tool not found (Debian: apt-get install binutils libc-bin)"
done

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
[ "${#tags[@]}" -gt 0 ] || tags=("wgrelay:$version" "wgrelay:latest")

target=${CARGO_TARGET_DIR:-target}
bin=$target/release/wgrelay
if [ "$build" -eq 1 ]; then
    command -v cargo >/dev/null || die "cargo not found: install Rust 1.85 or newer, or pass --no-build with a built $bin"
    cargo build --release --locked --bin wgrelay
fi
[ -x "$bin" ] || die "$bin not found: build it (cargo build --release --locked) or drop --no-build"

ctx=$target/container
rm -rf "$ctx"
mkdir -p "$ctx/rootfs/usr/local/bin" "$ctx/rootfs/etc/wgrelay" "$ctx/state"
cp packaging/Dockerfile "$ctx/Dockerfile"
objcopy --strip-all "$bin" "$ctx/rootfs/usr/local/bin/wgrelay"
chmod 0755 "$ctx/rootfs/usr/local/bin/wgrelay"

# Exactly what the dynamic loader needs: every absolute path ldd prints (the loader itself
# included; linux-vdso has none), copied to the same path, symlinks resolved.
libs=$(ldd "$bin" | awk '{ for (i = 1; i <= NF; i++) if ($i ~ /^\//) print $i }' | sort -u)
[ -n "$libs" ] || die "ldd names no library for $bin (a static build needs no container change: drop this check)"
for lib in $libs; do
    mkdir -p "$ctx/rootfs$(dirname "$lib")"
    cp -L "$lib" "$ctx/rootfs$lib"
done

cp packaging/wgrelay.toml "$ctx/rootfs/etc/wgrelay/wgrelay.toml"
chmod 0644 "$ctx/rootfs/etc/wgrelay/wgrelay.toml"
printf 'root:x:0:0:root:/:/nonexistent\nwgrelay:x:65532:65532:wgrelay:/var/lib/wgrelay:/nonexistent\n' >"$ctx/rootfs/etc/passwd"
printf 'root:x:0:\nwgrelay:x:65532:\n' >"$ctx/rootfs/etc/group"

tag_args=()
for t in "${tags[@]}"; do tag_args+=(--tag "$t"); done
# The classic builder: Debian's docker.io has no buildx, and FROM scratch needs nothing else.
DOCKER_BUILDKIT=0 "$DOCKER" build --quiet \
    --label "org.opencontainers.image.title=wgrelay" \
    --label "org.opencontainers.image.version=$version" \
    --label "org.opencontainers.image.licenses=MIT OR Apache-2.0" \
    "${tag_args[@]}" "$ctx" >/dev/null
size=$("$DOCKER" image inspect --format '{{.Size}}' "${tags[0]}")
echo "container-build: built ${tags[*]} ($((size / 1024)) KiB): wgrelay $version + $(echo $libs)"
