#!/usr/bin/env python3
"""Peer benchmark: Python Mitogen local contexts (``router.local()``, no sshd).

Prints one JSON object per figure on stdout; progress goes to stderr.

Figures
-------
local_start_ms
    Wall time from calling ``router.local()`` to the first answered
    ``context.call(ping)``. This includes spawning the child interpreter,
    Mitogen's bootstrap and the child fetching ``mitogen_funcs`` through the
    importer. One warm-up context is started first and not counted; each
    measured context is shut down afterwards, outside the timed span.
call_rtt_us
    Round trip of ``context.call(ping)`` (returns a small int) on one already
    started context. ``median``/``p10``/``p90`` are over the batch means; each
    call is also timed alone, giving ``per_call_median``/``_p10``/``_p90``.
hundred_contexts_s
    Total wall time to start 100 local contexts and call each once, done from
    a pool of 100 threads (see ``hundred_contexts``). Median of 3 repeats.
bytes_mib_s
    Controller -> one local context throughput using Mitogen's own bulk
    primitive, ``mitogen.service.FileService`` (what ansible-mitogen uses to
    ship files): the child pulls a ``--bytes-mib`` MiB file from the
    controller's FileService over its Sender/Receiver stream with
    acknowledgement windowing, and discards the data. Median of 3 repeats.
bytes_call_mib_s
    The same amount sent the naive way: sequential ``context.call(length,
    chunk)`` with a 1 MiB ``bytes`` argument. Median of 3 repeats.

Run ``benches/peers/setup.sh`` once, then
``target/peers-venv/bin/python benches/peers/mitogen_local.py``.
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.dont_write_bytecode = True  # keep benches/peers/ free of __pycache__

try:
    import mitogen
    import mitogen.master
    import mitogen.service
except ImportError:
    sys.exit('mitogen is not installed: run benches/peers/setup.sh and use '
             'target/peers-venv/bin/python')

import mitogen_funcs as funcs

FIGURES = ('local_start_ms', 'call_rtt_us', 'hundred_contexts_s',
           'bytes_mib_s', 'bytes_call_mib_s', 'check_true_us')
MIB = 1 << 20
now = time.perf_counter


def log(msg):
    print('[mitogen_local] ' + msg, file=sys.stderr, flush=True)


def summary(values):
    """Median and 10th/90th percentiles (inclusive method) of `values`."""
    values = sorted(values)
    if len(values) > 1:
        dec = statistics.quantiles(values, n=10, method='inclusive')
        p10, p90 = dec[0], dec[-1]
    else:
        p10 = p90 = values[0]
    return {'median': statistics.median(values), 'p10': p10, 'p90': p90,
            'n': len(values)}


def emit(figure, values, **extra):
    row = {'peer': 'mitogen', 'figure': figure}
    row.update(summary(values))
    row.update(extra)
    row['mitogen_version'] = '.'.join(map(str, mitogen.__version__))
    row['python'] = sys.version.split()[0]
    print(json.dumps(row), flush=True)


def start_and_ping(router):
    ctx = router.local()
    ctx.call(funcs.ping)
    return ctx


def local_start(router, runs):
    start_and_ping(router).shutdown(wait=True)  # warm-up, not counted
    samples = []
    for _ in range(runs):
        t0 = now()
        ctx = start_and_ping(router)
        samples.append((now() - t0) * 1e3)
        ctx.shutdown(wait=True)
    emit('local_start_ms', samples, unit='ms')


def ping_batch(ctx, calls):
    """Round trips of `calls` pings on `ctx`, one after another, in us."""
    times = []
    for _ in range(calls):
        t0 = now()
        ctx.call(funcs.ping)
        times.append((now() - t0) * 1e6)
    return times


def measure_rtt(ctx, batches, calls):
    """Warm up, then `batches` batches: (batch means, every call), in us."""
    ping_batch(ctx, 200)
    batch_means, per_call = [], []
    for _ in range(batches):
        times = ping_batch(ctx, calls)
        batch_means.append(statistics.fmean(times))
        per_call.extend(times)
    return batch_means, per_call


def emit_rtt(figure, batch_means, per_call, calls, **extra):
    """One round-trip figure: batch means, with the per-call median and spread."""
    pc = summary(per_call)
    emit(figure, batch_means, unit='us', calls_per_batch=calls,
         per_call_median=pc['median'], per_call_p10=pc['p10'],
         per_call_p90=pc['p90'], **extra)
    return pc


def call_rtt(router, batches=5, calls=2000):
    ctx = start_and_ping(router)
    batch_means, per_call = measure_rtt(ctx, batches, calls)
    ctx.shutdown(wait=True)
    emit_rtt('call_rtt_us', batch_means, per_call, calls)


def hundred_contexts(router, count=100, repeats=3):
    # Concurrency: router.local() blocks its calling thread until the child has
    # booted, while all the bootstrap I/O runs on Mitogen's single broker
    # thread. So we call router.local() + ctx.call(ping) from `count` threads at
    # once (one per context); Mitogen has no batch-connect API, and the broker
    # multiplexes every handshake. call_async would not help: the start, not
    # the call, is the serial part. On 2 cores, 4-8 threads measured the same
    # as 100 (child interpreter start-up is CPU-bound), so 100 costs nothing.
    samples = []
    for _ in range(repeats):
        with ThreadPoolExecutor(max_workers=count) as pool:
            t0 = now()
            ctxs = list(pool.map(lambda _: start_and_ping(router),
                                 range(count)))
            samples.append(now() - t0)
        for latch in [c.shutdown() for c in ctxs]:
            latch.get()
    emit('hundred_contexts_s', samples, unit='s', contexts=count)


def fileservice_mib_s(router, start, mib, repeats=3):
    """MiB/s of ``repeats`` fetches of a ``mib`` MiB file through
    ``mitogen.service.FileService`` by the context ``start(router)`` returns
    (after one warm-up fetch)."""
    pool = mitogen.service.get_or_create_pool(router=router)
    service = mitogen.service.FileService(router)
    pool.add(service)
    fd, path = tempfile.mkstemp(prefix='mitogen-peer-')
    try:
        chunk = bytes(MIB)
        with os.fdopen(fd, 'wb') as f:
            for _ in range(mib):
                f.write(chunk)
        service.register(path)
        ctx = start(router)
        ctx.call(funcs.fetch_from_parent, path)  # warm-up (imports + cache)
        samples = []
        for _ in range(repeats):
            t0 = now()
            got = ctx.call(funcs.fetch_from_parent, path)
            samples.append(got / MIB / (now() - t0))
            log('  transfer: %.1f MiB/s' % samples[-1])
        ctx.shutdown(wait=True)
    finally:
        os.unlink(path)
    return samples


def bytes_fileservice(router, mib, repeats=3):
    samples = fileservice_mib_s(router, start_and_ping, mib, repeats)
    emit('bytes_mib_s', samples, unit='MiB/s', mib=mib,
         method='mitogen.service.FileService')


def bytes_calls(router, mib, repeats=3):
    ctx = start_and_ping(router)
    chunk = bytes(MIB)
    ctx.call(funcs.length, chunk)  # warm-up
    samples = []
    for _ in range(repeats):
        t0 = now()
        total = sum(ctx.call(funcs.length, chunk) for _ in range(mib))
        samples.append(total / MIB / (now() - t0))
    ctx.shutdown(wait=True)
    emit('bytes_call_mib_s', samples, unit='MiB/s', mib=mib,
         method='context.call(fn, 1 MiB bytes)')


def measure_check_true(ctx, batches=5, calls=200):
    """`subprocess.check_output(['true'])` through `context.call` on warm `ctx`: (batch means,
    every call), in us. The process service's figure (hypha: ctx.check(Command::new(["true"])))."""
    import subprocess
    ctx.call(subprocess.check_output, ['true'])
    batch_means, per_call = [], []
    for _ in range(batches):
        times = []
        for _ in range(calls):
            t0 = now()
            ctx.call(subprocess.check_output, ['true'])
            times.append((now() - t0) * 1e6)
        batch_means.append(statistics.fmean(times))
        per_call.extend(times)
    return batch_means, per_call


