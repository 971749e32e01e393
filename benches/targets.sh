#!/usr/bin/env bash
# Compare the criterion benches of this tree built for two targets, in one interleaved run: by
# default the glibc build against the static (musl) build that .cargo/config.toml makes the default.
#
#   benches/targets.sh [-n ROUNDS] [TARGET_A TARGET_B] [BENCH:FILTER...]
#
# Builds the bench binaries for each target (one target directory: CARGO_TARGET_DIR or target/,
# each target in its own subdirectory), then runs each BENCH:FILTER (default: the figures of
# benches/interleave.sh) ROUNDS times (default 5), A and B in turn. Prints one markdown row per
# figure: the median of the rounds' point estimates for each side, and B / A. The SSH benches need
# the lab (`bash tests/lab/lab.sh up`); each side's SSH starts upload that side's own bench binary.
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/interleave.sh
rounds=5
if [ "${1:-}" = -n ]; then
    rounds=$2
    shift 2
fi
target_a=x86_64-unknown-linux-gnu
target_b=$(sed -n 's/^target *= *"\(.*\)"/\1/p' .cargo/config.toml)
if [ $# -ge 2 ] && [[ $1 != *:* ]] && [[ $2 != *:* ]]; then
    target_a=$1 target_b=$2
    shift 2
fi
figures=("$@")
if [ "${#figures[@]}" = 0 ]; then
    figures=("${default_figures[@]}")
fi
benches=$(bench_args "${figures[@]}")

bash scripts/setup.sh
declare -A exe_a exe_b
for side in a b; do
    if [ $side = a ]; then target=$target_a; else target=$target_b; fi
    echo "building the benches for $target..." >&2
    rustup target list --installed | grep -qx "$target" || rustup target add "$target" >&2
    # shellcheck disable=SC2086
    list=$(cargo bench --locked --no-run --target "$target" $benches --message-format=json-render-diagnostics | bench_exes)
    while read -r name path; do
        if [ $side = a ]; then exe_a[$name]=$path; else exe_b[$name]=$path; fi
    done <<<"$list"
done
interleave "$rounds" "$target_a" "$target_b" "${figures[@]}"
