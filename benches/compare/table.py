#!/usr/bin/env python3
"""The report of a benches/compare/run.sh run, in markdown: medians over the counted rounds, ratios
to hypha, failures counted, the slow link's starts and turns, the floor, and links to the charts.

    table.py [--charts PREFIX] RESULTS.jsonl > REPORT.md

PREFIX is put before `cold.svg`, `warm.svg` and `cpu.svg` in the chart links (chart.py draws
them). Standard library only.
"""
import argparse
import json
import statistics

# Display names and the order of rows.
COLD = [('hypha-cli', 'hypha exec'), ('hypha-fleet', 'hypha Fleet (API)'),
        ('hypha-persist', 'hypha exec --persist (first run)'), ('mitogen', 'Mitogen'),
        ('parallel-ssh', 'parallel-ssh'), ('pssh', 'pssh'), ('clush', 'clush'),
        ('bssh', 'bssh'), ('ssh-true', '`ssh host true` ×N, 8 at a time')]
NAMES = dict(COLD)
SLOW = [('hypha-ssh', 'hypha, ssh method (cached agent)'),
        ('hypha-openssh', 'hypha, openssh method (cached agent)'),
        ('mitogen', 'Mitogen'), ('ssh-true', '`ssh host true`')]


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(v, digits=3):
    if v is None:
        return '–'
    if abs(v) >= 100:
        return '%.0f' % v
    return ('%%.%dg' % digits) % v


def ratio(a, b):
    return None if a is None or not b else a / b


