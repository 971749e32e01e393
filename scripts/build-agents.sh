#!/usr/bin/env bash
# Static agents for other hosts: this repository's examples (or, with --tests or --test NAME, its
# integration-test binaries instead) built for each architecture named, as static musl executables.
#
#   scripts/build-agents.sh [--tests | --test NAME...] [ARCH...]
#                                     ARCH: x86_64, aarch64, ... (default: x86_64 aarch64)
#
# Examples are built in release and copied to target/agents/ARCH/NAME; with --tests, the test
# binaries are built with the test suite's profile (dev, so the build is shared with `cargo test
# --target ...`) and copied to target/agents/ARCH/tests/NAME (NAME without cargo's hash suffix).
# Prints the copies' paths, one per line, on stdout; progress goes to stderr. Serve one with
# `--agent ARCH=PATH` (or `Options::agent_for`).
#
# This machine's own architecture builds with musl-gcc, like the default build (scripts/setup.sh);
# others with zig's C compiler through cargo-zigbuild, installed from PyPI into a venv under the
# target directory on first use (it cross-compiles the vendored OpenSSL, libssh2 and zlib too).
# Respects CARGO_TARGET_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."

tests=false
which=()
while [ "$#" -gt 0 ]; do
    case $1 in
        --tests) tests=true; which=(--tests); shift ;;
        --test) tests=true; which+=(--test "$2"); shift 2 ;;
        *) break ;;
    esac
done
arches=("$@")
if [ "${#arches[@]}" = 0 ]; then
    arches=(x86_64 aarch64)
fi

bash scripts/setup.sh
target_dir=${CARGO_TARGET_DIR:-$PWD/target}
case $target_dir in /*) ;; *) target_dir=$PWD/$target_dir ;; esac
host_arch=$(uname -m)

# cargo-zigbuild and the zig it runs, pinned, in a venv of their own.
zig_venv=$target_dir/zig-venv
zigbuild() {
    if [ ! -x "$zig_venv/bin/cargo-zigbuild" ]; then
        echo "build-agents: installing cargo-zigbuild and ziglang into $zig_venv" >&2
        python3 -m venv "$zig_venv" >&2
        "$zig_venv/bin/pip" install -q cargo-zigbuild==0.24.1 ziglang==0.17.1 >&2
    fi
    # cargo-zigbuild finds zig as `python3 -m ziglang`: the venv's python comes first.
    PATH=$zig_venv/bin:$PATH "$zig_venv/bin/cargo-zigbuild" "$@"
}

# Build ARCH with cargo's arguments; print "kind name executable" for each executable built.
build() {
    local arch=$1 triple=$arch-unknown-linux-musl
    shift
    rustup target list --installed | grep -qx "$triple" || rustup target add "$triple" >&2
    local cargo=(cargo)
    if [ "$arch" != "$host_arch" ]; then
        cargo=(zigbuild)
    fi
    "${cargo[@]}" build --locked --target "$triple" "$@" --message-format=json-render-diagnostics |
        python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable"):
        print(m["target"]["kind"][0], m["target"]["name"], m["executable"])'
}

# Copy an executable into place (by rename, so that a copy running as an agent is not in the way)
# and print its path.
place() {
    cp "$1" "$2.tmp"
    mv -f "$2.tmp" "$2"
    echo "$2"
}

for arch in "${arches[@]}"; do
    out=$target_dir/agents/$arch
    mkdir -p "$out"
    if ! $tests; then
        echo "build-agents: examples for $arch (release)" >&2
        built=$(build "$arch" --release --examples)
        while read -r kind name exe; do
            [ "$kind" = example ] || continue
            place "$exe" "$out/$name"
        done <<<"$built"
    else
        echo "build-agents: integration tests for $arch (dev)" >&2
        mkdir -p "$out/tests"
        built=$(build "$arch" "${which[@]}")
        while read -r kind name exe; do
            [ "$kind" = test ] || continue
            place "$exe" "$out/tests/$name"
        done <<<"$built"
    fi
done
