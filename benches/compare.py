#!/usr/bin/env python3
"""Print hypha's criterion medians next to Mitogen's figures from the same run.

Usage: compare.py CRITERION_DIR MITOGEN_JSONL
"""
import json
import pathlib
import sys


def median_ns(criterion: pathlib.Path, bench: str) -> float | None:
    est = criterion / bench / "new" / "estimates.json"
    if not est.exists():
        return None
    return json.loads(est.read_text())["median"]["point_estimate"]


def main() -> None:
    criterion, mitogen_file = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
    mitogen = {}
    for line in mitogen_file.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            mitogen[row["figure"]] = row["median"]
    ns = {b: median_ns(criterion, b) for b in [
        "pipe_pingpong_64b", "call_rtt", "calls_in_flight/1000_pings",
        "local_start/spawn_to_first_call", "hundred_contexts/start_and_call_each_once", "bulk/upload_1gib"]}

    def fmt(v, unit):
        return "-" if v is None else f"{v:,.1f} {unit}"

    floor = ns["pipe_pingpong_64b"]
    rtt = ns["call_rtt"]
    rows = [
        ("local start, spawn to first call", "<= 10 ms",
         ns["local_start/spawn_to_first_call"] and ns["local_start/spawn_to_first_call"] / 1e6, mitogen.get("local_start_ms"), "ms"),
        ("call round trip", "<= 2x floor",
         rtt and rtt / 1e3, mitogen.get("call_rtt_us"), "us"),
        ("  pipe ping-pong floor (64 B)", "",
         floor and floor / 1e3, None, "us"),
        ("100 contexts started + called once", "<= 1 s",
         ns["hundred_contexts/start_and_call_each_once"] and ns["hundred_contexts/start_and_call_each_once"] / 1e9,
         mitogen.get("hundred_contexts_s"), "s"),
        ("bytes through one context", ">= 1024 MiB/s",
         ns["bulk/upload_1gib"] and (1024 / (ns["bulk/upload_1gib"] / 1e9)), mitogen.get("bytes_mib_s"), "MiB/s"),
        ("calls/s, 1000 in flight", "",
         ns["calls_in_flight/1000_pings"] and 1000 / (ns["calls_in_flight/1000_pings"] / 1e9), None, "calls/s"),
    ]
    print(f"{'figure':38} {'target':14} {'hypha':>18} {'mitogen':>18} {'hypha better by':>16}")
    for name, target, ours, theirs, unit in rows:
        ratio = "-"
        if ours and theirs:
            ratio = f"{(ours / theirs if unit == 'MiB/s' else theirs / ours):.1f}x"
        print(f"{name:38} {target:14} {fmt(ours, unit):>18} {fmt(theirs, unit):>18} {ratio:>16}")
    if rtt and floor:
        print(f"\ncall round trip / pipe floor: {rtt / floor:.2f}x")


if __name__ == "__main__":
    main()
