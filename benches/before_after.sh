#!/usr/bin/env bash
# Compare the criterion benches of another revision with this tree's, in one interleaved run.
#
#   benches/before_after.sh [-n ROUNDS] REV [BENCH:FILTER...]
#
# Builds REV's bench binaries in a worktree of its own (target/before-REV) and this tree's, then runs
# each BENCH:FILTER (default: the figures the trust issue names) ROUNDS times (default 5), before and
# after in turn, so the machine's drift hits both alike. Prints one markdown row per figure: the
# median of the rounds' point estimates for each side, and after/before. The SSH benches need the lab
# (`bash tests/lab/lab.sh up`).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=5
if [ "${1:-}" = -n ]; then
    rounds=$2
    shift 2
fi
rev=${1:?usage: benches/before_after.sh [-n ROUNDS] REV [BENCH:FILTER...]}
shift
figures=("$@")
if [ "${#figures[@]}" = 0 ]; then
    figures=(local:call_rtt local:bulk/upload_1gib local:hundred_contexts/start_and_call_each_once
        ssh:ssh_call_rtt ssh:ssh_bulk/upload_1gib)
fi
benches=$(printf '%s\n' "${figures[@]}" | cut -d: -f1 | sort -u | sed 's/^/--bench /' | tr '\n' ' ')

# The bench executables a tree builds, as "name path" lines.
build() {
    local tree=$1 target=$2
    # shellcheck disable=SC2086
    (cd "$tree" && CARGO_TARGET_DIR=$target cargo bench --locked --no-run $benches --message-format=json 2>/dev/null) |
        python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and "bench" in m["target"]["kind"]:
        print(m["target"]["name"], m["executable"])'
}

short=$(git rev-parse --short "$rev")
old_tree=target/before-$short/src
if [ ! -d "$old_tree" ]; then
    git worktree add --detach "$old_tree" "$rev" >/dev/null
fi
echo "building $short and this tree..." >&2
declare -A before after
while read -r name path; do before[$name]=$path; done < <(build "$old_tree" "$PWD/target/before-$short/target")
while read -r name path; do after[$name]=$path; done < <(build "$PWD" "${CARGO_TARGET_DIR:-$PWD/target}")

# The point estimate criterion prints for a figure, in its unit (µs, ms, s), normalised to ns.
measure() {
    local exe=$1 filter=$2 scratch
    scratch=$(mktemp -d)
    (cd "$scratch" && "$exe" --bench "^${filter}\$" --noplot --warm-up-time 1 --measurement-time 5 2>/dev/null) |
        awk '/time:/ { v = $(NF-3); u = $(NF-2); m = (u == "s") ? 1e9 : (u == "ms") ? 1e6 : (u == "µs") ? 1e3 : 1; print v * m; exit }'
    rm -rf "$scratch"
}

declare -A got
for ((r = 1; r <= rounds; r++)); do
    for fig in "${figures[@]}"; do
        bench=${fig%%:*} filter=${fig#*:}
        for side in before after; do
            if [ $side = before ]; then exe=${before[$bench]}; else exe=${after[$bench]}; fi
            got[$side:$fig]+="$(measure "$exe" "$filter") "
        done
        echo "round $r: $fig" >&2
    done
done

median() { tr ' ' '\n' | grep . | sort -g | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
echo "| figure | $short (median) | this tree (median) | after / before |"
echo "|---|---|---|---|"
for fig in "${figures[@]}"; do
    b=$(echo "${got[before:$fig]}" | median)
    a=$(echo "${got[after:$fig]}" | median)
    awk -v f="$fig" -v b="$b" -v a="$a" -v n="$rounds" '
        function t(ns) { return ns >= 1e9 ? sprintf("%.3g s", ns / 1e9) : ns >= 1e6 ? sprintf("%.3g ms", ns / 1e6) : sprintf("%.3g µs", ns / 1e3) }
        BEGIN { printf "| %s | %s | %s | %.2f (n=%d) |\n", f, t(b), t(a), a / b, n }'
done
