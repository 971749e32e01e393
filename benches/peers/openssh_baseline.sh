#!/usr/bin/env bash
# Peer baseline: the plain OpenSSH client against the same host, key and known_hosts as
# mitogen_ssh.py. Prints one JSON object per figure on stdout ("peer":"openssh"); progress on
# stderr.
#
# Every ssh runs as: ssh -F /dev/null -o BatchMode=yes -o IdentitiesOnly=yes -i KEY
#   -o StrictHostKeyChecking=yes -o UserKnownHostsFile=KNOWN_HOSTS
#   -o GlobalKnownHostsFile=/dev/null -l USER HOST ...
# (no ssh_config, no agent keys, no compression, host key enforced against KNOWN_HOSTS only).
#
# Figures
#   ssh_true_ms     wall time of `ssh HOST true` (connect, key exchange, auth, session, remote
#                   shell runs `true`, teardown). One warm-up run, then SSH_TRUE_RUNS (default
#                   20) measured; median/p10/p90 over runs.
#   ssh_pipe_mib_s  `head -c PIPE_MIB MiB /dev/zero | ssh -c aes128-gcm@openssh.com HOST
#                   'cat >/dev/null'`: MiB divided by the command's wall time, so connection
#                   set-up (~one ssh_true_ms) is included. PIPE_MIB default 1024; median of
#                   PIPE_RUNS (default 3).
#
# Target defaults to the lab's "plain" host (tests/lab/lab.sh; facts from
# ${HYPHA_LAB_DIR:-/run/hypha-lab}/env); override with PEER_SSH_HOST, PEER_SSH_USER,
# PEER_SSH_KEY, PEER_SSH_KNOWN_HOSTS (mitogen_ssh.py reads the same variables).
#
# Run: benches/peers/openssh_baseline.sh
set -euo pipefail

lab_env="${HYPHA_LAB_DIR:-/run/hypha-lab}/env"
LAB="" USER_LAB="" HOST_LAB=""
if [ -r "$lab_env" ]; then
    LAB="$(sed -n 's/^LAB=//p' "$lab_env")"
    USER_LAB="$(sed -n 's/^USER=//p' "$lab_env")"
    HOST_LAB="$(sed -n 's/^HOST_plain=//p' "$lab_env")"
fi
host="${PEER_SSH_HOST:-$HOST_LAB}"
user="${PEER_SSH_USER:-$USER_LAB}"
key="${PEER_SSH_KEY:-${LAB:+$LAB/keys/id_ed25519}}"
known_hosts="${PEER_SSH_KNOWN_HOSTS:-${LAB:+$LAB/known_hosts}}"
true_runs="${SSH_TRUE_RUNS:-20}"
pipe_mib="${PIPE_MIB:-1024}"
pipe_runs="${PIPE_RUNS:-3}"
cipher=aes128-gcm@openssh.com
if [ -z "$host" ] || [ -z "$user" ] || [ -z "$key" ] || [ -z "$known_hosts" ]; then
    echo "openssh_baseline: no target: start the lab (tests/lab/lab.sh up) or set PEER_SSH_*" >&2
    exit 2
fi

log() { echo "[openssh_baseline] $*" >&2; }
ssh_cmd=(ssh -F /dev/null -o BatchMode=yes -o IdentitiesOnly=yes -i "$key"
         -o StrictHostKeyChecking=yes -o "UserKnownHostsFile=$known_hosts"
         -o GlobalKnownHostsFile=/dev/null -o ConnectTimeout=30 -l "$user")
ssh_version="$(ssh -V 2>&1)"

# emit FIGURE UNIT EXTRA_JSON VALUE...: summary as in mitogen_local.py (inclusive deciles).
emit() {
    python3 - "$@" <<'EOF'
import json, statistics, sys
figure, unit, extra, values = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
values = sorted(float(v) for v in values)
p10 = p90 = values[0]
if len(values) > 1:
    dec = statistics.quantiles(values, n=10, method='inclusive')
    p10, p90 = dec[0], dec[-1]
row = {'peer': 'openssh', 'figure': figure, 'median': statistics.median(values),
       'p10': p10, 'p90': p90, 'n': len(values), 'unit': unit}
row.update(json.loads(extra))
print(json.dumps(row), flush=True)
EOF
}

log "target $user@$host ($ssh_version)"
"${ssh_cmd[@]}" -n "$host" true  # warm-up; also fails early if auth or host key is wrong

log "measuring ssh_true_ms ($true_runs runs)"
samples=()
for _ in $(seq "$true_runs"); do
    t0=$(date +%s%N)
    "${ssh_cmd[@]}" -n "$host" true
    t1=$(date +%s%N)
    samples+=("$(( (t1 - t0) / 1000 ))e-3")
done
emit ssh_true_ms ms "{\"host\": \"$host\", \"ssh\": \"$ssh_version\"}" "${samples[@]}"

log "measuring ssh_pipe_mib_s ($pipe_runs x $pipe_mib MiB)"
samples=()
for _ in $(seq "$pipe_runs"); do
    t0=$(date +%s%N)
    head -c "${pipe_mib}M" /dev/zero | "${ssh_cmd[@]}" -c "$cipher" "$host" 'cat >/dev/null'
    t1=$(date +%s%N)
    samples+=("$(python3 -c "print($pipe_mib / (($t1 - $t0) / 1e9))")")
    log "  pipe: ${samples[-1]} MiB/s"
done
emit ssh_pipe_mib_s MiB/s \
    "{\"host\": \"$host\", \"ssh\": \"$ssh_version\", \"cipher\": \"$cipher\", \"mib\": $pipe_mib}" \
    "${samples[@]}"
