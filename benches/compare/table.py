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

# Display names and the order of rows (chart.py draws the same).
COLD = [('hypha-cli', 'hypha exec'), ('hypha-fleet', 'hypha Fleet (API)'),
        ('hypha-persist', 'hypha exec --persist (first run)'), ('mitogen', 'Mitogen'),
        ('parallel-ssh', 'parallel-ssh'), ('pssh', 'pssh'), ('clush', 'clush'),
        ('bssh', 'bssh'), ('ssh-true', '`ssh host true` ×N, 8 at a time')]
NAMES = dict(COLD)
# (tool, Stats attribute, the row's JSON field, label, the chart's label)
WARM = [('hypha-fleet', 'warm', 'warm_median_ms', 'hypha Fleet: `hostname` on its contexts',
         'hypha Fleet, hostname'),
        ('hypha-fleet', 'warm_call', 'warm_call_median_ms', 'hypha Fleet: a typed call (nothing spawned)',
         'hypha Fleet, typed call'),
        ('hypha-persist', 'warm', 'warm_median_ms', 'hypha exec --persist: a second run',
         'hypha exec --persist, 2nd run'),
        ('mitogen', 'warm', 'warm_median_ms', 'Mitogen: `hostname` (subprocess) on its contexts',
         'Mitogen, hostname'),
        ('mitogen', 'warm_call', 'warm_call_median_ms', 'Mitogen: a call (socket.gethostname)',
         'Mitogen, call'),
        ('parallel-ssh', 'warm', 'warm_median_ms', 'parallel-ssh: `hostname` on its open sessions',
         'parallel-ssh, hostname')]
SLOW = [('hypha-ssh', 'hypha, ssh method (cached agent)'),
        ('hypha-openssh', 'hypha, openssh method (cached agent)'),
        ('mitogen', 'Mitogen'), ('ssh-true', '`ssh host true`')]


def load(path):
    """The rows of a results file, one JSON object a line."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


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


def section(title):
    """A heading of the report, between blank lines."""
    print()
    print('## ' + title)
    print()


def head(*columns):
    """A table's header row and its rule."""
    print('| %s |' % ' | '.join(columns))
    print('|' + '---|' * len(columns))


def cell(v, base, failed=0, is_base=False):
    """A table cell: the median, in brackets its ratio to the base's (unless it is the base), and
    `!N` when N answers failed."""
    if v is None:
        return '–' + (' !%d' % failed if failed else '')
    rat = ratio(v, base)
    out = fmt(v) + ('' if rat is None or is_base else ' (%s)' % fmt(rat, 2))
    return out + (' !%d' % failed if failed else '')


class Stats(object):
    """The counted rounds (round ≥ 1) of one tool at one N."""

    def __init__(self, rows):
        self.rows = rows
        self.runs = len(rows)
        cold = [r.get('cold_s') for r in rows if r.get('cold_s') is not None]
        # A round where hosts failed may have been fast by failing: the median is of the rounds
        # where every host answered, if there were any (the failures are shown beside it).
        clean = [r['cold_s'] for r in rows if r.get('cold_s') is not None and not r.get('failed')]
        self.cold = med(clean or cold)
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


