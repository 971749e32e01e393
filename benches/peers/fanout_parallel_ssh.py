#!/usr/bin/env python3
"""Fan-out peer: parallel-ssh (PyPI `parallel-ssh`, libssh2 under gevent) runs `hostname` on N hosts.

Cold: one ParallelSSHClient over the N hosts (pool_size = FANOUT_FANOUT, the library's default
retries), `run_command('hostname')` and every host's output read. Warm: the same call again
FANOUT_WARM_ROUNDS times (default 5) on the client's sessions, which stay connected. Note:
parallel-ssh does not check host keys (it has no known_hosts option), so it skips that work.
Configuration and output: benches/peers/fanout_common.py. Run through benches/fanout.sh.
"""
import os
import sys
from importlib import metadata

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.dont_write_bytecode = True

from fanout_common import Config, Meter, emit, env, now  # noqa: E402
from pssh.clients import ParallelSSHClient  # noqa: E402


def round_of(client):
    """Run hostname on every host: (ok, failed, errors)."""
    output = client.run_command('hostname', stop_on_errors=False)
    ok, failed, errors = 0, 0, []
    outs = [None if h.exception is not None else list(h.stdout) for h in output]
    client.join(output)
    for host_out, lines in zip(output, outs):
        if host_out.exception is not None:
            failed += 1
            errors.append('%s: %s' % (type(host_out.exception).__name__, host_out.exception))
        elif host_out.exit_code == 0 and len(lines) == 1:
            ok += 1
        else:
            failed += 1
            errors.append('exit %s, %d lines' % (host_out.exit_code, len(lines)))
    return ok, failed, errors


def main():
    cfg = Config()
    rounds = int(env('FANOUT_WARM_ROUNDS', '5'))
    meter = Meter(cfg)
    client = ParallelSSHClient(cfg.hosts, user=cfg.user, pkey=cfg.key, pool_size=cfg.fanout,
                               timeout=cfg.timeout, allow_agent=False)
    ok, failed, errors = round_of(client)
    cold = meter.lap()
    warm_ms, laps, warm_failed = [], [], 0
    for _ in range(rounds):
        t = now()
        _, w_failed, w_errors = round_of(client)
        warm_ms.append((now() - t) * 1e3)
        laps.append(meter.lap())
        warm_failed += w_failed
        errors += ['warm: ' + e for e in w_errors]
    emit('parallel-ssh', cfg, cold, ok, failed, errors, warm_ms=warm_ms, warm_laps=laps,
         warm_failed=warm_failed, version=metadata.version('parallel-ssh'))


if __name__ == '__main__':
    main()
