#!/usr/bin/env python3
"""A file push by a peer, the whole command timed (connection set-up included), as benches/compare/
run.sh times `scp` and `hypha copy` beside it:

    push.py mitogen|parallel-ssh FILE HOST DEST --user U --key K --known-hosts F [--cipher C]

mitogen: router.ssh() (the system's ssh, -F /dev/null, host keys enforced, the cipher given),
then the remote pulls FILE through mitogen.service.FileService into DEST (mitogen_funcs.
fetch_to_file). parallel-ssh: ParallelSSHClient([HOST]).copy_file(FILE, DEST) (SFTP over libssh2;
parallel-ssh checks no host keys and picks its own cipher; the size on the host is read after the
push, outside `seconds`, but inside the whole command run.sh times). One JSON object on stdout:
tool, seconds, bytes (as the host has them), ok, error.
"""
import argparse
import json
import os
import shlex
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.dont_write_bytecode = True


def mitogen_push(args):
    import mitogen.master
    import mitogen.service
    import mitogen_funcs as funcs
    broker = mitogen.master.Broker()
    router = mitogen.master.Router(broker)
    try:
        pool = mitogen.service.get_or_create_pool(router=router)
        service = mitogen.service.FileService(router)
        pool.add(service)
        service.register(args.file)
        ctx = router.ssh(hostname=args.host, username=args.user, identity_file=args.key,
                         identities_only=True, check_host_keys='enforce', compression=False,
                         python_path=['/usr/bin/python3'], connect_timeout=30,
                         ssh_args=['-F', '/dev/null', '-o', 'UserKnownHostsFile=' + args.known_hosts,
                                   '-o', 'GlobalKnownHostsFile=/dev/null', '-c', args.cipher])
        return ctx.call(funcs.fetch_to_file, args.file, args.dest)
    finally:
        broker.shutdown()
        broker.join()


def parallel_ssh_push(args):
    from gevent import joinall
    from pssh.clients import ParallelSSHClient
    client = ParallelSSHClient([args.host], user=args.user, pkey=args.key, allow_agent=False,
                               timeout=30)
    joinall(client.copy_file(args.file, args.dest), raise_error=True)
    return client


def remote_size(client, dest):
    """The size of DEST on the host, by `wc -c` (after the timed push)."""
    out = client.run_command('wc -c < %s' % shlex.quote(dest))
    client.join(out)
    return int(''.join(out[0].stdout).strip())


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('tool', choices=('mitogen', 'parallel-ssh'))
    ap.add_argument('file')
    ap.add_argument('host')
    ap.add_argument('dest')
    ap.add_argument('--user', required=True)
    ap.add_argument('--key', required=True)
    ap.add_argument('--known-hosts', required=True)
    ap.add_argument('--cipher', default='aes128-ctr')
    args = ap.parse_args()
    t0 = time.monotonic()
    row = {'tool': args.tool}
    try:
        if args.tool == 'mitogen':
            row['bytes'] = mitogen_push(args)  # the remote counts what it wrote
            row['seconds'] = time.monotonic() - t0
        else:
            client = parallel_ssh_push(args)
            row['seconds'] = time.monotonic() - t0
            row['bytes'] = remote_size(client, args.dest)
        row['ok'] = row['bytes'] == os.path.getsize(args.file)
    except Exception as e:  # noqa: BLE001 (the row says what failed)
        row.update(ok=False, error='%s: %s' % (type(e).__name__, e), seconds=time.monotonic() - t0)
    print(json.dumps(row), flush=True)
    return 0 if row['ok'] else 1


if __name__ == '__main__':
    sys.exit(main())
