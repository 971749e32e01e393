#!/usr/bin/env python3
"""Peer benchmark: Python Mitogen over SSH (``router.ssh()``) to a lab host.

Prints one JSON object per figure on stdout; progress goes to stderr.
Target defaults to the SSH test lab's "plain" host (tests/lab/lab.sh; facts
read from ``$HYPHA_LAB_DIR/env``, default /run/hypha-lab/env); override with
--host/--user/--key/--known-hosts or PEER_SSH_HOST, PEER_SSH_USER,
PEER_SSH_KEY, PEER_SSH_KNOWN_HOSTS (the same variables openssh_baseline.sh
reads).

Every context is started with the same ssh command line: ``-F /dev/null`` (no
user/system ssh_config), host keys enforced against the given known_hosts
only (StrictHostKeyChecking yes, UserKnownHostsFile=<file>,
GlobalKnownHostsFile=/dev/null), key auth with IdentitiesOnly, BatchMode, and
the cipher of openssh_baseline.sh. Mitogen's default ``Compression yes`` is
turned off (--compression turns it back on): the bulk data is zeros, which
would otherwise measure zlib rather than the transport. The remote runs
/usr/bin/python3.

Figures
-------
ssh_start_ms
    Wall time from calling ``router.ssh()`` to the first answered
    ``context.call(ping)``: ssh process start, key exchange and auth, remote
    interpreter start, Mitogen's bootstrap, and the remote fetching
    ``mitogen_funcs`` through the importer. One warm-up context first, not
    counted; each measured context is shut down afterwards, outside the timed
    span. --runs contexts (default 10).
ssh_call_rtt_us
    Round trip of ``context.call(ping)`` on one started SSH context; batches
    as for call_rtt_us in mitogen_local.py (median/p10/p90 over batch means,
    per_call_* over single calls).
ssh_bytes_mib_s
    Controller -> remote throughput through one SSH context with
    ``mitogen.service.FileService``, as bytes_mib_s in mitogen_local.py: the
    remote pulls a --bytes-mib MiB file (default 256) and discards it. Median
    of 3 repeats after one warm-up transfer.

Run ``benches/peers/setup.sh`` once, start the lab (tests/lab/lab.sh up), then
``target/peers-venv/bin/python benches/peers/mitogen_ssh.py``.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.dont_write_bytecode = True  # keep benches/peers/ free of __pycache__

from mitogen_local import emit, emit_rtt, fileservice_mib_s, measure_check_true, measure_rtt, now  # also checks for mitogen
import mitogen.master

import mitogen_funcs as funcs

FIGURES = ('ssh_start_ms', 'ssh_call_rtt_us', 'ssh_bytes_mib_s', 'ssh_check_true_us')
CIPHER = 'aes128-gcm@openssh.com'


def log(msg):
    print('[mitogen_ssh] ' + msg, file=sys.stderr, flush=True)


def read_lab_env():
    """The lab's facts (tests/lab/lab.sh writes them as KEY=value lines), or {}."""
    lab_env = os.path.join(os.environ.get('HYPHA_LAB_DIR', '/run/hypha-lab'),
                           'env')
    facts = {}
    try:
        with open(lab_env) as f:
            for line in f:
                key, sep, value = line.strip().partition('=')
                if sep:
                    facts[key] = value
    except OSError:
        pass
    return facts


def lab_facts():
    facts = read_lab_env()
    lab = facts.get('LAB', '')
    return {
        'host': facts.get('HOST_plain'),
        'user': facts.get('USER'),
        'key': lab and os.path.join(lab, 'keys', 'id_ed25519'),
        'known_hosts': lab and os.path.join(lab, 'known_hosts'),
    }


