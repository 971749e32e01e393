"""What the fan-out drivers (benches/peers/fanout_*.py, run by benches/fanout.sh) share.

They are configured as benches/fanout.rs is, by environment variables:

    FANOUT_HOSTS=50          N hosts (inside the bench's network namespace): 127.0.0.1 .. 127.0.0.254,
                             then 127.0.1.1 .. 127.0.1.254 (host_addr, up to 508)
    FANOUT_USER, FANOUT_KEY, FANOUT_KNOWN_HOSTS
    FANOUT_FANOUT=64         connections at once, where the tool has such a bound
    FANOUT_TIMEOUT=60        per-host connect timeout, seconds
    FANOUT_SSHD_CPU=FILE     optional: the cgroup v2 cpu.stat of the sshd, read before and after

and print one JSON object on stdout: tool, n, cold_s, warm_ms (where the tool has warm contexts),
ok, failed, the controller's CPU in ms (getrusage of itself and its children, plus what its live
children have used so far) and the sshd's CPU in ms, each also per host.
"""
import json
import os
import resource
import sys
import time


def env(name, default=None):
    value = os.environ.get(name, '')
    return value if value else default


def require(name):
    value = env(name)
    if value is None:
        sys.exit('%s is not set: run this through benches/fanout.sh' % name)
    return value


MAX_HOSTS = 508


def host_addr(i):
    """Host i (1-based): 127.0.0.i up to 254, then 127.0.1.(i - 254), as benches/fanout.sh."""
    return '127.0.%d.%d' % ((i - 1) // 254, (i - 1) % 254 + 1)


def nodeset(n):
    """Hosts 1..n as a nodeset: `127.0.0.[1-254],127.0.1.[1-M]`."""
    parts = []
    for block in range((n - 1) // 254 + 1):
        last = min(254, n - block * 254)
        parts.append('127.0.%d.[1-%d]' % (block, last) if last > 1 else '127.0.%d.1' % block)
    return ','.join(parts)


class Config(object):
    def __init__(self):
        self.n = int(env('FANOUT_HOSTS', '50'))
        if not 1 <= self.n <= MAX_HOSTS:
            sys.exit('FANOUT_HOSTS is 1..%d' % MAX_HOSTS)
        self.user = require('FANOUT_USER')
        self.key = require('FANOUT_KEY')
        self.known_hosts = require('FANOUT_KNOWN_HOSTS')
        self.fanout = int(env('FANOUT_FANOUT', '64'))
        self.timeout = int(env('FANOUT_TIMEOUT', '60'))
        self.sshd_stat = env('FANOUT_SSHD_CPU')
        self.hosts = [host_addr(i) for i in range(1, self.n + 1)]

    def nodeset(self):
        """The hosts in ClusterShell's nodeset syntax (hypha's and clush's target lists)."""
        return nodeset(self.n)


def now():
    return time.monotonic()


def _ticks_ms(ticks):
    return ticks * 1e3 / os.sysconf('SC_CLK_TCK')


def _live_children_ms():
    """CPU used so far by this process's live descendants (not yet in RUSAGE_CHILDREN)."""
    parent = {}
    cpu = {}
    for name in os.listdir('/proc'):
        if not name.isdigit():
            continue
        try:
            with open('/proc/%s/stat' % name) as f:
                stat = f.read()
        except OSError:
            continue
        # The command may hold spaces and parentheses: fields start after the last ')'.
        fields = stat[stat.rindex(')') + 2:].split()
        pid = int(name)
        parent[pid] = int(fields[1])
        cpu[pid] = int(fields[11]) + int(fields[12])  # utime + stime
    me = os.getpid()
    total = 0
    for pid, ticks in cpu.items():
        p = parent.get(pid)
        while p and p != me:
            p = parent.get(p)
        if p == me:
            total += ticks
    return _ticks_ms(total)


def controller_cpu_ms():
    """This process's CPU, its children's that ended, and its live descendants' so far, in ms."""
    ms = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        ru = resource.getrusage(who)
        ms += (ru.ru_utime + ru.ru_stime) * 1e3
    return ms + _live_children_ms()


def sshd_cpu_ms(cfg):
    """usage_usec of the sshd's cgroup, in ms, or None."""
    if not cfg.sshd_stat:
        return None
    try:
        with open(cfg.sshd_stat) as f:
            for line in f:
                if line.startswith('usage_usec '):
                    return int(line.split()[1]) / 1e3
    except OSError:
        pass
    return None


class Meter(object):
    """Wall time, controller CPU and sshd CPU from its creation to each `lap`."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.t = now()
        self.cpu = controller_cpu_ms()
        self.sshd = sshd_cpu_ms(cfg)

    def lap(self):
        """(seconds, controller ms, sshd ms or None) since the last lap, and start a new one."""
        t, cpu, sshd = now(), controller_cpu_ms(), sshd_cpu_ms(self.cfg)
        out = (t - self.t, cpu - self.cpu,
               None if sshd is None or self.sshd is None else sshd - self.sshd)
        self.t, self.cpu, self.sshd = t, cpu, sshd
        return out


def median(values):
    values = sorted(values)
    if not values:
        return None
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def per_host(ms, n):
    return None if ms is None else round(ms / n, 3)


def emit(tool, cfg, cold, ok, failed, errors=(), warm_ms=None, warm_laps=None, **extra):
    """Print the one JSON object. `cold` and each of `warm_laps` are Meter.lap() results."""
    secs, ctl, sshd = cold
    row = {'tool': tool, 'n': cfg.n, 'fanout': cfg.fanout, 'cold_s': round(secs, 4),
           'ok': ok, 'failed': failed,
           'ctl_cpu_ms': round(ctl, 1), 'ctl_cpu_ms_per_host_cold': per_host(ctl, cfg.n),
           'sshd_cpu_ms': None if sshd is None else round(sshd, 1),
           'sshd_cpu_ms_per_host_cold': per_host(sshd, cfg.n)}
    if warm_ms is not None:
        row['warm_ms'] = [round(v, 3) for v in warm_ms]
        row['warm_median_ms'] = round(median(warm_ms), 3)
    if warm_laps:
        row['ctl_cpu_ms_per_host_warm_round'] = per_host(
            sum(lap[1] for lap in warm_laps) / len(warm_laps), cfg.n)
    row['errors'] = sorted({' '.join(str(e).split()) for e in errors})[:5]
    row.update(extra)
    print(json.dumps(row), flush=True)
