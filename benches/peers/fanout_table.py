#!/usr/bin/env python3
"""The markdown table of a benches/fanout.sh run: medians over the counted rounds (1..R), ratios of
hypha's cold time to each tool's, failures, and issue 12's targets, met or not.

    fanout_table.py [--command CMD] RESULTS.jsonl
"""
import argparse
import json
import statistics

HYPHA = ('hypha-fleet', 'hypha-cli')


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(v, digits=3):
    if v is None:
        return '–'
    if abs(v) >= 100:
        return '%.0f' % v
    return ('%%.%dg' % digits) % v


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--command', default='benches/fanout.sh run')
    ap.add_argument('results')
    args = ap.parse_args()
    rows = [json.loads(line) for line in open(args.results) if line.strip()]
    runs = [r for r in rows if r.get('tool') != 'hypha-local']
    local = [r for r in rows if r.get('tool') == 'hypha-local']
    ns = sorted({r['n'] for r in runs})
    order = []
    for r in runs:
        if r['tool'] not in order:
            order.append(r['tool'])
    stats = {}
    for n in ns:
        for tool in order:
            rs = [r for r in runs if r['n'] == n and r['tool'] == tool and r.get('round', 1) >= 1]
            if not rs:
                continue
            stats[n, tool] = {
                'runs': len(rs),
                'cold': med([r.get('cold_s') for r in rs]),
                'cold_min': min((r['cold_s'] for r in rs if r.get('cold_s') is not None), default=None),
                'cold_max': max((r['cold_s'] for r in rs if r.get('cold_s') is not None), default=None),
                'ok': sum(r.get('ok') or 0 for r in rs),
                'failed': sum(r.get('failed') or 0 for r in rs),
                'warm_failed': sum(r.get('warm_failed') or 0 for r in rs),
                'warm': med([r.get('warm_median_ms') for r in rs]),
                'warm_call': med([r.get('warm_call_median_ms') for r in rs]),
                'ctl': med([r.get('ctl_cpu_ms_per_host_cold') for r in rs]),
                'ctl_cg': med([r['ctl_cgroup_cpu_ms'] / n for r in rs if 'ctl_cgroup_cpu_ms' in r]),
                'sshd': med([r.get('sshd_cpu_ms_per_host_cold') for r in rs]),
                'errors': sorted({e for r in rs for e in r.get('errors') or []})[:3],
            }
    print('Fan-out: `hostname` on N hosts of one loopback sshd (`%s`); medians over the counted '
          'rounds.' % args.command)
    print()
    print('| N | tool | runs | cold s (min–max) | ok / failed (warm failed) | warm ms (call ms) | '
          'controller CPU ms/host cold (cgroup, whole run) | remote CPU ms/host cold | '
          'hypha-fleet ÷ tool | hypha-cli ÷ tool |')
    print('|---|---|---|---|---|---|---|---|---|---|')
    for n in ns:
        for tool in order:
            s = stats.get((n, tool))
            if not s:
                continue
            ratios = []
            for h in HYPHA:
                hs = stats.get((n, h))
                ratios.append(fmt(hs['cold'] / s['cold'], 2)
                              if hs and s['cold'] and hs['cold'] is not None else '–')
            warm = fmt(s['warm']) + ('' if s['warm_call'] is None else ' (%s)' % fmt(s['warm_call']))
            print('| %d | %s | %d | %s (%s–%s) | %d / %d (%d) | %s | %s (%s) | %s | %s | %s |' % (
                n, tool, s['runs'], fmt(s['cold']), fmt(s['cold_min']), fmt(s['cold_max']),
                s['ok'], s['failed'], s['warm_failed'], warm, fmt(s['ctl']),
                fmt(s['ctl_cg']), fmt(s['sshd']), ratios[0], ratios[1]))
    first = [r for r in runs if r.get('round') == 0 and r['tool'] in HYPHA + ('hypha-persist',)]
    if first:
        print()
        print('Round 0 (uncounted; the hosts\' agent cache emptied first, so the first start '
              'uploads the agent): ' + '; '.join(
                  '%s n=%d %s s (%s ok)' % (r['tool'], r['n'], fmt(r.get('cold_s')), r.get('ok'))
                  for r in first))
    for (n, tool), s in sorted(stats.items()):
        if s['errors']:
            print()
            print('Errors, %s n=%d: %s' % (tool, n, '; '.join(e[:200] for e in s['errors'])))
    if local:
        print()
        print('Local contexts (benches/fleet.rs): ' + '; '.join(
            '%s = %s %s (n=%s)' % (r.get('figure'), fmt(r.get('value', r.get('median'))),
                                   r.get('unit', ''), r.get('n')) for r in local))
    print()
    print('Issue 12 targets:')
    print()

    def ratio(n, a, b, key='cold'):
        sa, sb = stats.get((n, a)), stats.get((n, b))
        if not sa or not sb or sa[key] is None or not sb[key]:
            return None
        return sa[key] / sb[key]

    def target(what, value, limit):
        verdict = '–' if value is None else ('met' if value <= limit else 'MISSED')
        print('- %s: %s (target ≤ %s): %s' % (what, fmt(value, 2), limit, verdict))

    for h in HYPHA:
        if 50 in ns:
            for peer, limit in (('parallel-ssh', 0.8), ('pssh', 0.6), ('mitogen', 0.4)):
                target('cold 50, %s ÷ %s' % (h, peer), ratio(50, h, peer), limit)
        for n in ns:
            target('remote CPU per host, %s ÷ ssh-true, n=%d' % (h, n),
                   ratio(n, h, 'ssh-true', 'sshd'), 1.15)
        if 200 in ns:
            s = stats.get((200, h))
            if s:
                print('- 200 hosts, %s: %d ok, %d failed over %d runs: %s' % (
                    h, s['ok'], s['failed'], s['runs'],
                    'met' if s['failed'] == 0 and s['warm_failed'] == 0 else 'MISSED'))
            target('cold 200, %s ÷ parallel-ssh' % h, ratio(200, h, 'parallel-ssh'), 0.3)
    for n in ns:
        for h in ('hypha-fleet', 'hypha-persist'):
            target('warm %d (hostname spawned), %s ÷ mitogen' % (n, h), ratio(n, h, 'mitogen', 'warm'), 0.1)
        target('warm %d (a call, nothing spawned), hypha-fleet ÷ mitogen' % n,
               ratio(n, 'hypha-fleet', 'mitogen', 'warm_call'), 0.1)
        print('- controller CPU per cold host, n=%d (ms): %s' % (n, ', '.join(
            '%s %s' % (tool, fmt(stats[n, tool]['ctl'])) for tool in order
            if (n, tool) in stats and tool != 'ssh-true')))


if __name__ == '__main__':
    main()
