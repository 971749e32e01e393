#!/usr/bin/env python3
"""Peer benchmark: Python Mitogen through multi-hop chains (``via=``) and sudo.

Prints one JSON object per figure on stdout; progress goes to stderr.
Targets default to the SSH test lab's chain hosts hop1..hop4 (tests/lab/lab.sh;
facts read from ``$HYPHA_LAB_DIR/env``, default /run/hypha-lab/env): hop1 is
reachable from here, each later hop only from the one before it. Override with
--hosts (comma-separated, first reachable from here) and --user/--key/
--known-hosts or PEER_CHAIN_HOSTS, PEER_SSH_USER, PEER_SSH_KEY,
PEER_SSH_KNOWN_HOSTS.

Every hop is started with ``router.ssh(..., via=<previous hop>)`` and the ssh
command line of mitogen_ssh.py (``-F /dev/null``, host keys enforced against
the given known_hosts only, IdentitiesOnly key auth, BatchMode, its cipher,
Compression off); remotes run /usr/bin/python3.

Credentials on the hops: for hop N+1, Mitogen runs ``ssh`` inside the context
on hop N, as the remote user, so the key and known_hosts must be readable
there. The lab's copies (under /run, root only) are not, and the hops share
this machine's root filesystem except /home, /tmp and /dev/shm. So before the
run the key and known_hosts are copied into a fresh ``mktemp -d`` directory
under --stage-dir (default /var/tmp, on the shared root filesystem): the
directory is mode 0711, the key 0600 owned by the remote user, known_hosts
0644. Every hop, the first included, uses these copies; the directory is
deleted when the run ends. No agent forwarding is involved.

Figures
-------
chain_rtt_us_<n>  (n = 1 .. number of hops, 4 in the lab)
    Round trip of ``context.call(ping)`` to the n-th context of one started
    chain hop1 -> hop2 -> ... -> hopN. --batches batches (default 5) of
    --calls calls (default 2000) per hop, the hops interleaved batch by
    batch; median/p10/p90 over batch means, per_call_* over single calls (as
    ssh_call_rtt_us in mitogen_ssh.py).
chain_rtt_added_us
    What each extra hop adds to the round trip: the values are
    median(chain_rtt_us_<n>) - median(chain_rtt_us_<n-1>) for n = 2..N, and
    ``median`` is their median; ``per_call_median`` is the median of the same
    differences taken between the per_call_median figures.
chain2_start_ms
    Wall time from ``router.ssh()`` to hop1 until the first answered
    ``call(ping)`` on hop2 started ``via=`` hop1: two ssh connections, two
    bootstraps, hop1 fetching mitogen.ssh through the importer, hop2 fetching
    ``mitogen_funcs``. One warm-up chain first, not counted; each chain is
    shut down afterwards (hop2, then hop1), outside the timed span. --runs
    chains (default 5).
sudo_hop_start_ms
    Wall time of ``router.sudo(username=<--sudo-user>, via=<ssh context on
    hop1>, python_path=['/usr/bin/python3'])`` until its first answered
    ``call(ping)``: the hop1 context runs sudo, which starts a new interpreter
    as hypha-nopw (no password in the lab's sudoers). The hop1 context stays
    up throughout; one warm-up sudo context first, not counted; each context
    is shut down outside the timed span. --sudo-runs contexts (default 10).

Run ``benches/peers/setup.sh`` once, start the lab (tests/lab/lab.sh up;
needs root, as does staging the key for another user), then
``target/peers-venv/bin/python benches/peers/mitogen_chain.py``.
"""
import argparse
import os
import pwd
import shutil
import socket
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.dont_write_bytecode = True  # keep benches/peers/ free of __pycache__

from mitogen_local import emit, emit_rtt, now, ping_batch  # also checks for mitogen
from mitogen_ssh import CIPHER, read_lab_env
import mitogen.master

import mitogen_funcs as funcs

FIGURES = ('chain_rtt_us', 'chain2_start_ms', 'sudo_hop_start_ms')
REMOTE_PYTHON = ['/usr/bin/python3']


def log(msg):
    print('[mitogen_chain] ' + msg, file=sys.stderr, flush=True)


