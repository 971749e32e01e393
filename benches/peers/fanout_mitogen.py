#!/usr/bin/env python3
"""Fan-out peer: Mitogen starts a context on N hosts over SSH and runs `hostname` in each.

Cold: FANOUT_FANOUT threads (Mitogen's router.ssh() blocks until its context is up) each start
one host's context (the system ssh client, host keys enforced against FANOUT_KNOWN_HOSTS, the
remote /usr/bin/python3) and call subprocess.check_output(['hostname']) there. Warm: the same
call again on every context at once (call_async, then every answer), FANOUT_WARM_ROUNDS times
(default 5); then as many rounds of socket.gethostname() (warm_call_ms: a call answered in the
context, no process spawned). Configuration and output: benches/peers/fanout_common.py. Run through
benches/fanout.sh.
"""
import os
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.dont_write_bytecode = True

from fanout_common import Config, Meter, emit, env, median, now  # noqa: E402
import mitogen  # noqa: E402
import mitogen.master  # noqa: E402


def main():
    cfg = Config()
    rounds = int(env('FANOUT_WARM_ROUNDS', '5'))
    kwargs = dict(username=cfg.user, identity_file=cfg.key, identities_only=True,
                  check_host_keys='enforce', compression=False,
                  python_path=['/usr/bin/python3'], connect_timeout=cfg.timeout,
                  ssh_args=['-F', '/dev/null',
                            '-o', 'UserKnownHostsFile=' + cfg.known_hosts,
                            '-o', 'GlobalKnownHostsFile=/dev/null'])
    meter = Meter(cfg)
    broker = mitogen.master.Broker()
    router = mitogen.master.Router(broker)

    def start(host):
        try:
            ctx = router.ssh(hostname=host, **kwargs)
            out = ctx.call(subprocess.check_output, ['hostname'])
        except Exception as e:  # one host's failure is counted, not fatal
            return None, '%s: %s' % (type(e).__name__, str(e).splitlines()[0] if str(e) else '')
        return ctx, None if len(out.splitlines()) == 1 else 'output %r' % out

    with ThreadPoolExecutor(max_workers=cfg.fanout) as pool:
        started = list(pool.map(start, cfg.hosts))
    cold = meter.lap()
    contexts = [ctx for ctx, error in started if error is None]
    errors = [error for _, error in started if error is not None]
    warm_ms, laps, warm_failed = [], [], 0
    for _ in range(rounds):
        t = now()
        calls = [ctx.call_async(subprocess.check_output, ['hostname']) for ctx in contexts]
        for call in calls:
            try:
                call.get().unpickle()
            except Exception as e:
                warm_failed += 1
                errors.append('warm: %s: %s' % (type(e).__name__, e))
        warm_ms.append((now() - t) * 1e3)
        laps.append(meter.lap())
    # The same rounds as one call per host answered in the context: no process spawned.
    warm_call_ms = []
    for _ in range(rounds):
        t = now()
        calls = [ctx.call_async(socket.gethostname) for ctx in contexts]
        for call in calls:
            try:
                call.get().unpickle()
            except Exception as e:
                warm_failed += 1
                errors.append('warm call: %s: %s' % (type(e).__name__, e))
        warm_call_ms.append((now() - t) * 1e3)
    broker.shutdown()
    broker.join()
    emit('mitogen', cfg, cold, len(contexts), cfg.n - len(contexts), errors, warm_ms=warm_ms,
         warm_laps=laps, warm_failed=warm_failed,
         warm_call_ms=[round(v, 3) for v in warm_call_ms],
         warm_call_median_ms=round(median(warm_call_ms), 3),
         version='.'.join(map(str, mitogen.__version__)))


if __name__ == '__main__':
    main()