def targets(stats, ns, slow, floor):
    """The figures issues 11, 12 and 13 named, each against its limit."""
    lines = []

    def add(what, value, limit, at_most=True):
        if value is None:
            return
        ok = value <= limit if at_most else value >= limit
        lines.append('| %s | %s× | %s %s× | %s |' % (what, fmt(value, 2), '≤' if at_most else '≥',
                                                     limit, 'met' if ok else '**missed**'))

    def r(n, a, b, key='cold'):
        sa, sb = stats.get((n, a)), stats.get((n, b))
        return ratio(getattr(sa, key), getattr(sb, key)) if sa and sb else None

    for h in ('hypha-cli', 'hypha-fleet'):
        for peer, limit in (('parallel-ssh', 0.8), ('pssh', 0.6), ('mitogen', 0.4)):
            add('cold, N=50: %s ÷ %s' % (NAMES[h], NAMES[peer]), r(50, h, peer), limit)
        add('cold, N=200: %s ÷ parallel-ssh' % NAMES[h], r(200, h, 'parallel-ssh'), 0.3)
        for n in ns:
            add('remote CPU per host, N=%d: %s ÷ `ssh host true`' % (n, NAMES[h]),
                r(n, h, 'ssh-true', 'sshd'), 1.15)
    for n in ns:
        add('warm, N=%d: Fleet `hostname` ÷ Mitogen `hostname`' % n, r(n, 'hypha-fleet', 'mitogen', 'warm'), 0.1)
        add('warm, N=%d: Fleet typed call ÷ Mitogen call' % n,
            r(n, 'hypha-fleet', 'mitogen', 'warm_call'), 0.1)
    rate = {t: med([x['mib_s'] for x in floor if x['tool'] == t and x['ok']])
            for t in ('floor-hypha-copy', 'floor-scp')}
    add('file push: `hypha copy` MiB/s ÷ `scp` MiB/s', ratio(rate['floor-hypha-copy'], rate['floor-scp']),
        0.9, at_most=False)
    if slow:
        top = max(x['rtt_ms'] for x in slow)
        start = {t: med([x['start_s'] for x in slow if x['tool'] == t and x['ok'] and x['rtt_ms'] == top])
                 for t in ('slow-hypha-ssh', 'slow-hypha-openssh', 'slow-ssh-true')}
        for t in ('slow-hypha-ssh', 'slow-hypha-openssh'):
            add('start over %g ms: %s ÷ `ssh host true`' % (top, dict(SLOW)[t[5:]]),
                ratio(start[t], start['slow-ssh-true']), 1.2)
    if not lines:
        return
    section('Against the targets')
    print('The figures issues 11 (services), 12 (the fleet) and 13 (this comparison) named.')
    print()
    head('figure', 'measured', 'target', '')
    for line in lines:
        print(line)
    for n in (200, 500):
        for h in ('hypha-cli', 'hypha-fleet'):
            st = stats.get((n, h))
            if st:
                print()
                print('Every host answers at N=%d (%s): %d ok, %d failed cold and %d warm over %d '
                      'rounds: %s.' % (n, NAMES[h], st.ok, st.failed, st.warm_failed, st.runs,
                    'met' if st.failed + st.warm_failed == 0 else '**missed**'))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--charts', default='')
    ap.add_argument('--command', help='the command that made the results (else the run\'s own)')
    ap.add_argument('results')
    args = ap.parse_args()
    rows = load(args.results)
    meta = next((r for r in rows if r.get('tool') == 'meta'), {})
    if args.command:
        meta['command'] = args.command
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
    print('Made by `%s` on %s: %s cores (%s), %s GiB, %s, Linux %s. '
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
    if str(meta.get('command', '')).startswith('benches/compare/run.sh'):
        print()
        print('To make it again, as root on a clean clone (it installs what it needs, sets up its own '
              'sshd and the peers): `bash tests/lab/lab.sh up && benches/compare/run.sh --publish` '
              '(the lab is for the slow link only; `--quick` stops at 50 hosts).')
    for r in skipped:
        print()
        print('**Not measured: %s** (%s).' % (r['tool'], r['skipped']))
    print()
    top = max(ns) if ns else 1
    fanouts = ' or '.join(str(f) for f in sorted({r['fanout'] for r in fan if r.get('fanout')})) or '?'
    print('The hosts: one sshd (OpenSSH, MaxStartups %s) in a network namespace of its own, whose '
          'addresses 127.0.0.1 .. 127.0.%d.%d stand for %d hosts; every tool connects %s at a time '
          '(its fan-out), checks host keys against the same known_hosts (parallel-ssh '
          'cannot: it checks none) and authenticates with the same ed25519 key. The hosts share '
          'one agent cache, so hypha\'s rows are cached starts (the first start, which uploads '
          'the agent, is round 0, not counted). Each figure is the median of the counted rounds; '
          'the tools run one after another in an order that rotates every round.' % (
              meta.get('max_startups') or '1000:30:2000', (top - 1) // 254, (top - 1) % 254 + 1, top,
              fanouts))

    section('Cold: start, then `hostname`, on N hosts')
    print('Seconds, median; in brackets, the tool\'s time ÷ `hypha exec`\'s (above 1: hypha is '
          'faster); hosts that did not answer, over all rounds, after a `!`.')
    print()
    head('tool', *('N=%d' % n for n in ns))
    for t in tools:
        cells = []
        for n in ns:
            s, h = stats.get((n, t)), stats.get((n, 'hypha-cli'))
            cells.append(cell(s.cold, h.cold if h else None, s.failed, t == 'hypha-cli') if s else '–')
        print('| %s | %s |' % (NAMES[t], ' | '.join(cells)))
    if args.charts:
        print()
        print('![cold start and hostname against N](%scold.svg)' % args.charts)

    if any(getattr(s, 'warm') is not None for s in stats.values()):
        section('Warm: the same again, on contexts already up')
        print('Milliseconds for a round on all N hosts, median; in brackets, ÷ the hypha Fleet\'s '
              'same kind of round; `!` counts failed answers.')
        print()
        head('what', *('N=%d' % n for n in ns))
        for t, key, _, label, _ in WARM:
            if not any((n, t) in stats and getattr(stats[n, t], key) is not None for n in ns):
                continue
            cells = []
            for n in ns:
                s, base = stats.get((n, t)), stats.get((n, 'hypha-fleet'))
                cells.append(cell(getattr(s, key) if s else None, getattr(base, key) if base else None,
                                  s.warm_failed if s and key == 'warm' else 0, t == 'hypha-fleet'))
            print('| %s | %s |' % (label, ' | '.join(cells)))
        if args.charts:
            print()
            print('![warm rounds against N](%swarm.svg)' % args.charts)

    if ns:
        section('What it costs the controller and the hosts')
        print('Per host, median over the rounds. Controller CPU: the tool\'s processes (getrusage; '
              'in brackets its cgroup over the whole run, warm rounds included). Peak memory: the '
              'v1 memory cgroup of the tool\'s processes together (anonymous memory and the file '
              'pages they brought in), at the peak, over the whole run. Remote CPU: the sshd\'s '
              'cgroup (sshd, the sessions and what they ran) during the cold part.')
        print()
        head('N', 'tool', 'runs', 'cold s (min–max)', 'ok / failed (warm failed)', 'controller CPU ms/host',
             'peak memory MiB (KiB/host)', 'remote CPU ms/host (÷ ssh true)')
        for n in ns:
            for t in tools:
                s = stats.get((n, t))
                if not s:
                    continue
                st = stats.get((n, 'ssh-true'))
                rr = ratio(s.sshd, st.sshd if st else None)
                print('| %d | %s | %d | %s (%s–%s) | %d / %d (%d) | %s (%s) | %s (%s) | %s%s |' % (
                    n, NAMES[t], s.runs, fmt(s.cold), fmt(s.cold_min), fmt(s.cold_max), s.ok,
                    s.failed, s.warm_failed, fmt(s.ctl), fmt(s.ctl_cg),
                    fmt(None if s.mem_kb is None else s.mem_kb / 1024), fmt(s.mem_host),
                    fmt(s.sshd), '' if rr is None or t == 'ssh-true' else ' (%s)' % fmt(rr, 2)))
        if args.charts:
            print()
            print('![controller CPU per host against N](%scpu.svg)' % args.charts)

    if slow:
        section('Over a slow link')
        print('One lab host behind benches/compare/relay.py, which delays each direction by half '
              'the round trip time (RTT). Start: hypha\'s `start_seconds` (from the start to the '
              'agent\'s Hello), Mitogen\'s router.ssh() until the first call answers, the whole '
              '`ssh host true`; median over the rounds. Turns: how often the client spoke after '
              'the server had, counted by the relay (a lower bound on the round trips waited for).')
        print()
        head('RTT ms', 'tool', 'runs', 'start s', 'whole command s', 'turns', 'start ÷ ssh true', 'failed')
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

    one = [r for r in rows if str(r.get('tool', '')).startswith('one-')]
    if one:
        section('One context: round trips and bytes/s')
        print('One context on one host, aes128-ctr for both: hypha (benches/one.rs, libssh2 in '
              'process, a typed `Ping` answered by the agent; zeros uploaded to a handler that '
              'drops them; the process service running `true`) and Mitogen (benches/peers/mitogen_ssh.py: '
              '`context.call(ping)`; `subprocess.check_output([\'true\'])` through `context.call`; '
              'the remote pulling a file through FileService and dropping it). Median over the rounds '
              'of each round\'s figure: a round trip is the mean of a batch of calls one after '
              'another (2,000 pings, 200 checks), the median of 5 batches; in brackets the median '
              'single call. The two ran in turn, each round.')
        print()
        head('tool', 'runs', 'call round trip µs', '`check(["true"])` µs', 'upload MiB/s', 'failed rounds')
        figures = ('call_rtt_us', 'check_true_us', 'bytes_mib_s')
        cells = {}
        for t, label in (('one-hypha', 'hypha'), ('one-mitogen', 'Mitogen')):
            rs = [r for r in one if r['tool'] == t]
            if not rs:
                continue
            of = {f: [r for r in rs if r['figure'] == f] for f in figures}
            cells[t] = [med([r['median'] for r in of[f]]) for f in figures]
            spread = [' (%s)' % fmt(med([r.get('per_call_median') for r in of[f]])) if of[f] else ''
                      for f in figures[:2]]
            print('| %s | %d | %s%s | %s%s | %s | %d |' % (
                label, len(of['call_rtt_us']), fmt(cells[t][0]), spread[0], fmt(cells[t][1]),
                spread[1], fmt(cells[t][2]), sum(1 for r in rs if r['figure'] == 'failed')))
        if len(cells) == 2:
            h, m = cells['one-hypha'], cells['one-mitogen']
            print()
            print('Mitogen ÷ hypha: call round trip %s×, `check(["true"])` %s×, upload %s× (below 1: '
                  'hypha moves more).' % tuple(fmt(ratio(a, b), 2) for a, b in zip(m, h)))

    pushes = [('floor-hypha-copy', '`hypha copy` (CLI, ssh method)'), ('floor-scp', '`scp`'),
              ('floor-mitogen-push', 'Mitogen: router.ssh() + FileService into a file'),
              ('floor-parallel-ssh-push', 'parallel-ssh: `copy_file` (SFTP)'),
              ('floor-ssh-pipe', 'floor: `ssh host \'cat > /dev/null\' < file` (OpenSSH)')]
    if any(r['tool'] == t for r in floor for t, _ in pushes):
        section('File push')
        mib = next(r['mib'] for r in floor if 'mib' in r)
        print('%d MiB of random bytes to one host\'s /tmp, the whole command timed (start, '
              'connection and authentication included), aes128-ctr where the tool lets one '
              'choose (parallel-ssh does not); MiB/s, median of the rounds; the tools in turn.' % mib)
        print()
        head('tool', 'runs', 'MiB/s', 'seconds', '÷ hypha copy', 'failed')
        base = med([r['seconds'] for r in floor if r['tool'] == 'floor-hypha-copy' and r['ok']])
        for t, label in pushes:
            rs = [r for r in floor if r['tool'] == t]
            if not rs:
                continue
            good = [r for r in rs if r['ok']]
            secs = med([r['seconds'] for r in good])
            print('| %s | %d | %s | %s | %s | %d |' % (
                label, len(rs), fmt(med([r['mib_s'] for r in good])), fmt(secs),
                fmt(ratio(secs, base), 2) if t != 'floor-hypha-copy' else '–', len(rs) - len(good)))

    section('The floor')
    st = [s.sshd for (n, t), s in stats.items() if t == 'ssh-true' and s.sshd is not None]
    if st:
        print('- sshd\'s own CPU for one `ssh host true` (connection, key exchange, '
              'authentication, a session running `true`): %s ms (median over the N measured; '
              'each tool\'s remote CPU per host is compared with it above).' % fmt(med(st)))
    pipe = [r for r in floor if r['tool'] == 'floor-pipe']
    if pipe:
        print('- The bare pipe round trip (64 bytes there and back through a child\'s stdin and '
              'stdout, benches/local.rs `pipe_pingpong_64b`): %s µs.' % fmt(pipe[0]['us']))
    rs = [r for r in floor if r['tool'] == 'floor-ssh-pipe' and r['ok']]
    if rs:
        print('- OpenSSH\'s own bytes/s, `ssh host \'cat > /dev/null\' < file`, %d MiB of random '
              'bytes through one connection, %s: %s MiB/s (median of %d; connection set-up '
              'included).' % (rs[0]['mib'], rs[0]['cipher'], fmt(med([r['mib_s'] for r in rs])), len(rs)))

    local = [r for r in rows if r.get('tool') == 'hypha-local']
    if local:
        section('Local contexts')
        print('benches/fleet.rs: ' + '; '.join(
            '%s = %s %s (n=%s)' % (r.get('figure'), fmt(r.get('value', r.get('median'))),
                                   r.get('unit', ''), r.get('n')) for r in local) + '.')

    targets(stats, ns, slow, floor)

    errs = [(n, t, s.errors) for (n, t), s in sorted(stats.items()) if s.errors]
    if errs:
        section('Errors (the first distinct ones)')
        for n, t, es in errs:
            print('- %s, N=%d: %s' % (NAMES[t], n, '; '.join(e[:200] for e in es)))
    first = [r for r in fan if r.get('round') == 0]
    if first:
        print()
        print('Round 0 (not counted; the hosts\' agent cache emptied first, so each hypha program '
              'uploads its agent, once for all the hosts: the CLI\'s, and the Fleet bench\'s, '
              'another executable): ' + '; '.join(
                  '%s, N=%d: %s s, %s ok' % (NAMES[r['tool']], r['n'], fmt(r.get('cold_s')), r.get('ok'))
                  for r in first) + '.')
    if fan:
        notes()


def notes():
    """What a reader needs to read the figures right, whatever the run."""
    section('Reading it')
    for line in (
            'Every tool and every host share this machine\'s cores: at large N a cold run is '
            'bound by the CPU all the handshakes need (the sshd\'s side and the client\'s), not by '
            'how many are in flight, so the controller and remote CPU columns say more about other '
            'machines than the seconds do.',
            'A host counts as answered only when it printed one line (its `hostname`) and exited '
            '0. bssh 2.2.3 ignores `-l` when given `-H` and reports a failed login as "Exit '
            'Status: 0", so its driver puts the user into each host pattern; its answers are '
            'checked the same way as everyone\'s.',
            'parallel-ssh checks no host keys (it has no such option), so it skips work every '
            'other tool does.',
            'hypha exec\'s remote CPU includes the end of each session; the Fleet bench\'s stops at '
            'the first answer, its contexts staying up. `ssh host true` is a whole session.',
            'Round trips on one context and the bare pipe floor depend on how fast an idle core '
            'wakes up on this virtual machine: the same pipe ping-pong measured 7 µs with the '
            'cores busy and 40-54 µs with them idle.'):
        print('- ' + line)


if __name__ == '__main__':
    main()
