#!/usr/bin/env python3
"""Starts over a slow link (issue 13): one lab host behind benches/compare/relay.py, which delays
each direction by RTT/2, at each round trip time asked (default 0, 25 and 100 ms); per start, the
time and the relay's count of `turns` (the round trips the protocol waited for).

    slow.py [--rtts "0 25 100"] [--rounds R] [--hypha EXE] [--host ADDR] > rows.jsonl

Tools, each one connection through the relay, in rotating order each round:

    hypha-ssh       `hypha ping --json --method ssh` (libssh2 in process): start_seconds, from the
                    start until the agent's Hello (the agent cached on the host: one uncounted
                    start first at each RTT)
    hypha-openssh   the same with `--method openssh` (the system's ssh)
    mitogen         router.ssh() until the first call answers (the system's ssh, /usr/bin/python3)
    ssh-true        `ssh HOST true`: the whole command

Every ssh runs with -F /dev/null, the lab key alone (IdentitiesOnly) and host keys enforced
against a known_hosts naming the relay's address ([127.0.0.1]:PORT, the lab host's key). One JSON
object a start on stdout: tool, rtt_ms, round, start_s (the tool's own figure where it has one),
wall_s (the whole command), turns, bytes_up, bytes_down, ok, error. Needs the lab up
(tests/lab/lab.sh; its env names the host, user, key and known_hosts) and, for Mitogen, the venv
of benches/peers/setup.sh (run this with its python). The relay listens on 127.0.0.1 only.
"""
import argparse
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TOOLS = ('hypha-ssh', 'hypha-openssh', 'mitogen', 'ssh-true')


def log(msg):
    print('[slow] ' + msg, file=sys.stderr, flush=True)


def lab_env(path):
    env = {}
    with open(path) as f:
        for line in f:
            k, sep, v = line.strip().partition('=')
            if sep:
                env[k] = v
    return env


class Relay(object):
    """relay.py on a free port in front of TARGET; its per-connection JSON lines in a queue."""

    def __init__(self, target, rtt_ms):
        self.proc = subprocess.Popen(
            [sys.executable, os.path.join(HERE, 'relay.py'), '0', target, str(rtt_ms)],
            stdout=subprocess.PIPE, text=True)
        self.lines = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        first = self.next(10)
        if first is None or 'listening' not in first:
            self.close()
            raise RuntimeError('the relay did not start: %r' % first)
        self.port = first['listening']

    def _read(self):
        for line in self.proc.stdout:
            try:
                self.lines.put(json.loads(line))
            except ValueError:
                pass
        self.lines.put(None)

    def next(self, timeout):
        """The next connection's line, or None after `timeout` seconds or when the relay ended."""
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            return None

    def drain(self):
        while True:
            try:
                self.lines.get_nowait()
            except queue.Empty:
                return

    def close(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def ssh_options(key, known_hosts):
    return ['-F', '/dev/null', '-o', 'BatchMode=yes', '-o', 'IdentitiesOnly=yes', '-i', key,
            '-o', 'StrictHostKeyChecking=yes', '-o', 'UserKnownHostsFile=' + known_hosts,
            '-o', 'GlobalKnownHostsFile=/dev/null', '-o', 'ConnectTimeout=30']


def run(argv, timeout=60, env=None):
    t = time.monotonic()
    try:
        p = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                           timeout=timeout, env=env)
        code, out, err = p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired:
        code, out, err = -1, '', 'timed out after %ds' % timeout
    return code, out, err, time.monotonic() - t


def start_once(tool, args, port, known_hosts):
    """(start_s or None, wall_s, error or None) of one start of TOOL through the relay."""
    if tool in ('hypha-ssh', 'hypha-openssh'):
        method = tool.split('-', 1)[1]
        code, out, err, wall = run([args.hypha, 'ping', '--json', '--method', method,
                                    '-l', args.user, '-i', args.key, '--known-hosts', known_hosts,
                                    '-t', '30', '127.0.0.1:%d' % port])
        for line in out.splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if row.get('error'):
                return None, wall, str(row['error'])
            return row.get('start_seconds'), wall, None
        return None, wall, 'exit %d: %s' % (code, err.strip()[-200:])
    if tool == 'mitogen':
        code, out, err, wall = run([sys.executable, os.path.abspath(__file__), '--mitogen-start',
                                    str(port), args.user, args.key, known_hosts])
        try:
            return float(out.strip().splitlines()[-1]), wall, None
        except (ValueError, IndexError):
            return None, wall, 'exit %d: %s' % (code, err.strip()[-200:])
    if tool == 'ssh-true':
        code, _, err, wall = run(['ssh'] + ssh_options(args.key, known_hosts) +
                                 ['-p', str(port), '-l', args.user, '-n', '127.0.0.1', 'true'])
        return (wall, wall, None) if code == 0 else (None, wall, 'exit %d: %s' % (
            code, err.strip()[-200:]))
    raise ValueError(tool)