def lab_facts():
    facts = read_lab_env()
    lab = facts.get('LAB', '')
    hops = [facts['HOST_hop%d' % i] for i in range(1, 5)
            if 'HOST_hop%d' % i in facts]
    return {
        'hosts': ','.join(hops) or None,
        'user': facts.get('USER'),
        'key': lab and os.path.join(lab, 'keys', 'id_ed25519'),
        'known_hosts': lab and os.path.join(lab, 'known_hosts'),
    }


def stage_credentials(args):
    """Copy key + known_hosts where `args.user` can read them on every hop."""
    stage = tempfile.mkdtemp(prefix='mitogen-chain-', dir=args.stage_dir)
    os.chmod(stage, 0o711)
    key = os.path.join(stage, 'id')
    known_hosts = os.path.join(stage, 'known_hosts')
    shutil.copyfile(args.key, key)
    shutil.copyfile(args.known_hosts, known_hosts)
    os.chmod(key, 0o600)
    os.chmod(known_hosts, 0o644)
    if os.geteuid() != pwd.getpwnam(args.user).pw_uid:
        os.chown(key, pwd.getpwnam(args.user).pw_uid, -1)  # needs root
    return stage, key, known_hosts


class Chain(object):
    """router.ssh() keyword arguments per hop, identical but for hostname."""

    def __init__(self, args, key, known_hosts):
        self.hosts = args.hosts.split(',')
        self.common = dict(
            username=args.user,
            identity_file=key, identities_only=True,
            check_host_keys='enforce',  # -o StrictHostKeyChecking yes
            compression=args.compression,
            python_path=REMOTE_PYTHON,
            connect_timeout=30,
            ssh_args=['-F', '/dev/null',
                      '-o', 'UserKnownHostsFile=' + known_hosts,
                      '-o', 'GlobalKnownHostsFile=/dev/null',
                      '-c', args.cipher],
        )
        self.extra = {'cipher': args.cipher, 'compression': args.compression}

    def start(self, router, hops):
        """Contexts for the first `hops` hosts, each via the one before."""
        ctxs = []
        for host in self.hosts[:hops]:
            via = ctxs[-1] if ctxs else None
            ctxs.append(router.ssh(hostname=host, via=via, **self.common))
        ctxs[-1].call(funcs.ping)
        return ctxs


def added(medians):
    """Per-hop increments of a list of per-hop figures."""
    return [b - a for a, b in zip(medians, medians[1:])]


def shutdown(ctxs):
    for ctx in reversed(ctxs):
        ctx.shutdown(wait=True)


def chain_rtt(router, chain, batches, calls):
    ctxs = chain.start(router, len(chain.hosts))
    for ctx, host in zip(ctxs, chain.hosts):
        log('  %s answers as %s' % (host, ctx.call(socket.gethostname)))
        ping_batch(ctx, 200)  # warm-up
    batch_means = [[] for _ in ctxs]
    per_call = [[] for _ in ctxs]
    for b in range(batches):
        for i, ctx in enumerate(ctxs):  # interleaved: drift hits all hops
            times = ping_batch(ctx, calls)
            batch_means[i].append(statistics.fmean(times))
            per_call[i].extend(times)
        log('  batch %d/%d: %s us' % (b + 1, batches, ' '.join(
            '%.0f' % m[-1] for m in batch_means)))
    shutdown(ctxs)
    medians, pc_medians = [], []
    for i, host in enumerate(chain.hosts):
        pc = emit_rtt('chain_rtt_us_%d' % (i + 1), batch_means[i],
                      per_call[i], calls, hops=i + 1, host=host,
                      **chain.extra)
        medians.append(statistics.median(batch_means[i]))
        pc_medians.append(pc['median'])
    if len(medians) > 1:
        emit('chain_rtt_added_us', added(medians), unit='us',
             hops=len(medians),
             per_call_median=statistics.median(added(pc_medians)),
             **chain.extra)


def chain2_start(router, chain, runs):
    shutdown(chain.start(router, 2))  # warm-up, not counted
    samples = []
    for i in range(runs):
        t0 = now()
        ctxs = chain.start(router, 2)
        samples.append((now() - t0) * 1e3)
        shutdown(ctxs)
        log('  start %d/%d: %.1f ms' % (i + 1, runs, samples[-1]))
    emit('chain2_start_ms', samples, unit='ms', hosts=chain.hosts[:2],
         **chain.extra)


