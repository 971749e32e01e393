#!/usr/bin/env bash
# Compare the criterion benches of another revision with this tree's, in one interleaved run.
#
#   benches/before_after.sh [-n ROUNDS] REV [BENCH:FILTER...]
#
# Builds REV's bench binaries in a worktree of its own (target/before-REV) and this tree's, then runs
# each BENCH:FILTER (default: the figures of benches/interleave.sh) ROUNDS times (default 5), before and
# after in turn, so the machine's drift hits both alike. Prints one markdown row per figure: the
# median of the rounds' point estimates for each side, and after/before. The SSH benches need the lab
# (`bash tests/lab/lab.sh up`).
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/interleave.sh
rounds=5
if [ "${1:-}" = -n ]; then
    rounds=$2
    shift 2
fi
rev=${1:?usage: benches/before_after.sh [-n ROUNDS] REV [BENCH:FILTER...]}
shift
figures=("$@")
if [ "${#figures[@]}" = 0 ]; then
    figures=("${default_figures[@]}")
fi
benches=$(bench_args "${figures[@]}")

# The bench executables a tree builds, as "name path" lines.
build() {
    local tree=$1 target=$2
    # shellcheck disable=SC2086
    (cd "$tree" && CARGO_TARGET_DIR=$target cargo bench --locked --no-run $benches --message-format=json 2>/dev/null) | bench_exes
}

short=$(git rev-parse --short "$rev")
old_tree=target/before-$short/src
if [ ! -d "$old_tree" ]; then
    git worktree add --detach "$old_tree" "$rev" >/dev/null
fi
echo "building $short and this tree..." >&2
declare -A exe_a exe_b
list=$(build "$old_tree" "$PWD/target/before-$short/target")
while read -r name path; do exe_a[$name]=$path; done <<<"$list"
list=$(build "$PWD" "${CARGO_TARGET_DIR:-$PWD/target}")
while read -r name path; do exe_b[$name]=$path; done <<<"$list"
interleave "$rounds" "$short" "this tree" "${figures[@]}"
