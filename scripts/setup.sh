#!/usr/bin/env bash
# What building this repository needs, installed if missing (idempotent, and quick when nothing is):
# the default build target of .cargo/config.toml (static, musl) for rustup, and for the C that the
# static build compiles (vendored OpenSSL, libssh2, zlib): musl-gcc, perl and make. Installing Debian
# packages needs root; without it, this says what is missing and fails.
set -euo pipefail
cd "$(dirname "$0")/.."

target=$(sed -n 's/^target *= *"\(.*\)"/\1/p' .cargo/config.toml)
if ! rustup target list --installed | grep -qx "$target"; then
    echo "setup: adding the rust target $target" >&2
    rustup target add "$target" >&2
fi

missing=()
for pkg in musl-tools perl make; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "setup: the build needs ${missing[*]}; install them as root (apt-get install ${missing[*]})" >&2
        exit 1
    fi
    echo "setup: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi
