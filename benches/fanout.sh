#!/usr/bin/env bash
# Fan-out, side by side (issue 12): `hostname` on N hosts by hypha (the Fleet API, benches/fanout.rs,
# and the `hypha exec` command) and by its peers (parallel-ssh from PyPI, Debian's pssh, Mitogen),
# next to the floor of one `ssh HOST true` per host; the same sshd, in turn, several rounds.
#
#   benches/fanout.sh up                 start the bench's sshd (idempotent)
#   benches/fanout.sh down               stop it, remove its namespace, cgroups and state
#   benches/fanout.sh status             say whether it is up
#   benches/fanout.sh run [--quick] [--rounds R] [--hosts "50 200"] [--tools "hypha-fleet ..."]
#                         [--fanout F] [--no-local]
#                                        (the default) up, build, install the peers, measure, and
#                                        print a markdown table of medians (--quick: 3 rounds, 50)
#
# Needs root. The hosts: one sshd listening on 0.0.0.0:22 in a network namespace of its own
# (hypha-fan, loopback only), so 127.0.0.1 .. 127.0.0.254, then 127.0.1.1 .. 127.0.1.254 (host_addr)
# inside it are up to 508 destinations; every tool runs inside that namespace. The sshd has MaxStartups 1000:30:2000 (FANOUT_MAXSTARTUPS),
# MaxSessions 1000 and an open-files limit of $NOFILE (or the hard limit, where it may not be
# raised); it runs in a mount namespace of its own (tmpfs /home and /tmp: the agent cache of the
# "hosts" is there, shared by all of them) and in a cgroup v2 of its own (hypha-fan-sshd), whose
# cpu.stat gives the remote side's CPU: sshd, its sessions and what they run. Each tool runs in a
# second cgroup (hypha-fan-ctl), a check on the controller CPU the drivers report (getrusage), and,
# where the v1 memory controller is mounted, in a memory cgroup of the same name, whose
# max_usage_in_bytes (reset before each run) less its usage before it is the controller's peak
# memory: every process of the tool together, what they allocated and the file pages they brought
# in (ctl_mem_peak_kb; on a v2-only host, memory.peak of a cgroup of its own is not read yet).
#
# The login user is the lab's (tests/lab/lab.sh creates it; its env names it) and the client key
# the lab's id_ed25519 (copied once), or a key of this script's own when the lab is not up.
#
# Round 0 at each N runs every tool once, uncounted, after emptying the hosts' agent cache: its
# hypha rows are the first start ever (agent uploaded). Rounds 1..R are counted, the tools in a
# rotating order. Results: one JSON object a run in $STATE/results/TIME.jsonl, the table beside it.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
STATE="${HYPHA_FAN_DIR:-/run/hypha-fan}"
LAB="${HYPHA_LAB_DIR:-/run/hypha-lab}"
NS=hypha-fan
# Everything enters the namespace with nsenter, not `ip netns exec`, which mounts a /sys of its own
# and so hides the cgroup files that the tools read.
NOFILE=65536
# sshd's MaxStartups: raised so that no start is dropped; FANOUT_MAXSTARTUPS=10:30:100 (sshd's
# default) shows what a stock sshd does to each tool (up restarts the sshd when it changes).
MAX_STARTUPS="${FANOUT_MAXSTARTUPS:-1000:30:2000}"
MAX_HOSTS=508
ALL_TOOLS="hypha-fleet hypha-cli hypha-persist parallel-ssh pssh mitogen ssh-true"
# Also known to run_tool: clush (ClusterShell, Debian) and bssh (FANOUT_BSSH, a binary of
# `cargo install bssh`); benches/compare/run.sh installs both.
KNOWN_TOOLS="$ALL_TOOLS clush bssh"

# host_addr I: the address of host I (1-based): 127.0.0.I up to 254, then 127.0.1.(I-254).
host_addr() {
    echo "127.0.$((($1 - 1) / 254)).$((($1 - 1) % 254 + 1))"
}

log() { echo "[fanout] $*" >&2; }
die() {
    log "$*"
    exit 1
}

need_root() {
    [ "$(id -u)" = 0 ] || die "needs root"
}

cgroup_root() {
    local root
    root=$(awk '$3 == "cgroup2" { print $2; exit }' /proc/mounts)
    [ -n "$root" ] || die "no cgroup v2 mounted"
    echo "$root"
}

# The v1 memory controller's mount point, or nothing.
memory_root() {
    awk '$3 == "cgroup" && $4 ~ /(^|,)memory(,|$)/ { print $2; exit }' /proc/mounts
}

# wait_until SECONDS WHAT COMMAND...: poll COMMAND until it succeeds; fail after SECONDS.
wait_until() {
    local limit=$1 what=$2
    shift 2
    local deadline=$(($(date +%s%N) + limit * 1000000000))
    until "$@"; do
        if [ "$(date +%s%N)" -gt "$deadline" ]; then
            log "timed out after ${limit}s waiting for $what"
            return 1
        fi
        sleep 0.05
    done
}

lab_user() {
    local user=""
    [ -r "$LAB/env" ] && user=$(sed -n 's/^USER=//p' "$LAB/env")
    echo "${user:-hypha}"
}

# install_packages [PKG...]: Debian's packages, those missing (by default what the hosts need).
install_packages() {
    local missing=() pkg pkgs=("$@")
    [ $# -gt 0 ] || pkgs=(openssh-server openssh-client iproute2 util-linux pssh)
    for pkg in "${pkgs[@]}"; do
        dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        log "installing ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >&2
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
    fi
    mkdir -p /run/sshd
}

make_keys() {
    local k="$STATE/keys"
    mkdir -p "$k"
    chmod 700 "$k"
    if [ ! -f "$k/id_ed25519" ]; then
        if [ -f "$LAB/keys/id_ed25519" ]; then
            cp "$LAB/keys/id_ed25519" "$LAB/keys/id_ed25519.pub" "$k/"
        else
            ssh-keygen -q -t ed25519 -N "" -C hypha-fan -f "$k/id_ed25519"
        fi
    fi
    [ -f "$STATE/ssh_host_ed25519_key" ] || ssh-keygen -q -t ed25519 -N "" -C hypha-fan-host -f "$STATE/ssh_host_ed25519_key"
    local key i
    key=$(cut -d' ' -f1,2 "$STATE/ssh_host_ed25519_key.pub")
    for ((i = 1; i <= MAX_HOSTS; i++)); do echo "$(host_addr "$i") $key"; done > "$STATE/known_hosts.new"
    mv -f "$STATE/known_hosts.new" "$STATE/known_hosts"
}

sshd_config() {
    cat <<EOF
ListenAddress 0.0.0.0
Port 22
HostKey $STATE/ssh_host_ed25519_key
PidFile $STATE/sshd.pid
AuthorizedKeysFile .ssh/authorized_keys
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PrintMotd no
PrintLastLog no
UseDNS no
PermitRootLogin no
AllowUsers $1
MaxStartups $MAX_STARTUPS
MaxSessions 1000
LogLevel INFO
Subsystem sftp internal-sftp
EOF
}

# Runs in the sshd's own mount and UTS namespaces, in its cgroup, then becomes sshd.
setup_script() {
    local user=$1 cg=$2
    cat <<EOF
set -e
echo \$\$ > $cg/cgroup.procs
ulimit -n $NOFILE 2>/dev/null || ulimit -n "\$(ulimit -Hn)"
hostname fan-host
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -t tmpfs -o mode=755 tmpfs /home
home=/home/$user
mkdir -p \$home/.ssh
cp $STATE/keys/id_ed25519.pub \$home/.ssh/authorized_keys
chown -R $user: \$home
chmod 700 \$home/.ssh
exec /usr/sbin/sshd -f $STATE/sshd_config -E $STATE/sshd.log
EOF
}

sshd_running() {
    [ -s "$STATE/sshd.pid" ] && kill -0 "$(cat "$STATE/sshd.pid")" 2>/dev/null
}

ns_empty() { [ -z "$(ip netns pids "$NS" 2>/dev/null)" ]; }

# Stop the sshd and everything left running in the namespace (all started by this script).
stop_sshd() {
    local pid
    if sshd_running; then
        kill "$(cat "$STATE/sshd.pid")" 2>/dev/null || true
    fi
    if ip netns list | grep -qw "$NS"; then
        for pid in $(ip netns pids "$NS"); do
            kill -9 "$pid" 2>/dev/null || true
        done
        wait_until 10 "the processes of $NS to end" ns_empty
    fi
    rm -f "$STATE/sshd.pid"
}


up() {
    need_root
    mkdir -p "$STATE"
    chmod 755 "$STATE"
    exec 9>"$STATE.lock"
    flock -w 60 9 || die "another fanout.sh holds $STATE.lock"
    local user cg cgroot memroot memcg=""
    user=$(lab_user)
    id "$user" >/dev/null 2>&1 || die "no user $user: run tests/lab/lab.sh up once (it creates the lab users)"
    cgroot=$(cgroup_root)
    cg="$cgroot/hypha-fan-sshd"
    memroot=$(memory_root)
    if [ -n "$memroot" ]; then
        memcg="$memroot/hypha-fan-ctl"
        mkdir -p "$memcg"
    fi
    install_packages
    make_keys
    sshd_config "$user" > "$STATE/sshd_config.new"
    setup_script "$user" "$cg" > "$STATE/setup.sh.new"
    if sshd_running && cmp -s "$STATE/sshd_config.new" "$STATE/sshd_config" &&
        cmp -s "$STATE/setup.sh.new" "$STATE/setup.sh"; then
        rm -f "$STATE/sshd_config.new" "$STATE/setup.sh.new"
    else
        stop_sshd
        mv -f "$STATE/sshd_config.new" "$STATE/sshd_config"
        mv -f "$STATE/setup.sh.new" "$STATE/setup.sh"
        ip netns add "$NS" 2>/dev/null || true
        ip -n "$NS" link set lo up
        mkdir -p "$cg" "$cgroot/hypha-fan-ctl"
        : > "$STATE/sshd.log"
        nsenter --net="/run/netns/$NS" unshare --mount --uts --propagation private bash "$STATE/setup.sh"
        wait_until 10 "sshd to write its pid file" test -s "$STATE/sshd.pid" ||
            die "sshd did not start: $(tail -5 "$STATE/sshd.log")"
    fi
    timeout 20 nsenter --net="/run/netns/$NS" ssh -F /dev/null -o BatchMode=yes -o IdentitiesOnly=yes \
        -i "$STATE/keys/id_ed25519" -o StrictHostKeyChecking=yes -o "UserKnownHostsFile=$STATE/known_hosts" \
        -o GlobalKnownHostsFile=/dev/null -o ConnectTimeout=10 -n -l "$user" "$(host_addr "$MAX_HOSTS")" true ||
        die "ssh to the bench sshd fails: $(tail -5 "$STATE/sshd.log")"
    {
        echo "NS=$NS"
        echo "USER=$user"
        echo "KEY=$STATE/keys/id_ed25519"
        echo "KNOWN_HOSTS=$STATE/known_hosts"
        echo "SSHD_CGROUP=$cg"
        echo "CTL_CGROUP=$cgroot/hypha-fan-ctl"
        echo "MEM_CGROUP=$memcg"
    } > "$STATE/env.new"
    mv -f "$STATE/env.new" "$STATE/env"
    log "up: sshd $(cat "$STATE/sshd.pid") in netns $NS, cgroup $cg, user $user"
}

down() {
    need_root
    local cgroot
    stop_sshd
    ip netns del "$NS" 2>/dev/null || true
    cgroot=$(cgroup_root)
    rmdir "$cgroot/hypha-fan-sshd" "$cgroot/hypha-fan-ctl" 2>/dev/null || true
    [ -z "$(memory_root)" ] || rmdir "$(memory_root)/hypha-fan-ctl" 2>/dev/null || true
    rm -rf "$STATE" "$STATE.lock"
    log "down"
}

status() {
    if sshd_running; then
        echo "fanout: up (sshd $(cat "$STATE/sshd.pid") in netns $NS)"
    else
        echo "fanout: down"
        return 1
    fi
}

# --- run ---

env_get() { sed -n "s/^$1=//p" "$STATE/env"; }

usage_ms() { awk '$1 == "usage_usec" { printf "%.1f", $2 / 1000 }' "$1/cpu.stat"; }

procs_in() { grep -c . "$1/cgroup.procs" || true; }

# The sshd's cgroup holds the listener alone, and no tool is left running.
settled() {
    [ "$(procs_in "$SSHD_CG")" -le 1 ] && [ "$(procs_in "$CTL_CG")" -eq 0 ]
}

settle() {
    wait_until 60 "the last tool's sessions to end" settled && return
    local pid
    log "still running after 60s: $(procs_in "$SSHD_CG") in the sshd's cgroup, $(procs_in "$CTL_CG") in the tools'; ending the tools'"
    while read -r pid; do
        kill -9 "$pid" 2>/dev/null || true
    done < "$CTL_CG/cgroup.procs"
    wait_until 20 "the sessions to end" settled || log "going on unsettled"
}

# Empty the agent cache of the hosts (in the sshd's mount namespace).
clear_agent_cache() {
    local home
    home=$(getent passwd "$FAN_USER" | cut -d: -f6)
    nsenter -t "$(cat "$STATE/sshd.pid")" -m rm -rf "$home/.cache/hypha" "/tmp/hypha-$(id -u "$FAN_USER")"
}

# The command line of TOOL.
tool_cmd() {
    case "$1" in
        hypha-fleet) echo "$FANOUT_EXE" ;;
        hypha-cli | hypha-persist | pssh | ssh-true) echo "$PY $here/peers/fanout_cmd.py $1" ;;
        clush | bssh) echo "$PY $here/peers/fanout_cmd.py $1" ;;
        parallel-ssh) echo "$PY $here/peers/fanout_parallel_ssh.py" ;;
        mitogen) echo "$PY $here/peers/fanout_mitogen.py" ;;
        *) die "unknown tool $1 (tools: $KNOWN_TOOLS)" ;;
    esac
}

# The memory cgroup's usage now, in bytes, after restarting its peak from here (0 without one).
mem_reset() {
    [ -n "$MEM_CG" ] || { echo 0 && return; }
    echo 0 > "$MEM_CG/memory.max_usage_in_bytes"
    cat "$MEM_CG/memory.usage_in_bytes"
}

mem_peak() {
    if [ -n "$MEM_CG" ]; then cat "$MEM_CG/memory.max_usage_in_bytes"; else echo 0; fi
}

# run_tool TOOL N ROUND: one run, its JSON object (with round, exit status, the two cgroups'
# CPU over the whole run and the controller's peak memory) appended to $RESULTS.
run_tool() {
    local tool=$1 n=$2 round=$3 out err code ctl0 ctl1 sshd0 sshd1 t0 t1 limit mem0 mem1
    settle
    limit=$((FAN_TIMEOUT * (n / FAN_FANOUT + 2) * 3 + 120))
    out=$(mktemp)
    err=$(mktemp)
    mem0=$(mem_reset)
    ctl0=$(usage_ms "$CTL_CG") sshd0=$(usage_ms "$SSHD_CG") t0=$(date +%s%N)
    code=0
    # The tool joins the controllers' cgroups, then becomes the tool (its command line is words).
    # shellcheck disable=SC2046,SC2016
    timeout "$limit" nsenter --net="/run/netns/$NS" env \
        FANOUT_HOSTS="$n" FANOUT_USER="$FAN_USER" FANOUT_KEY="$FAN_KEY" \
        FANOUT_KNOWN_HOSTS="$FAN_KNOWN_HOSTS" FANOUT_FANOUT="$FAN_FANOUT" \
        FANOUT_TIMEOUT="$FAN_TIMEOUT" FANOUT_WARM_ROUNDS="$FAN_WARM_ROUNDS" \
        FANOUT_SSHD_CPU="$SSHD_CG/cpu.stat" FANOUT_HYPHA="$HYPHA_EXE" \
        FANOUT_BSSH="${BSSH_EXE:-}" XDG_RUNTIME_DIR="$STATE/xdg" \
        bash -c 'echo $$ > "$0/cgroup.procs" && { [ -z "$1" ] || echo $$ > "$1/cgroup.procs"; } && shift && exec "$@"' \
        "$CTL_CG" "$MEM_CG" $(tool_cmd "$tool") \
        > "$out" 2> "$err" || code=$?
    t1=$(date +%s%N)
    ctl1=$(usage_ms "$CTL_CG") sshd1=$(usage_ms "$SSHD_CG")
    mem1=$(mem_peak)
    python3 - "$tool" "$n" "$round" "$code" "$out" "$err" "$ctl0" "$ctl1" "$sshd0" "$sshd1" \
        "$(((t1 - t0) / 1000000))" "$mem0" "$mem1" >> "$RESULTS" <<'EOF'
import json, sys
tool, n, rnd, code, out, err, ctl0, ctl1, sshd0, sshd1, wall_ms, mem0, mem1 = sys.argv[1:]
row = None
for line in open(out):
    try:
        row = json.loads(line)
    except ValueError:
        pass
if not isinstance(row, dict):
    tail = open(err, errors='replace').read().strip().splitlines()[-3:]
    row = {'tool': tool, 'n': int(n), 'ok': 0, 'failed': int(n),
           'errors': ['no result (exit %s): %s' % (code, ' | '.join(tail))]}
row.update(round=int(rnd), exit=int(code), run_wall_ms=int(wall_ms),
           ctl_cgroup_cpu_ms=round(float(ctl1) - float(ctl0), 1),
           sshd_cgroup_cpu_ms=round(float(sshd1) - float(sshd0), 1))
if int(mem1) > 0:
    peak_kb = max(0, int(mem1) - int(mem0)) // 1024
    row.update(ctl_mem_peak_kb=peak_kb, ctl_mem_peak_kb_per_host=round(peak_kb / int(n), 1))
print(json.dumps(row))
EOF
    tail -n 1 "$RESULTS" | python3 -c '
import json, sys
r = json.loads(sys.stdin.read())
warm = r.get("warm_median_ms")
print("[fanout] round %d n=%d %-13s cold %s s, %s ok, %s failed%s%s" % (r["round"], r["n"], r["tool"],
      r.get("cold_s"), r.get("ok"), r.get("failed"), "" if warm is None else ", warm %s ms" % warm,
      "" if not r.get("errors") else "; " + r["errors"][0][:160]))' >&2
    if [ "$code" != 0 ]; then
        log "$tool exited $code; its stderr ends: $(tail -n 3 "$err" | tr '\n' ' ')"
    fi
    rm -f "$out" "$err"
}

