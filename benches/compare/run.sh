#!/usr/bin/env bash
# The side-by-side comparison (issue 13), in one run: hypha and every peer a user would pick
# instead, on the same hosts, interleaved, with failures counted; a markdown table of medians and
# ratios to hypha, and SVG charts.
#
#   benches/compare/run.sh [--quick] [--plan "1:5 10:5 ..."] [--tools "..."] [--no-slow]
#                          [--no-floor] [--publish]
#
#   --quick     N = 1, 10, 50, fewer rounds (within 5 minutes on 2 cores); the default is N = 1,
#               10, 50, 100, 200, 500 (within 20)
#   --plan      N:ROUNDS pairs: the counted rounds at each N
#   --tools     the fan-out tools (default: all of $COMPARE_TOOLS)
#   --no-slow   skip the slow-link starts (benches/compare/slow.py; needs the lab)
#   --no-floor  skip the floor rows (OpenSSH's bytes/s, the bare pipe round trip)
#   --publish   also copy the report to benches/RESULTS.md and the charts to benches/compare/
#
# Needs root. What it does, each step idempotent:
# 1. The hosts: benches/fanout.sh's sshd (one sshd in network namespace hypha-fan; 127.0.0.1 ..
#    127.0.0.254 and 127.0.1.1 .. 127.0.1.254 are 508 destinations; MaxStartups 1000:30:2000,
#    open files raised; cgroups for the remote CPU, the controller's CPU and its peak memory).
# 2. The peers: Mitogen and parallel-ssh from PyPI (the venv of benches/peers/setup.sh, pinned in
#    benches/peers/requirements.txt), pssh and ClusterShell from Debian (apt-get), bssh from
#    crates.io (`cargo install bssh --version $BSSH_VERSION --locked` into target/peers; a failed
#    or over-long build is recorded and bssh shown as skipped, with why).
# 3. Fan-out: `hostname` on N hosts, cold (start and run) for hypha exec, the hypha Fleet (then
#    warm rounds on its contexts), hypha exec --persist (then the same again on its contexts),
#    Mitogen (cold, then warm rounds), parallel-ssh (cold, then warm rounds on its sessions),
#    pssh, clush, bssh and the floor of one `ssh HOST true` per host. Before the first N the
#    hosts' agent cache is emptied and one uncounted hypha exec uploads the agent; then at each N,
#    ROUNDS counted rounds, the tools in an order that rotates every round.
# 4. The slow link (with the lab up): benches/compare/slow.py, relay.py at 0, 25 and 100 ms round
#    trip in front of the lab's `plain`: hypha's cached start by both methods, Mitogen's start and
#    `ssh host true`, each with the turns the relay counted.
# 5. One context: a call's round trip, `check(["true"])`'s and an upload's bytes/s, hypha (benches/one.rs) and Mitogen
#    (benches/peers/mitogen_ssh.py, FileService) in turn, aes128-ctr for both.
# 6. The file push and the floor: OpenSSH's bytes/s through one connection with the cipher
#    hypha's ssh method prefers (aes128-ctr); beside it the push of the same file, connection
#    included, by `hypha copy`, scp, Mitogen (FileService) and parallel-ssh (copy_file, SFTP)
#    (benches/peers/push.py); the bare 64-byte pipe round trip of benches/local.rs (criterion,
#    briefly).
# Results: one JSON object a line in $STATE/compare/TIME.jsonl; the report (TIME.md) and the
# charts (TIME-*.svg) beside it, drawn by table.py and chart.py (standard library only).
set -euo pipefail

cmp_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=benches/fanout.sh
source "$cmp_dir/../fanout.sh"
# fanout.sh defined: here (benches/), repo, STATE, LAB, NS, up, build, run_tool, settle, ...

# bssh 3.x needs rustc 1.97; 2.2.3 is the newest that builds with the toolchain here (1.95).
BSSH_VERSION=2.2.3
BSSH_INSTALL_TIMEOUT="${BSSH_INSTALL_TIMEOUT:-1500}"
COMPARE_TOOLS="hypha-cli hypha-fleet hypha-persist mitogen parallel-ssh pssh clush bssh ssh-true"
FULL_PLAN="1:5 10:5 50:3 100:2 200:2 500:1"
QUICK_PLAN="1:3 10:3 50:2"

clog() { echo "[compare] $*" >&2; }

# note TOOL WHY: a row saying TOOL was not measured, and why.
note_skipped() {
    python3 -c 'import json, sys; print(json.dumps({"tool": sys.argv[1], "skipped": sys.argv[2]}))' \
        "$1" "$2" >> "$RESULTS"
    clog "$1 skipped: $2"
}

