#!/usr/bin/env python3
"""Fan-out drivers for tools that are commands: `hostname` (or `true`) on N hosts, timed.

    fanout_cmd.py pssh            Debian's pssh: parallel-ssh -p FANOUT -h HOSTS ... hostname
    fanout_cmd.py hypha-cli       hypha exec --json -f FANOUT 127.0.0.[1-N] -- hostname
    fanout_cmd.py hypha-persist   the same with --persist 60s (cold: starts the background
                                  process), then again with --persist 0 (warm: its contexts,
                                  which it then shuts down)
    fanout_cmd.py ssh-true        the floor: one `ssh HOST true` per host, FANOUT_TRUE_PAR
                                  (default 8) at a time; cold_s is the whole batch

hypha-cli and hypha-persist run the binary FANOUT_HYPHA. Each ssh (pssh's and ssh-true's) runs
as `ssh -F /dev/null -o BatchMode=yes -o IdentitiesOnly=yes -i KEY -o StrictHostKeyChecking=yes
-o UserKnownHostsFile=FILE -o GlobalKnownHostsFile=/dev/null`. The controller's CPU is the
command's (getrusage of the children, and their children). Configuration and output:
benches/peers/fanout_common.py. Run through benches/fanout.sh.
"""
import json
import os
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


def hypha_argv(cfg, *extra):
    return [require('FANOUT_HYPHA'), 'exec', '--json', '-f', str(cfg.fanout), '-l', cfg.user,
            '-i', cfg.key, '--known-hosts', cfg.known_hosts, '-t', str(cfg.timeout),
            *extra, '127.0.0.[1-%d]' % cfg.n, '--', 'hostname']


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


TOOLS = {'pssh': pssh, 'hypha-cli': hypha_cli, 'hypha-persist': hypha_persist,
         'ssh-true': ssh_true}

if __name__ == '__main__':
    if len(sys.argv) != 2 or sys.argv[1] not in TOOLS:
        sys.exit('usage: fanout_cmd.py %s' % '|'.join(TOOLS))
    TOOLS[sys.argv[1]](Config())
