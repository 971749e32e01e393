#!/usr/bin/env bash
# The file service next to scp and bare libssh2, in one run against the lab (benches/files.rs):
#
#   benches/files.sh                 # needs the lab: `bash tests/lab/lab.sh up` as root, once
#
# Builds the `files` and `ssh2_floor` benches, then runs each group of figures (big: a 1 GiB file
# to `plain` by hypha's `ssh` and `openssh` methods, by scp and by bare libssh2, interleaved;
# hops: one hop against two; small: 1,000 small files against `scp -r`) in a process of its own,
# so each controller's peak RSS is its group's; the CPU time of hypha's processes and of the sshd
# serving them is reported too (all the lab's hosts share this machine's CPUs). JSON lines go to
# target/files-bench.jsonl, a table per group to stderr. The machine is likely shared: the runs
# are interleaved and medians taken, but expect noise of tens of percent. FILES_RUNS, FILES_SMALL_RUNS, FILES_MIB, FILES_CIPHER and
# FILES_GROUPS are passed on (see benches/files.rs). Nothing is left behind on either side.
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/interleave.sh

lab_env="${HYPHA_LAB_DIR:-/run/hypha-lab}/env"
if [ ! -r "$lab_env" ]; then
    echo "files bench skipped: the lab is not up (run \`bash tests/lab/lab.sh up\` as root)" >&2
    exit 0
fi

bash scripts/setup.sh
declare -A exe
while read -r name path; do
    exe[$name]=$path
done < <(cargo bench --locked --no-run --bench files --bench ssh2_floor --message-format=json-render-diagnostics | bench_exes)

# Which cipher each OpenSSH client negotiates with the lab's sshd, with and without `-c`.
lab=$(sed -n 's/^LAB=//p' "$lab_env")
user=$(sed -n 's/^USER=//p' "$lab_env")
host=$(sed -n 's/^HOST_plain=//p' "$lab_env")
cipher=${FILES_CIPHER:-aes128-ctr}
negotiated() {
    ssh -v -F /dev/null -o BatchMode=yes -o IdentitiesOnly=yes -i "$lab/keys/id_ed25519" \
        -o "UserKnownHostsFile=$lab/known_hosts" -o GlobalKnownHostsFile=/dev/null \
        -o StrictHostKeyChecking=yes "$@" -n "$user@$host" true 2>&1 |
        sed -n 's/.*kex: client->server cipher: \([^ ]*\).*/\1/p'
}
echo "$(ssh -V 2>&1); scp and the openssh method run with -c $cipher (negotiated: $(negotiated -c "$cipher"));" \
    "OpenSSH's own default here: $(negotiated); the ssh method: the first of its list the server takes" >&2

out=target/files-bench.jsonl
: >"$out"
IFS=, read -r -a groups <<<"${FILES_GROUPS:-big,hops,small}"
for group in "${groups[@]}"; do
    echo "== files bench: $group" >&2
    FILES_GROUPS=$group FILES_FLOOR_EXE=${exe[ssh2_floor]} "${exe[files]}" | tee -a "$out"
done
echo "figures in $out" >&2
