#!/usr/bin/env python3
"""Charts of a benches/compare/run.sh run, as SVG, with the standard library only: the median
against N on log-log axes, one line a tool.

    chart.py [--prefix PATH-] RESULTS.jsonl

writes PREFIXcold.svg (cold start and `hostname`, seconds), PREFIXwarm.svg (a warm round, ms)
and PREFIXcpu.svg (controller CPU per host, cold, ms).
"""
import argparse
import math
import re
import statistics
import sys
from xml.sax.saxutils import escape

sys.dont_write_bytecode = True  # no __pycache__ beside the scripts
from table import COLD, WARM, load  # noqa: E402 (the labels of the tables)

COLORS = ['#1b9e77', '#d95f02', '#7570b3', '#e7298a', '#66a61e', '#e6ab02', '#a6761d',
          '#666666', '#1f78b4', '#b2182b']


def plain(label):
    """A table's label as chart text: no markdown, no closing remark in brackets."""
    return re.sub(r' \([^)]*\)$', '', label.replace('`', ''))


def nice_ticks(lo, hi):
    """Powers of ten, with 2 and 5 between them when the range is short."""
    ticks = []
    e = math.floor(math.log10(lo))
    while 10 ** e <= hi * 1.0001:
        for m in (1, 2, 5):
            v = m * 10 ** e
            if lo / 1.0001 <= v <= hi * 1.0001:
                ticks.append(v)
        e += 1
    if len(ticks) > 12:
        ticks = [t for t in ticks if math.log10(t).is_integer()]
    return ticks


def label(v):
    if v >= 1:
        return '%g' % v
    return ('%.3f' % v).rstrip('0').rstrip('.')


def svg_chart(title, ylabel, series, path):
    """series: [(name, {n: value})]. Writes an SVG line chart, log-log."""
    series = [(name, pts) for name, pts in series if any(v and v > 0 for v in pts.values())]
    if not series:
        return False
    w, h, left, right, top, bottom = 760, 440, 70, 220, 40, 50
    xs = sorted({n for _, pts in series for n in pts})
    ys = [v for _, pts in series for v in pts.values() if v and v > 0]
    xlo, xhi = min(xs), max(xs)
    if xlo == xhi:
        xlo, xhi = xlo / 2, xhi * 2
    ylo, yhi = min(ys) / 1.3, max(ys) * 1.3
    lx = lambda v: left + (math.log10(v) - math.log10(xlo)) / (math.log10(xhi) - math.log10(xlo)) * (w - left - right)
    ly = lambda v: h - bottom - (math.log10(v) - math.log10(ylo)) / (math.log10(yhi) - math.log10(ylo)) * (h - top - bottom)
    out = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" '
           'font-family="sans-serif" font-size="12">' % (w, h, w, h),
           '<rect width="100%" height="100%" fill="white"/>',
           '<text x="%d" y="22" font-size="15" font-weight="bold">%s</text>' % (left, escape(title))]
    for v in nice_ticks(ylo, yhi):
        y = ly(v)
        out.append('<line x1="%d" x2="%d" y1="%.1f" y2="%.1f" stroke="#ddd"/>' % (left, w - right, y, y))
        out.append('<text x="%d" y="%.1f" text-anchor="end">%s</text>' % (left - 6, y + 4, label(v)))
    for n in xs:
        x = lx(n)
        out.append('<line x1="%.1f" x2="%.1f" y1="%d" y2="%d" stroke="#ddd"/>' % (x, x, top, h - bottom))
        out.append('<text x="%.1f" y="%d" text-anchor="middle">%d</text>' % (x, h - bottom + 18, n))
    out.append('<rect x="%d" y="%d" width="%d" height="%d" fill="none" stroke="#444"/>' % (
        left, top, w - left - right, h - top - bottom))
    out.append('<text x="%d" y="%d" text-anchor="middle">N hosts (log scale)</text>' % (
        (left + w - right) // 2, h - 10))
    out.append('<text transform="translate(16,%d) rotate(-90)" text-anchor="middle">%s</text>' % (
        (top + h - bottom) // 2, escape(ylabel + ' (log scale)')))
    for i, (name, pts) in enumerate(series):
        color = COLORS[i % len(COLORS)]
        dash = ' stroke-dasharray="5,3"' if i >= len(COLORS) // 2 and 'hypha' not in name else ''
        width = 3 if 'hypha' in name else 1.6
        p = [(lx(n), ly(v)) for n, v in sorted(pts.items()) if v and v > 0]
        if len(p) > 1:
            out.append('<polyline fill="none" stroke="%s" stroke-width="%s"%s points="%s"/>' % (
                color, width, dash, ' '.join('%.1f,%.1f' % xy for xy in p)))
        for x, y in p:
            out.append('<circle cx="%.1f" cy="%.1f" r="3" fill="%s"/>' % (x, y, color))
        ly_ = top + 14 + i * 18
        out.append('<line x1="%d" x2="%d" y1="%d" y2="%d" stroke="%s" stroke-width="%s"%s/>' % (
            w - right + 12, w - right + 36, ly_ - 4, ly_ - 4, color, width, dash))
        out.append('<text x="%d" y="%d">%s</text>' % (w - right + 42, ly_, escape(name)))
    out.append('</svg>')
    with open(path, 'w') as f:
        f.write('\n'.join(out) + '\n')
    return True


def medians(rows, tool, key):
    by_n = {}
    for r in rows:
        if r.get('tool') == tool and r.get('round', 1) >= 1 and r.get(key) is not None:
            by_n.setdefault(r['n'], []).append(r[key])
    return {n: statistics.median(v) for n, v in by_n.items()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--prefix', default='')
    ap.add_argument('results')
    args = ap.parse_args()
    rows = [r for r in load(args.results) if 'n' in r and 'cold_s' in r]
    svg_chart('Cold: start, then hostname, on N hosts', 'seconds',
              [(plain(name), medians(rows, t, 'cold_s')) for t, name in COLD], args.prefix + 'cold.svg')
    svg_chart('Warm: a round on N hosts already up', 'milliseconds',
              [(name, medians(rows, t, field)) for t, _, field, _, name in WARM], args.prefix + 'warm.svg')
    svg_chart('Controller CPU per host, cold', 'ms per host',
              [(plain(name), medians(rows, t, 'ctl_cpu_ms_per_host_cold')) for t, name in COLD
               if t != 'ssh-true'], args.prefix + 'cpu.svg')


if __name__ == '__main__':
    main()