class Target(object):
    """Keyword arguments for router.ssh(), identical for every context."""

    def __init__(self, args):
        self.kwargs = dict(
            hostname=args.host, username=args.user,
            identity_file=args.key, identities_only=True,
            check_host_keys='enforce',  # -o StrictHostKeyChecking yes
            compression=args.compression,
            python_path=['/usr/bin/python3'],
            connect_timeout=30,
            ssh_args=['-F', '/dev/null',
                      '-o', 'UserKnownHostsFile=' + args.known_hosts,
                      '-o', 'GlobalKnownHostsFile=/dev/null',
                      '-c', args.cipher],
        )
        self.extra = {'host': args.host, 'cipher': args.cipher,
                      'compression': args.compression}

    def start(self, router):
        ctx = router.ssh(**self.kwargs)
        ctx.call(funcs.ping)
        return ctx


def ssh_start(router, target, runs):
    target.start(router).shutdown(wait=True)  # warm-up, not counted
    samples = []
    for i in range(runs):
        t0 = now()
        ctx = target.start(router)
        samples.append((now() - t0) * 1e3)
        ctx.shutdown(wait=True)
        log('  start %d/%d: %.1f ms' % (i + 1, runs, samples[-1]))
    emit('ssh_start_ms', samples, unit='ms', **target.extra)


def ssh_call_rtt(router, target, batches=5, calls=2000):
    ctx = target.start(router)
    batch_means, per_call = measure_rtt(ctx, batches, calls)
    ctx.shutdown(wait=True)
    emit_rtt('ssh_call_rtt_us', batch_means, per_call, calls, **target.extra)


def ssh_check_true(router, target, calls=200):
    """As check_true_us in mitogen_local.py, on a warm SSH context (hypha: benches/ssh.rs
    ssh_check_true)."""
    ctx = target.start(router)
    batch_means, per_call = measure_check_true(ctx, calls=calls)
    ctx.shutdown(wait=True)
    emit_rtt('ssh_check_true_us', batch_means, per_call, calls, **target.extra)


def ssh_bytes(router, target, mib, repeats=3):
    samples = fileservice_mib_s(router, target.start, mib, repeats)
    emit('ssh_bytes_mib_s', samples, unit='MiB/s', mib=mib,
         method='mitogen.service.FileService', **target.extra)


def main():
    lab = lab_facts()
    env = os.environ.get
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--only', action='append', choices=FIGURES,
                    help='run only this figure (repeatable)')
    ap.add_argument('--runs', type=int, default=10,
                    help='measured contexts for ssh_start_ms (default 10)')
    ap.add_argument('--bytes-mib', type=int, default=256,
                    help='MiB per bulk transfer (default 256)')
    ap.add_argument('--host', default=env('PEER_SSH_HOST', lab['host']))
    ap.add_argument('--user', default=env('PEER_SSH_USER', lab['user']))
    ap.add_argument('--key', default=env('PEER_SSH_KEY', lab['key']))
    ap.add_argument('--known-hosts',
                    default=env('PEER_SSH_KNOWN_HOSTS', lab['known_hosts']))
    ap.add_argument('--cipher', default=CIPHER,
                    help='ssh -c value (default %s)' % CIPHER)
    ap.add_argument('--compression', action='store_true',
                    help="keep Mitogen's default ssh Compression yes")
    args = ap.parse_args()
    if not (args.host and args.user and args.key and args.known_hosts):
        ap.error('no target: start the lab (tests/lab/lab.sh up) or pass '
                 '--host/--user/--key/--known-hosts')
    wanted = args.only or FIGURES
    target = Target(args)
    log('target %s@%s' % (args.user, args.host))

    broker = mitogen.master.Broker()
    router = mitogen.master.Router(broker)
    try:
        for figure in FIGURES:
            if figure not in wanted:
                continue
            log('measuring ' + figure)
            if figure == 'ssh_start_ms':
                ssh_start(router, target, args.runs)
            elif figure == 'ssh_call_rtt_us':
                ssh_call_rtt(router, target)
            elif figure == 'ssh_bytes_mib_s':
                ssh_bytes(router, target, args.bytes_mib)
            elif figure == 'ssh_check_true_us':
                ssh_check_true(router, target)
    finally:
        broker.shutdown()
        broker.join()


if __name__ == '__main__':
    main()