build() {
    log "building (release): hypha, benches fanout and fleet"
    local json
    json=$(cd "$repo" && cargo build --release --locked --bin hypha --bench fanout --bench fleet --message-format=json-render-diagnostics)
    eval "$(python3 -c '
import json, shlex, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") != "compiler-artifact" or not m.get("executable"):
        continue
    name, kinds = m["target"]["name"], m["target"]["kind"]
    var = {("hypha", "bin"): "HYPHA_EXE", ("fanout", "bench"): "FANOUT_EXE", ("fleet", "bench"): "FLEET_EXE"}
    for kind in kinds:
        if (name, kind) in var:
            print("%s=%s" % (var[(name, kind)], shlex.quote(m["executable"])))' <<< "$json")"
    if [ -z "${HYPHA_EXE:-}" ] || [ -z "${FANOUT_EXE:-}" ] || [ -z "${FLEET_EXE:-}" ]; then
        die "build: executables not found"
    fi
}

# meta COMMAND PLAN TOOLS: the run's first row (the machine, the versions, the command).
meta() {
    python3 - "$1" "$2" "$3" "$repo" "$MAX_STARTUPS" <<'EOF' >> "$RESULTS"
import json, os, platform, subprocess, sys, time
cmd, plan, tools, repo, max_startups = sys.argv[1:]
def out(argv):
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        # ssh -V says its version on stderr; anything else that fails says nothing.
        if p.returncode != 0:
            return None
        return (p.stdout or p.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return None
cpu = None
for line in open('/proc/cpuinfo'):
    if line.startswith('model name'):
        cpu = line.split(':', 1)[1].strip()
        break
mem_kb = int(next(l for l in open('/proc/meminfo') if l.startswith('MemTotal')).split()[1])
print(json.dumps({
    'tool': 'meta', 'date': time.strftime('%Y-%m-%d %H:%M %Z'), 'command': cmd, 'plan': plan,
    'tools': tools.split(), 'cpus': os.cpu_count(), 'cpu': cpu, 'mem_gib': round(mem_kb / 2**20, 1),
    'kernel': platform.release(), 'os': out(['sh', '-c', '. /etc/os-release && echo "$PRETTY_NAME"']),
    'hypha': out(['git', '-C', repo, 'describe', '--always', '--dirty']),
    'openssh': out(['ssh', '-V']), 'python': platform.python_version(),
    'max_startups': max_startups, 'started': time.time()}))
EOF
}

run() {
    local rounds=5 hosts="50 200" tools=$ALL_TOOLS local_bench=1
    FAN_FANOUT=64
    while [ $# -gt 0 ]; do
        case "$1" in
            --quick) rounds=3 hosts=50 ;;
            --rounds) rounds=$2 && shift ;;
            --hosts) hosts=$2 && shift ;;
            --tools) tools=$2 && shift ;;
            --fanout) FAN_FANOUT=$2 && shift ;;
            --no-local) local_bench=0 ;;
            *) die "run: unknown option $1" ;;
        esac
        shift
    done
    local n
    for n in $hosts; do
        if [ "$n" -lt 1 ] || [ "$n" -gt "$MAX_HOSTS" ]; then die "--hosts: 1..$MAX_HOSTS"; fi
    done
    up
    build
    log "peers: the venv (benches/peers/setup.sh)"
    bash "$here/peers/setup.sh" >&2
    PY="$repo/target/peers-venv/bin/python"
    FAN_USER=$(env_get USER) FAN_KEY=$(env_get KEY) FAN_KNOWN_HOSTS=$(env_get KNOWN_HOSTS)
    SSHD_CG=$(env_get SSHD_CGROUP) CTL_CG=$(env_get CTL_CGROUP) MEM_CG=$(env_get MEM_CGROUP)
    FAN_TIMEOUT=60 FAN_WARM_ROUNDS=5
    mkdir -p "$STATE/results" "$STATE/xdg"
    chmod 700 "$STATE/xdg"
    RESULTS="$STATE/results/$(date +%Y%m%d-%H%M%S).jsonl"
    local cmd="${FANOUT_MAXSTARTUPS:+FANOUT_MAXSTARTUPS=$FANOUT_MAXSTARTUPS }benches/fanout.sh run"
    cmd+=" --rounds $rounds --hosts \"$hosts\" --tools \"$tools\" --fanout $FAN_FANOUT"
    : > "$RESULTS"
    meta "$cmd" "$hosts" "$tools"
    # As high as may be: $NOFILE, or the hard limit where this process may not raise it.
    ulimit -n "$NOFILE" 2>/dev/null || ulimit -n "$(ulimit -Hn)"
    log "open files: $(ulimit -n)"
    local -a list
    read -r -a list <<< "$tools"
    local k=${#list[@]} r i tool
    for n in $hosts; do
        log "n=$n: round 0 (uncounted; the hosts' agent cache emptied first)"
        clear_agent_cache
        for tool in "${list[@]}"; do run_tool "$tool" "$n" 0; done
        for ((r = 1; r <= rounds; r++)); do
            for ((i = 0; i < k; i++)); do
                run_tool "${list[$(((i + r - 1) % k))]}" "$n" "$r"
            done
        done
    done
    settle
    if [ "$local_bench" = 1 ]; then
        log "1,000 local contexts (benches/fleet.rs)"
        # Its JSON figures, one a line, as rows of their own.
        (cd "$(mktemp -d)" && FLEET_N=1000 FLEET_FANOUT="$FAN_FANOUT" timeout 600 "$FLEET_EXE") |
            python3 -c '
import json, sys
for line in sys.stdin:
    try:
        row = json.loads(line)
    except ValueError:
        continue
    row["tool"] = "hypha-local"
    print(json.dumps(row))' >> "$RESULTS" || log "the fleet bench failed"
    fi
    python3 "$here/compare/table.py" "$RESULTS" | tee "${RESULTS%.jsonl}.md"
    log "results: $RESULTS"
}

# Sourced (benches/compare/run.sh does, for up, build and run_tool), it only defines.
[ "${BASH_SOURCE[0]}" = "$0" ] || return 0

case "${1:-run}" in
    up) up ;;
    down) down ;;
    status) status ;;
    run)
        [ $# -gt 0 ] && shift
        need_root
        run "$@"
        ;;
    *)
        echo "usage: $0 up|down|status|run [--quick] [--rounds R] [--hosts \"50 200\"] [--tools LIST] [--fanout F] [--no-local]" >&2
        exit 64
        ;;
esac