def mitogen_start(port, user, key, known_hosts):
    """In a process of its own: seconds from router.ssh() to the first answered call."""
    import mitogen.master
    import os as remote_os
    broker = mitogen.master.Broker()
    router = mitogen.master.Router(broker)
    try:
        t = time.monotonic()
        ctx = router.ssh(hostname='127.0.0.1', port=port, username=user, identity_file=key,
                         identities_only=True, check_host_keys='enforce', compression=False,
                         python_path=['/usr/bin/python3'], connect_timeout=30,
                         ssh_args=['-F', '/dev/null', '-o', 'UserKnownHostsFile=' + known_hosts,
                                   '-o', 'GlobalKnownHostsFile=/dev/null'])
        ctx.call(remote_os.getpid)
        print('%.6f' % (time.monotonic() - t), flush=True)
    finally:
        broker.shutdown()
        broker.join()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--rtts', default='0 25 100')
    ap.add_argument('--rounds', type=int, default=5)
    ap.add_argument('--tools', default=' '.join(TOOLS))
    ap.add_argument('--hypha', required=True)
    ap.add_argument('--lab', default=os.environ.get('HYPHA_LAB_DIR', '/run/hypha-lab'))
    ap.add_argument('--host', help='the lab host (default: plain)')
    args = ap.parse_args()
    env = lab_env(os.path.join(args.lab, 'env'))
    args.host = args.host or env['HOST_plain']
    args.user = env.get('USER', 'hypha')
    args.key = os.path.join(args.lab, 'keys', 'id_ed25519')
    tools = args.tools.split()
    host_keys = [line.split(None, 1)[1] for line in open(os.path.join(args.lab, 'known_hosts'))
                 if line.split(None, 1)[0] == args.host]
    if not host_keys:
        sys.exit('no key for %s in the lab known_hosts' % args.host)
    with tempfile.TemporaryDirectory(prefix='hypha-slow-') as tmp:
        known_hosts = os.path.join(tmp, 'known_hosts')
        for rtt in [float(v) for v in args.rtts.split()]:
            relay = Relay('%s:22' % args.host, rtt)
            try:
                with open(known_hosts, 'w') as f:
                    f.writelines('[127.0.0.1]:%d %s' % (relay.port, k) for k in host_keys)
                log('rtt %g ms: relay on 127.0.0.1:%d in front of %s' % (rtt, relay.port, args.host))
                for rnd in range(args.rounds + 1):
                    for i in range(len(tools)):
                        tool = tools[(i + rnd) % len(tools)]
                        start_s, wall, error = start_once(tool, args, relay.port, known_hosts)
                        conn = relay.next(15) or {}
                        relay.drain()
                        if rnd == 0:
                            continue  # uncounted: the agent cached, the page cache warm
                        row = {'tool': 'slow-' + tool, 'rtt_ms': rtt, 'round': rnd,
                               'start_s': None if start_s is None else round(start_s, 4),
                               'wall_s': round(wall, 4), 'turns': conn.get('turns'),
                               'bytes_up': conn.get('bytes_up'),
                               'bytes_down': conn.get('bytes_down'),
                               'ok': error is None, 'error': error}
                        print(json.dumps(row), flush=True)
                        log('rtt %g round %d %-13s start %s s, wall %.3f s, %s turns%s' % (
                            rtt, rnd, tool, row['start_s'], wall, row['turns'],
                            '' if error is None else ': ' + error[:160]))
            finally:
                relay.close()


if __name__ == '__main__':
    if len(sys.argv) == 6 and sys.argv[1] == '--mitogen-start':
        mitogen_start(int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5])
    else:
        main()
