#!/usr/bin/env python3
"""Fan-out drivers for tools that are commands: `hostname` (or `true`) on N hosts, timed.

    fanout_cmd.py pssh            Debian's pssh: parallel-ssh -p FANOUT -h HOSTS ... hostname
    fanout_cmd.py clush           ClusterShell (Debian): clush -S -f FANOUT -w NODESET hostname
    fanout_cmd.py bssh            bssh (crates.io, the binary FANOUT_BSSH): bssh -H HOSTS
                                  --parallel FANOUT hostname; its own SSH client (russh)
    fanout_cmd.py hypha-cli       hypha exec --json -f FANOUT NODESET -- hostname
    fanout_cmd.py hypha-persist   the same with --persist 60s (cold: starts the background
                                  process), then again with --persist 0 (warm: its contexts,
                                  which it then shuts down)
    fanout_cmd.py ssh-true        the floor: one `ssh HOST true` per host, FANOUT_TRUE_PAR
                                  (default 8) at a time; cold_s is the whole batch

hypha-cli and hypha-persist run the binary FANOUT_HYPHA. Each ssh (pssh's, clush's and ssh-true's) runs
as `ssh -F /dev/null -o BatchMode=yes -o IdentitiesOnly=yes -i KEY -o StrictHostKeyChecking=yes
-o UserKnownHostsFile=FILE -o GlobalKnownHostsFile=/dev/null`. The controller's CPU is the
command's (getrusage of the children, and their children). Configuration and output:
benches/peers/fanout_common.py. Run through benches/fanout.sh.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.dont_write_bytecode = True

from fanout_common import Config, Meter, emit, env, now, require  # noqa: E402


def ssh_options(cfg):
    return ['-F', '/dev/null', '-o', 'BatchMode=yes', '-o', 'IdentitiesOnly=yes', '-i', cfg.key,
            '-o', 'StrictHostKeyChecking=yes', '-o', 'UserKnownHostsFile=' + cfg.known_hosts,
            '-o', 'GlobalKnownHostsFile=/dev/null', '-o', 'ConnectTimeout=%d' % cfg.timeout]


def run(argv, timeout):
    """(returncode, stdout, stderr) of argv; a run past `timeout` is killed and fails."""
    try:
        p = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                           timeout=timeout)
    except subprocess.TimeoutExpired as e:
        return -1, e.stdout or '', 'timed out after %ds' % timeout
    return p.returncode, p.stdout, p.stderr


def pssh(cfg):
    with tempfile.NamedTemporaryFile('w', prefix='fanout-hosts-', suffix='.txt') as hosts:
        hosts.write(''.join(h + '\n' for h in cfg.hosts))
        hosts.flush()
        argv = ['parallel-ssh', '-h', hosts.name, '-l', cfg.user, '-p', str(cfg.fanout),
                '-t', str(cfg.timeout), '-x', ' '.join(ssh_options(cfg)), '-i', 'hostname']
        meter = Meter(cfg)
        code, out, err = run(argv, cfg.timeout * (cfg.n // cfg.fanout + 2))
        cold = meter.lap()
    ok = sum(' [SUCCESS] ' in line for line in out.splitlines())
    failures = [line for line in out.splitlines() if ' [FAILURE] ' in line]
    errors = [line.split(' [FAILURE] ', 1)[1] for line in failures]
    if code != 0 and not failures:
        errors.append('exit %d: %s' % (code, err.strip()[-200:]))
    version = subprocess.run(['parallel-ssh', '--version'], capture_output=True,
                             text=True).stdout.strip()
    emit('pssh', cfg, cold, ok, cfg.n - ok, errors, version=version)


def clush(cfg):
    # The ssh options as one string: clush splits it (shlex) and puts it before its own.
    argv = ['clush', '-S', '-f', str(cfg.fanout), '-l', cfg.user, '-t', str(cfg.timeout),
            '-o', ' '.join(ssh_options(cfg)), '-w', cfg.nodeset(), 'hostname']
    meter = Meter(cfg)
    code, out, err = run(argv, cfg.timeout * (cfg.n // cfg.fanout + 2))
    cold = meter.lap()
    lines = {}
    for line in out.splitlines():
        host, sep, _ = line.partition(': ')
        if sep:
            lines[host] = lines.get(host, 0) + 1
    failed_hosts = set()
    errors = []
    for line in err.splitlines():
        # "clush: 127.0.0.5: exited with exit code 255", and ssh's own lines as "HOST: ..."
        if line.startswith('clush: ') and 'exit' in line:
            host = line[len('clush: '):].split(':', 1)[0]
            failed_hosts.add(host)
            errors.append(line)
        elif line.startswith('clush: '):
            errors.append(line)
    ok = sum(1 for h in cfg.hosts if lines.get(h) == 1 and h not in failed_hosts)
    if code not in (0, 255) and not errors:
        errors.append('exit %d: %s' % (code, err.strip()[-200:]))
    version = subprocess.run(['clush', '--version'], capture_output=True, text=True).stdout.strip()
    emit('clush', cfg, cold, ok, cfg.n - ok, errors, version=version)


def bssh(cfg):
    # bssh reads host keys from ~/.ssh/known_hosts only: a home of its own holds the bench's.
    # Its --stream mode counts every host failed (2.2.3), so the output goes to files, and the
    # summary it writes there says each host's exit.
    exe = require('FANOUT_BSSH')
    with tempfile.TemporaryDirectory(prefix='fanout-bssh-') as home:
        os.makedirs(os.path.join(home, '.ssh'), mode=0o700)
        shutil.copy(cfg.known_hosts, os.path.join(home, '.ssh', 'known_hosts'))
        outdir = os.path.join(home, 'out')
        # bssh 2.2.3 ignores -l with -H (it logs in as the local user, and then calls a failed
        # authentication "Exit Status: 0"): the user goes into each host pattern.
        hosts = ','.join('%s@%s' % (cfg.user, part) for part in cfg.nodeset().split(','))
        argv = [exe, '-H', hosts, '-i', cfg.key,
                '--strict-host-key-checking', 'yes', '--connect-timeout', str(cfg.timeout),
                '--parallel', str(cfg.fanout), '-b', '-q', '--output-dir', outdir, 'hostname']
        env = dict(os.environ, HOME=home, NO_COLOR='1')
        env.pop('SSH_AUTH_SOCK', None)
        meter = Meter(cfg)
        try:
            p = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                               env=env, timeout=cfg.timeout * (cfg.n // cfg.fanout + 2))
            code, err = p.returncode, p.stderr
        except subprocess.TimeoutExpired:
            code, err = -1, 'timed out'
        cold = meter.lap()
        status = {}
        for name in os.listdir(outdir) if os.path.isdir(outdir) else []:
            if name.startswith('summary_'):
                with open(os.path.join(outdir, name), errors='replace') as f:
                    for line in f:
                        # "  hypha@127.0.0.1:22 - Exit Status: 0 ✓", or an error after the " - "
                        head, sep, what = line.strip().partition(' - ')
                        if sep and '@' in head:
                            status[head.split('@', 1)[1].rsplit(':', 1)[0]] = what
        lines = {}
        for name in os.listdir(outdir) if os.path.isdir(outdir) else []:
            if name.endswith('.stdout'):
                with open(os.path.join(outdir, name), errors='replace') as f:
                    lines[name.rsplit('_', 2)[0]] = sum(
                        1 for line in f if line.strip() and not line.startswith('# '))
    ok, errors = 0, []
    for host in cfg.hosts:
        what = status.get(host)
        if what is not None and what.startswith('Exit Status: 0') and lines.get(host) == 1:
            ok += 1
        else:
            errors.append('%s: %s' % (host, what or 'no result'))
    if not status:
        errors.append('exit %d: %s' % (code, err.strip()[-200:]))
    version = subprocess.run([exe, '--version'], capture_output=True, text=True).stdout.strip()
    emit('bssh', cfg, cold, ok, cfg.n - ok, [e.split(': ', 1)[1] for e in errors], version=version)


def hypha_argv(cfg, *extra):
    return [require('FANOUT_HYPHA'), 'exec', '--json', '-f', str(cfg.fanout), '-l', cfg.user,
            '-i', cfg.key, '--known-hosts', cfg.known_hosts, '-t', str(cfg.timeout),
            *extra, cfg.nodeset(), '--', 'hostname']


def hypha_count(code, out, err):
    """(ok, errors) from hypha exec --json output."""
    ok, errors = 0, []
    for line in out.splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if row.get('exit') == 0 and len(row.get('stdout') or []) == 1:
            ok += 1
        else:
            errors.append(str(row.get('error') or 'exit %s' % row.get('exit')))
    if code not in (0, 1, 2, 3):
        errors.append('exit %d: %s' % (code, err.strip()[-200:]))
    return ok, errors


def hypha_cli(cfg):
    meter = Meter(cfg)
    ok, errors = hypha_count(*run(hypha_argv(cfg), cfg.timeout * (cfg.n // cfg.fanout + 2)))
    emit('hypha-cli', cfg, meter.lap(), ok, cfg.n - ok, errors)


def hypha_persist(cfg):
    limit = cfg.timeout * (cfg.n // cfg.fanout + 2)
    meter = Meter(cfg)
    ok, errors = hypha_count(*run(hypha_argv(cfg, '--persist', '60s'), limit))
    cold = meter.lap()
    t = now()
    w_ok, w_errors = hypha_count(*run(hypha_argv(cfg, '--persist', '0'), limit))
    warm_ms = [(now() - t) * 1e3]
    lap = meter.lap()
    emit('hypha-persist', cfg, cold, ok, cfg.n - ok, errors + ['warm: ' + e for e in w_errors],
         warm_ms=warm_ms, warm_laps=[lap], warm_failed=cfg.n - w_ok,
         note='controller CPU: the two commands only, not their --persist process')


def ssh_true(cfg):
    par = int(env('FANOUT_TRUE_PAR', '8'))
    base = ['ssh'] + ssh_options(cfg) + ['-l', cfg.user, '-n']

    def one(host):
        code, _, err = run(base + [host, 'true'], cfg.timeout + 10)
        return None if code == 0 else 'exit %d: %s' % (code, err.strip()[-200:])

    meter = Meter(cfg)
    with ThreadPoolExecutor(max_workers=par) as pool:
        results = list(pool.map(one, cfg.hosts))
    cold = meter.lap()
    errors = [r for r in results if r is not None]
    emit('ssh-true', cfg, cold, cfg.n - len(errors), len(errors), errors, parallel=par)


TOOLS = {'pssh': pssh, 'clush': clush, 'bssh': bssh, 'hypha-cli': hypha_cli, 'hypha-persist': hypha_persist,
         'ssh-true': ssh_true}

if __name__ == '__main__':
    if len(sys.argv) != 2 or sys.argv[1] not in TOOLS:
        sys.exit('usage: fanout_cmd.py %s' % '|'.join(TOOLS))
    TOOLS[sys.argv[1]](Config())