def sudo_hop_start(router, chain, runs, sudo_user):
    hop1 = chain.start(router, 1)
    want_uid = pwd.getpwnam(sudo_user).pw_uid  # the hops share /etc/passwd

    def start():
        ctx = router.sudo(username=sudo_user, via=hop1[0],
                          python_path=REMOTE_PYTHON)
        ctx.call(funcs.ping)
        return ctx

    ctx = start()  # warm-up, not counted
    if ctx.call(os.geteuid) != want_uid:
        raise RuntimeError('sudo context does not run as ' + sudo_user)
    ctx.shutdown(wait=True)
    samples = []
    for i in range(runs):
        t0 = now()
        ctx = start()
        samples.append((now() - t0) * 1e3)
        ctx.shutdown(wait=True)
        log('  sudo %d/%d: %.1f ms' % (i + 1, runs, samples[-1]))
    shutdown(hop1)
    emit('sudo_hop_start_ms', samples, unit='ms', host=chain.hosts[0],
         sudo_user=sudo_user, **chain.extra)


def main():
    lab = lab_facts()
    env = os.environ.get
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--only', action='append', choices=FIGURES,
                    help='run only this figure (repeatable)')
    ap.add_argument('--batches', type=int, default=5,
                    help='batches per hop for chain_rtt_us_* (default 5)')
    ap.add_argument('--calls', type=int, default=2000,
                    help='calls per batch for chain_rtt_us_* (default 2000)')
    ap.add_argument('--runs', type=int, default=5,
                    help='measured chains for chain2_start_ms (default 5)')
    ap.add_argument('--sudo-runs', type=int, default=10,
                    help='measured contexts for sudo_hop_start_ms '
                         '(default 10)')
    ap.add_argument('--sudo-user', default='hypha-nopw')
    ap.add_argument('--hosts', default=env('PEER_CHAIN_HOSTS', lab['hosts']),
                    help='comma-separated chain, first hop first')
    ap.add_argument('--user', default=env('PEER_SSH_USER', lab['user']))
    ap.add_argument('--key', default=env('PEER_SSH_KEY', lab['key']))
    ap.add_argument('--known-hosts',
                    default=env('PEER_SSH_KNOWN_HOSTS', lab['known_hosts']))
    ap.add_argument('--stage-dir', default='/var/tmp',
                    help='where to copy key + known_hosts for the hops; must '
                         'be visible at the same path on every hop '
                         '(default /var/tmp)')
    ap.add_argument('--cipher', default=CIPHER,
                    help='ssh -c value (default %s)' % CIPHER)
    ap.add_argument('--compression', action='store_true',
                    help="keep Mitogen's default ssh Compression yes")
    args = ap.parse_args()
    if not (args.hosts and args.user and args.key and args.known_hosts):
        ap.error('no target: start the lab (tests/lab/lab.sh up) or pass '
                 '--hosts/--user/--key/--known-hosts')
    wanted = args.only or FIGURES
    if len(args.hosts.split(',')) < 2 and 'chain2_start_ms' in wanted:
        ap.error('chain2_start_ms needs at least two --hosts')

    stage, key, known_hosts = stage_credentials(args)
    chain = Chain(args, key, known_hosts)
    log('chain %s as %s; key staged in %s'
        % (' -> '.join(chain.hosts), args.user, stage))
    broker = mitogen.master.Broker()
    router = mitogen.master.Router(broker)
    try:
        for figure in FIGURES:
            if figure not in wanted:
                continue
            log('measuring ' + figure)
            if figure == 'chain_rtt_us':
                chain_rtt(router, chain, args.batches, args.calls)
            elif figure == 'chain2_start_ms':
                chain2_start(router, chain, args.runs)
            elif figure == 'sudo_hop_start_ms':
                sudo_hop_start(router, chain, args.sudo_runs, args.sudo_user)
    finally:
        broker.shutdown()
        broker.join()
        shutil.rmtree(stage, ignore_errors=True)


if __name__ == '__main__':
    main()