class Stats(object):
    """The counted rounds (round ≥ 1) of one tool at one N."""

    def __init__(self, rows):
        self.rows = rows
        self.runs = len(rows)
        cold = [r.get('cold_s') for r in rows if r.get('cold_s') is not None]
        self.cold = med(cold)
        self.cold_min = min(cold) if cold else None
        self.cold_max = max(cold) if cold else None
        self.ok = sum(r.get('ok') or 0 for r in rows)
        self.failed = sum(r.get('failed') or 0 for r in rows)
        self.warm_failed = sum(r.get('warm_failed') or 0 for r in rows)
        self.warm = med([r.get('warm_median_ms') for r in rows])
        self.warm_call = med([r.get('warm_call_median_ms') for r in rows])
        self.ctl = med([r.get('ctl_cpu_ms_per_host_cold') for r in rows])
        self.ctl_cg = med([r['ctl_cgroup_cpu_ms'] / r['n'] for r in rows if 'ctl_cgroup_cpu_ms' in r])
        self.mem_kb = med([r.get('ctl_mem_peak_kb') for r in rows])
        self.mem_host = med([r.get('ctl_mem_peak_kb_per_host') for r in rows])
        self.sshd = med([r.get('sshd_cpu_ms_per_host_cold') for r in rows])
        self.errors = sorted({e for r in rows for e in r.get('errors') or []})[:3]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--charts', default='')
    ap.add_argument('results')
    args = ap.parse_args()
    rows = [json.loads(line) for line in open(args.results) if line.strip()]
    meta = next((r for r in rows if r.get('tool') == 'meta'), {})
    end = next((r for r in rows if r.get('tool') == 'meta-end'), {})
    skipped = [r for r in rows if 'skipped' in r]
    fan = [r for r in rows if 'n' in r and r.get('tool') in NAMES]
    slow = [r for r in rows if str(r.get('tool', '')).startswith('slow-')]
    floor = [r for r in rows if str(r.get('tool', '')).startswith('floor-')]
    ns = sorted({r['n'] for r in fan if r.get('round', 1) >= 1})
    tools = [t for t, _ in COLD if any(r['tool'] == t for r in fan)]
    stats = {}
    for n in ns:
        for t in tools:
            rs = [r for r in fan if r['n'] == n and r['tool'] == t and r.get('round', 1) >= 1]
            if rs:
                stats[n, t] = Stats(rs)
    versions = {}
    for r in fan:
        if r.get('version'):
            versions[r['tool']] = r['version']

    print('# hypha next to its peers')
    print()
    print('Made by `%s` (benches/compare/run.sh) on %s: %s cores (%s), %s GiB, %s, Linux %s. '
          'Wall time of the whole run: %s s.' % (
              meta.get('command', '?'), meta.get('date', '?'), meta.get('cpus', '?'),
              meta.get('cpu', '?'), meta.get('mem_gib', '?'), meta.get('os', '?'),
              meta.get('kernel', '?'), fmt(end.get('wall_s'), 4)))
    print()
    peers = ['hypha %s' % meta.get('hypha', '?')]
    for t in ('mitogen', 'parallel-ssh', 'pssh', 'clush', 'bssh'):
        if t in versions:
            label = {'mitogen': 'Mitogen', 'parallel-ssh': 'parallel-ssh',
                     'pssh': 'pssh'}.get(t, '')
            peers.append(('%s %s' % (label, versions[t])).strip())
    peers.append(meta.get('openssh') or 'OpenSSH ?')
    peers.append('Python %s' % meta.get('python', '?'))
    print('Versions: %s.' % ', '.join(peers))
    for r in skipped:
        print()
        print('**Not measured: %s** (%s).' % (r['tool'], r['skipped']))
    print()
    print('The hosts: one sshd (OpenSSH, MaxStartups 1000:30:2000) in a network namespace of its '
          'own, whose addresses 127.0.0.1 .. 127.0.1.246 stand for 500 hosts; every tool connects '
          '64 at a time (its fan-out), checks host keys against the same known_hosts (parallel-ssh '
          'cannot: it checks none) and authenticates with the same ed25519 key. The hosts share '
          'one agent cache, so hypha\'s rows are cached starts (the first start, which uploads '
          'the agent, is round 0, not counted). Each figure is the median of the counted rounds; '
          'the tools run one after another in an order that rotates every round.')

    print()
    print('## Cold: start, then `hostname`, on N hosts')
    print()
    print('Seconds, median; in brackets, the tool\'s time ÷ `hypha exec`\'s (above 1: hypha is '
          'faster); hosts that did not answer, over all rounds, after a `!`.')
    print()
    print('| tool | ' + ' | '.join('N=%d' % n for n in ns) + ' |')
    print('|---|' + '---|' * len(ns))
    for t in tools:
        cells = []
        for n in ns:
            s = stats.get((n, t))
            if not s:
                cells.append('–')
                continue
            h = stats.get((n, 'hypha-cli'))
            rat = ratio(s.cold, h.cold if h else None)
            cell = fmt(s.cold) + ('' if rat is None or t == 'hypha-cli' else ' (%s)' % fmt(rat, 2))
            if s.failed:
                cell += ' !%d' % s.failed
            cells.append(cell)
        print('| %s | %s |' % (NAMES[t], ' | '.join(cells)))
    if args.charts:
        print()
        print('![cold start and hostname against N](%scold.svg)' % args.charts)

    warm_rows = [('hypha-fleet', 'warm', 'hypha Fleet: `hostname` on its contexts'),
                 ('hypha-fleet', 'warm_call', 'hypha Fleet: a typed call (nothing spawned)'),
                 ('hypha-persist', 'warm', 'hypha exec --persist: a second run'),
                 ('mitogen', 'warm', 'Mitogen: `hostname` (subprocess) on its contexts'),
                 ('mitogen', 'warm_call', 'Mitogen: a call (socket.gethostname)'),
                 ('parallel-ssh', 'warm', 'parallel-ssh: `hostname` on its open sessions')]
    if any(getattr(s, 'warm') is not None for s in stats.values()):
        print()
        print('## Warm: the same again, on contexts already up')
        print()
        print('Milliseconds for a round on all N hosts, median; in brackets, ÷ the hypha Fleet\'s '
              'same kind of round; `!` counts failed answers.')
        print()
        print('| what | ' + ' | '.join('N=%d' % n for n in ns) + ' |')
        print('|---|' + '---|' * len(ns))
        for t, key, label in warm_rows:
            if not any((n, t) in stats and getattr(stats[n, t], key) is not None for n in ns):
                continue
            cells = []
            for n in ns:
                s = stats.get((n, t))
                v = getattr(s, key) if s else None
                if v is None:
                    cells.append('–')
                    continue
                base = stats.get((n, 'hypha-fleet'))
                b = getattr(base, key if key == 'warm_call' else 'warm') if base else None
                rat = ratio(v, b)
                cell = fmt(v) + ('' if rat is None or t == 'hypha-fleet' else ' (%s)' % fmt(rat, 2))
                if s.warm_failed and key == 'warm':
                    cell += ' !%d' % s.warm_failed
                cells.append(cell)
            print('| %s | %s |' % (label, ' | '.join(cells)))
        if args.charts:
            print()
            print('![warm rounds against N](%swarm.svg)' % args.charts)

    if ns:
        print()
        print('## What it costs the controller and the hosts')
        print()
        print('Per host, median over the rounds. Controller CPU: the tool\'s processes (getrusage; '
              'in brackets its cgroup over the whole run, warm rounds included). Peak memory: the '
              'v1 memory cgroup of the tool\'s processes together (anonymous memory and the file '
              'pages they brought in), at the peak, over the whole run. Remote CPU: the sshd\'s '
              'cgroup (sshd, the sessions and what they ran) during the cold part.')
        print()
        print('| N | tool | runs | cold s (min–max) | ok / failed | controller CPU ms/host | '
              'peak memory MiB (KiB/host) | remote CPU ms/host (÷ ssh true) |')
        print('|---|---|---|---|---|---|---|---|')
        for n in ns:
            for t in tools:
                s = stats.get((n, t))
                if not s:
                    continue
                st = stats.get((n, 'ssh-true'))
                rr = ratio(s.sshd, st.sshd if st else None)
                print('| %d | %s | %d | %s (%s–%s) | %d / %d | %s (%s) | %s (%s) | %s%s |' % (
                    n, NAMES[t], s.runs, fmt(s.cold), fmt(s.cold_min), fmt(s.cold_max), s.ok,
                    s.failed + s.warm_failed, fmt(s.ctl), fmt(s.ctl_cg),
                    fmt(None if s.mem_kb is None else s.mem_kb / 1024), fmt(s.mem_host),
                    fmt(s.sshd), '' if rr is None or t == 'ssh-true' else ' (%s)' % fmt(rr, 2)))
        if args.charts:
            print()
            print('![controller CPU per host against N](%scpu.svg)' % args.charts)

    if slow:
        print()
        print('## Over a slow link')
        print()
        print('One lab host behind benches/compare/relay.py, which delays each direction by half '
              'the round trip time (RTT). Start: hypha\'s `start_seconds` (from the start to the '
              'agent\'s Hello), Mitogen\'s router.ssh() until the first call answers, the whole '
              '`ssh host true`; median over the rounds. Turns: how often the client spoke after '
              'the server had, counted by the relay (a lower bound on the round trips waited for).')
        print()
        print('| RTT ms | tool | runs | start s | whole command s | turns | start ÷ ssh true | failed |')
        print('|---|---|---|---|---|---|---|---|')
        rtts = sorted({r['rtt_ms'] for r in slow})
        for rtt in rtts:
            base = med([r['start_s'] for r in slow
                        if r['rtt_ms'] == rtt and r['tool'] == 'slow-ssh-true' and r['ok']])
            for t, label in SLOW:
                rs = [r for r in slow if r['rtt_ms'] == rtt and r['tool'] == 'slow-' + t]
                if not rs:
                    continue
                good = [r for r in rs if r['ok']]
                start = med([r['start_s'] for r in good])
                turns = sorted({r['turns'] for r in good if r['turns'] is not None})
                print('| %g | %s | %d | %s | %s | %s | %s | %d |' % (
                    rtt, label, len(rs), fmt(start), fmt(med([r['wall_s'] for r in good])),
                    '–'.join(str(v) for v in (turns[:1] + turns[-1:] if len(turns) > 1 else turns)) or '–',
                    fmt(ratio(start, base), 2), len(rs) - len(good)))
        h = med([r['start_s'] for r in slow if r['tool'] == 'slow-hypha-ssh' and r['ok']
                 and r['rtt_ms'] == max(rtts)])
        s = med([r['start_s'] for r in slow if r['tool'] == 'slow-ssh-true' and r['ok']
                 and r['rtt_ms'] == max(rtts)])
        rat = ratio(h, s)
        if rat is not None:
            print()
            print('Issue 13\'s target, a cached hypha start within 1.2× of `ssh host true` at %g ms: '
                  '%s× (%s).' % (max(rtts), fmt(rat, 3), 'met' if rat <= 1.2 else 'missed'))

    print()
    print('## The floor')
    print()
    st = [s.sshd for (n, t), s in stats.items() if t == 'ssh-true' and s.sshd is not None]
    if st:
        print('- sshd\'s own CPU for one `ssh host true` (connection, key exchange, '
              'authentication, a session running `true`): %s ms (median over the N measured; '
              'each tool\'s remote CPU per host is compared with it above).' % fmt(med(st)))
    pipe = [r for r in floor if r['tool'] == 'floor-pipe']
    if pipe:
        print('- The bare pipe round trip (64 bytes there and back through a child\'s stdin and '
              'stdout, benches/local.rs `pipe_pingpong_64b`): %s µs.' % fmt(pipe[0]['us']))
    for tool, label in (('floor-ssh-pipe', 'OpenSSH, `ssh host \'cat > /dev/null\'` < file'),
                        ('floor-scp', '`scp file host:`'), ('floor-hypha-copy', '`hypha copy host file`')):
        rs = [r for r in floor if r['tool'] == tool and r['ok']]
        if rs:
            print('- %s, %d MiB of random bytes through one connection, %s: %s MiB/s (median of %d; '
                  'connection set-up included).' % (label, rs[0]['mib'], rs[0]['cipher'],
                                                    fmt(med([r['mib_s'] for r in rs])), len(rs)))
    bad = [r for r in floor if not r.get('ok', True)]
    if bad:
        print('- Failed: %s.' % ', '.join(r['tool'] for r in bad))

    errs = [(n, t, s.errors) for (n, t), s in sorted(stats.items()) if s.errors]
    if errs:
        print()
        print('## Errors (the first distinct ones)')
        print()
        for n, t, es in errs:
            print('- %s, N=%d: %s' % (NAMES[t], n, '; '.join(e[:200] for e in es)))
    first = [r for r in fan if r.get('round') == 0]
    if first:
        print()
        print('Round 0 (not counted; the hosts\' agent cache emptied first, so hypha uploads its '
              'agent, once for all the hosts): ' + '; '.join(
                  '%s, N=%d: %s s, %s ok' % (NAMES[r['tool']], r['n'], fmt(r.get('cold_s')), r.get('ok'))
                  for r in first) + '.')


if __name__ == '__main__':
    main()