# BSSH_EXE when bssh $BSSH_VERSION is (or could be) installed; else a skipped row saying why.
install_bssh() {
    local root="$repo/target/peers" log
    BSSH_EXE="$root/bin/bssh"
    if [ -x "$BSSH_EXE" ] && [ "$("$BSSH_EXE" --version 2>/dev/null)" = "bssh $BSSH_VERSION" ]; then
        return
    fi
    mkdir -p "$root"
    log="$root/bssh-install.log"
    clog "installing bssh $BSSH_VERSION (cargo install, at most ${BSSH_INSTALL_TIMEOUT}s; log $log)"
    # From / so that this repository's .cargo/config.toml (a musl target) does not apply.
    if ! (cd / && timeout "$BSSH_INSTALL_TIMEOUT" cargo install bssh --version "$BSSH_VERSION" \
        --locked --root "$root") > "$log" 2>&1; then
        BSSH_EXE=""
        BSSH_SKIPPED="cargo install bssh $BSSH_VERSION failed or took over ${BSSH_INSTALL_TIMEOUT}s: $(grep -m1 '^error' "$log" || tail -n 1 "$log")"
    fi
}

# Builds, beside fanout.sh's: benches/one.rs and the criterion bench of benches/local.rs (its
# pipe floor).
build_more() {
    local json
    json=$(cd "$repo" && cargo bench --locked --bench local --bench one --no-run --message-format=json-render-diagnostics)
    eval "$(python3 -c '
import json, shlex, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable"):
        var = {"local": "LOCAL_EXE", "one": "ONE_EXE"}.get(m["target"]["name"])
        if var:
            print("%s=%s" % (var, shlex.quote(m["executable"])))' <<< "$json")"
    [ -n "${LOCAL_EXE:-}" ] && [ -n "${ONE_EXE:-}" ] || die "build: the local and one benches not found"
}

