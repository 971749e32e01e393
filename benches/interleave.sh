# Sourced by benches/before_after.sh and benches/targets.sh: run criterion figures of two builds in
# turn, several rounds, and print the medians side by side.
#
# A figure is BENCH:FILTER (a bench target and a criterion id, e.g. local:call_rtt); the default
# list is the one the issues' speed criteria name.
default_figures=(local:call_rtt local:bulk/upload_1gib local:hundred_contexts/start_and_call_each_once
    ssh:ssh_call_rtt ssh:ssh_start/ssh_cached ssh:ssh_bulk/upload_1gib)

# `--bench NAME` for each bench the figures need.
bench_args() {
    printf '%s\n' "$@" | cut -d: -f1 | sort -u | sed 's/^/--bench /' | tr '\n' ' '
}

# cargo's --message-format=json on stdin; "name path" of each bench executable on stdout.
bench_exes() {
    python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and "bench" in m["target"]["kind"]:
        print(m["target"]["name"], m["executable"])'
}

# The point estimate criterion prints for FILTER run by EXE, in its unit (µs, ms, s), normalised to ns.
measure() {
    local exe=$1 filter=$2 scratch
    scratch=$(mktemp -d)
    (cd "$scratch" && "$exe" --bench "^${filter}\$" --noplot --warm-up-time 1 --measurement-time 5 2>/dev/null) |
        awk '/time:/ { v = $(NF-3); u = $(NF-2); m = (u == "s") ? 1e9 : (u == "ms") ? 1e6 : (u == "µs") ? 1e3 : 1; print v * m; exit }'
    rm -rf "$scratch"
}

median() { tr ' ' '\n' | grep . | sort -g | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }

# interleave ROUNDS LABEL_A LABEL_B FIGURE...: the associative arrays exe_a and exe_b (bench name ->
# executable) must be set. Runs each figure on A then B, ROUNDS times, so the machine's drift hits
# both alike; prints one markdown row per figure (medians, and B / A); each round's values go to stderr.
interleave() {
    local rounds=$1 label_a=$2 label_b=$3
    shift 3
    local -A got=()
    local r fig bench filter va vb
    for ((r = 1; r <= rounds; r++)); do
        for fig in "$@"; do
            bench=${fig%%:*} filter=${fig#*:}
            va=$(measure "${exe_a[$bench]}" "$filter")
            vb=$(measure "${exe_b[$bench]}" "$filter")
            got[a:$fig]+="$va " got[b:$fig]+="$vb "
            echo "round $r: $fig: $label_a $va ns, $label_b $vb ns" >&2
        done
    done
    echo "| figure | $label_a (median) | $label_b (median) | $label_b / $label_a |"
    echo "|---|---|---|---|"
    local a b
    for fig in "$@"; do
        a=$(echo "${got[a:$fig]}" | median)
        b=$(echo "${got[b:$fig]}" | median)
        awk -v f="$fig" -v a="$a" -v b="$b" -v n="$rounds" '
            function t(ns) { return ns >= 1e9 ? sprintf("%.3g s", ns / 1e9) : ns >= 1e6 ? sprintf("%.3g ms", ns / 1e6) : sprintf("%.3g µs", ns / 1e3) }
            BEGIN { printf "| %s | %s | %s | %.2f (n=%d) |\n", f, t(a), t(b), b / a, n }'
    done
}