def check_true(router, calls=200):
    ctx = start_and_ping(router)
    batch_means, per_call = measure_check_true(ctx, calls=calls)
    ctx.shutdown(wait=True)
    emit_rtt('check_true_us', batch_means, per_call, calls)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--only', action='append', choices=FIGURES,
                    help='run only this figure (repeatable)')
    ap.add_argument('--runs', type=int, default=20,
                    help='measured contexts for local_start_ms (default 20)')
    ap.add_argument('--bytes-mib', type=int, default=256,
                    help='MiB per bulk transfer (default 256)')
    args = ap.parse_args()
    wanted = args.only or FIGURES

    broker = mitogen.master.Broker()
    router = mitogen.master.Router(broker)
    try:
        for figure in FIGURES:
            if figure not in wanted:
                continue
            log('measuring ' + figure)
            if figure == 'local_start_ms':
                local_start(router, args.runs)
            elif figure == 'call_rtt_us':
                call_rtt(router)
            elif figure == 'hundred_contexts_s':
                hundred_contexts(router)
            elif figure == 'bytes_mib_s':
                bytes_fileservice(router, args.bytes_mib)
            elif figure == 'bytes_call_mib_s':
                bytes_calls(router, args.bytes_mib)
            elif figure == 'check_true_us':
                check_true(router)
    finally:
        broker.shutdown()
        broker.join()


if __name__ == '__main__':
    main()