# The file push and its floor: bytes/s through one connection to the bench sshd (aes128-ctr,
# hypha's ssh method's first cipher), the tools in an order that rotates every round.
floor() {
    local mib=$1 runs=$2 file sshopts r t0 t1 code
    sshopts=(-F /dev/null -o BatchMode=yes -o IdentitiesOnly=yes -i "$FAN_KEY"
        -o StrictHostKeyChecking=yes -o "UserKnownHostsFile=$FAN_KNOWN_HOSTS"
        -o GlobalKnownHostsFile=/dev/null -o ConnectTimeout=30 -c aes128-ctr)
    file="/dev/shm/hypha-compare-$$.bin"
    head -c "${mib}M" /dev/urandom > "$file"
    local -a tools=(ssh-pipe scp hypha-copy mitogen-push parallel-ssh-push)
    for ((r = 1; r <= runs; r++)); do
        local tool i out
        for ((i = 0; i < ${#tools[@]}; i++)); do
            tool=${tools[$(((i + r - 1) % ${#tools[@]}))]}
            settle
            t0=$(date +%s%N)
            code=0 out=""
            case $tool in
                ssh-pipe)
                    timeout 300 nsenter --net="/run/netns/$NS" ssh "${sshopts[@]}" "$FAN_USER@127.0.0.1" 'cat > /dev/null' < "$file" || code=$?
                    ;;
                scp)
                    timeout 300 nsenter --net="/run/netns/$NS" scp -q "${sshopts[@]}" "$file" "$FAN_USER@127.0.0.1:/tmp/floor.bin" < /dev/null || code=$?
                    ;;
                hypha-copy)
                    timeout 300 nsenter --net="/run/netns/$NS" "$HYPHA_EXE" copy -l "$FAN_USER" -i "$FAN_KEY" \
                        --known-hosts "$FAN_KNOWN_HOSTS" 127.0.0.1 "$file" /tmp/floor.bin < /dev/null > /dev/null || code=$?
                    ;;
                *-push)
                    # The script's own timing would leave out its interpreter's start; the row's
                    # seconds are the whole command, as for the others.
                    out=$(timeout 300 nsenter --net="/run/netns/$NS" "$PY" "$here/peers/push.py" "${tool%-push}" \
                        "$file" 127.0.0.1 /tmp/floor.bin --user "$FAN_USER" --key "$FAN_KEY" \
                        --known-hosts "$FAN_KNOWN_HOSTS" --cipher aes128-ctr < /dev/null) || code=$?
                    ;;
            esac
            t1=$(date +%s%N)
            timeout 30 nsenter --net="/run/netns/$NS" ssh "${sshopts[@]}" -n "$FAN_USER@127.0.0.1" 'rm -f /tmp/floor.bin' || true
            python3 -c 'import json, sys
tool, mib, rnd, ns, code, out = sys.argv[1:]
row = {"tool": "floor-" + tool, "round": int(rnd), "mib": int(mib), "cipher": "aes128-ctr",
       "seconds": int(ns) / 1e9, "mib_s": round(int(mib) / (int(ns) / 1e9), 1), "ok": code == "0"}
try:
    error = json.loads(out).get("error") if out else None
except ValueError:
    error = out[-200:]
if error or code != "0":
    row["error"] = error or "exit %s" % code
print(json.dumps(row))' \
                "$tool" "$mib" "$r" "$((t1 - t0))" "$code" "$out" >> "$RESULTS"
            clog "floor $tool: $mib MiB in $(((t1 - t0) / 1000000)) ms (exit $code)"
        done
    done
    rm -f "$file"
}

# The bare pipe round trip of benches/local.rs (criterion, briefly), while the machine is calm.
pipe_floor() {
    local dir
    dir=$(mktemp -d)
    (cd "$dir" && timeout 120 "$LOCAL_EXE" --bench pipe_pingpong_64b --warm-up-time 1 \
        --measurement-time 3 --noplot 2>/dev/null) | python3 -c '
import json, re, sys
text = sys.stdin.read()
m = re.search(r"pipe_pingpong_64b\s+time:\s+\[\S+ \S+ (\S+) (\S+) \S+ \S+\]", text)
if m:
    scale = {"ns": 1e-3, "µs": 1.0, "us": 1.0, "ms": 1e3}[m.group(2)]
    print(json.dumps({"tool": "floor-pipe", "us": round(float(m.group(1)) * scale, 3),
                  "what": "64-byte ping-pong through two pipes and a child (benches/local.rs)"}))
else:
    sys.stderr.write("no pipe_pingpong_64b figure in the criterion output\n")' >> "$RESULTS" ||
        clog "the pipe floor failed"
    rm -rf "$dir"
}

# One context, ROUNDS times, hypha (benches/one.rs) and Mitogen (benches/peers/mitogen_ssh.py)
# in turn: a call's round trip, check(true)'s and an upload's bytes/s, with aes128-ctr on both.
one() {
    local rounds=$1 mib=$2 r tool
    for ((r = 1; r <= rounds; r++)); do
        for tool in hypha mitogen; do
            [ $((r % 2)) = 0 ] && tool=$([ "$tool" = hypha ] && echo mitogen || echo hypha)
            settle
            clog "one context, round $r: $tool"
            case $tool in
                hypha)
                    timeout 600 nsenter --net="/run/netns/$NS" env FANOUT_USER="$FAN_USER" \
                        FANOUT_KEY="$FAN_KEY" FANOUT_KNOWN_HOSTS="$FAN_KNOWN_HOSTS" ONE_MIB="$mib" \
                        "$ONE_EXE" < /dev/null
                    ;;
                mitogen)
                    timeout 600 nsenter --net="/run/netns/$NS" "$PY" "$here/peers/mitogen_ssh.py" \
                        --only ssh_call_rtt_us --only ssh_check_true_us --only ssh_bytes_mib_s --bytes-mib "$mib" --host 127.0.0.1 \
                        --user "$FAN_USER" --key "$FAN_KEY" --known-hosts "$FAN_KNOWN_HOSTS" \
                        --cipher aes128-ctr < /dev/null 2>> "${RESULTS%.jsonl}-mitogen.log"
                    ;;
            esac | python3 -c '
import json, sys
tool, rnd = sys.argv[1:]
for line in sys.stdin:
    row = json.loads(line)
    row.update(tool="one-" + tool, round=int(rnd), figure=row["figure"].replace("ssh_", "", 1))
    print(json.dumps(row))' "$tool" "$r" >> "$RESULTS" || {
                clog "one context: $tool failed in round $r (Mitogen's log: ${RESULTS%.jsonl}-mitogen.log)"
                echo "{\"tool\": \"one-$tool\", \"round\": $r, \"figure\": \"failed\"}" >> "$RESULTS"
            }
        done
    done
}

main() {
    local plan=$FULL_PLAN tools=$COMPARE_TOOLS slow=1 floor_rows=1 publish=0 quick=0
    local orig_args
    orig_args=$(printf ' %q' "$@")
    while [ $# -gt 0 ]; do
        case "$1" in
            --quick) plan=$QUICK_PLAN quick=1 ;;
            --plan) [ $# -ge 2 ] || die "--plan needs N:ROUNDS pairs"; plan=$2 && shift ;;
            --tools) [ $# -ge 2 ] || die "--tools needs a list"; tools=$2 && shift ;;
            --no-slow) slow=0 ;;
            --no-floor) floor_rows=0 ;;
            --publish) publish=1 ;;
            *) die "run.sh: unknown option $1" ;;
        esac
        shift
    done
    need_root
    local t_start pair n rounds
    t_start=$(date +%s%N)
    for pair in $plan; do
        n=${pair%%:*} rounds=${pair#*:}
        [[ "$pair" == *:* && "$n" =~ ^[0-9]+$ && "$rounds" =~ ^[0-9]+$ ]] || die "--plan: N:ROUNDS pairs, not $pair"
        if [ "$n" -lt 1 ] || [ "$n" -gt "$MAX_HOSTS" ]; then die "--plan: N is 1..$MAX_HOSTS"; fi
    done
    up
    build
    build_more
    clog "peers: the venv (benches/peers/setup.sh), Debian's pssh and clustershell, bssh"
    bash "$here/peers/setup.sh" >&2
    install_packages pssh clustershell
    BSSH_SKIPPED=""
    case " $tools " in *" bssh "*) install_bssh ;; esac
    PY="$repo/target/peers-venv/bin/python"
    FAN_USER=$(env_get USER) FAN_KEY=$(env_get KEY) FAN_KNOWN_HOSTS=$(env_get KNOWN_HOSTS)
    SSHD_CG=$(env_get SSHD_CGROUP) CTL_CG=$(env_get CTL_CGROUP) MEM_CG=$(env_get MEM_CGROUP)
    FAN_TIMEOUT=60 FAN_WARM_ROUNDS=3 FAN_FANOUT=64
    mkdir -p "$STATE/compare" "$STATE/xdg"
    chmod 700 "$STATE/xdg"
    local stamp
    stamp=$(date +%Y%m%d-%H%M%S)
    RESULTS="$STATE/compare/$stamp.jsonl"
    : > "$RESULTS"
    ulimit -n "$NOFILE" 2>/dev/null || ulimit -n "$(ulimit -Hn)"
    clog "open files: $(ulimit -n); results: $RESULTS"
    meta "benches/compare/run.sh$orig_args" "$plan" "$tools"
    local -a list=()
    local tool
    for tool in $tools; do
        if [ "$tool" = bssh ] && [ -z "${BSSH_EXE:-}" ]; then
            note_skipped bssh "$BSSH_SKIPPED"
            continue
        fi
        case " $KNOWN_TOOLS " in *" $tool "*) ;; *) die "unknown tool $tool (tools: $KNOWN_TOOLS)" ;; esac
        list+=("$tool")
    done
    local k=${#list[@]} r i offset=0 first
    first=${plan%%:*}
    [ "$floor_rows" = 0 ] || pipe_floor
    clog "round 0: the hosts' agent cache emptied, hypha exec and the Fleet bench on $first hosts (uncounted: each uploads its agent)"
    clear_agent_cache
    run_tool hypha-cli "$first" 0
    case " ${list[*]} " in *" hypha-fleet "*) run_tool hypha-fleet "$first" 0 ;; esac
    for pair in $plan; do
        n=${pair%%:*} rounds=${pair#*:}
        for ((r = 1; r <= rounds; r++)); do
            for ((i = 0; i < k; i++)); do
                run_tool "${list[$(((i + r - 1 + offset) % k))]}" "$n" "$r"
            done
        done
        offset=$((offset + 1))
    done
    settle
    if [ "$slow" = 1 ]; then
        if [ -r "$LAB/env" ]; then
            clog "slow link: relay.py in front of the lab's plain"
            "$PY" "$cmp_dir/slow.py" --rounds "$([ "$quick" = 1 ] && echo 2 || echo 4)" \
                --hypha "$HYPHA_EXE" --lab "$LAB" >> "$RESULTS" || clog "slow.py failed"
        else
            note_skipped slow-link "the lab is not up (tests/lab/lab.sh up)"
        fi
    fi
    if [ "$quick" = 1 ]; then one 1 128; else one 3 256; fi
    if [ "$floor_rows" = 1 ]; then
        if [ "$quick" = 1 ]; then floor 256 1; else floor 512 2; fi
    fi
    python3 -c 'import json, sys, time; print(json.dumps({"tool": "meta-end", "wall_s": round(int(sys.argv[1]) / 1e9, 1), "ended": time.time()}))' \
        "$(($(date +%s%N) - t_start))" >> "$RESULTS"
    local out="$STATE/compare/$stamp"
    python3 "$cmp_dir/table.py" --charts "$stamp-" "$RESULTS" > "$out.md"
    python3 "$cmp_dir/chart.py" --prefix "$out-" "$RESULTS" || clog "chart.py failed (the report is written)"
    cat "$out.md"
    if [ "$publish" = 1 ]; then
        local f
        for f in "$out"-*.svg; do
            [ -e "$f" ] && cp "$f" "$cmp_dir/${f#"$out"-}"
        done
        python3 "$cmp_dir/table.py" --charts compare/ "$RESULTS" > "$repo/benches/RESULTS.md"
        cp "$RESULTS" "$cmp_dir/results.jsonl"
        clog "published: benches/RESULTS.md, benches/compare/*.svg, benches/compare/results.jsonl"
    fi
    clog "results: $RESULTS, report $out.md; wall $((($(date +%s%N) - t_start) / 1000000000)) s"
}

main "$@"
