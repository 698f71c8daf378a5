#!/usr/bin/env python3
"""Draws BENCHMARKS.md's chart from the JSON lines lockd-bench printed: lockd and
redis-server side by side for throughput, latency and memory.

    python3 bench/plot.py bench/results/results.jsonl bench/results/chart.png

Needs matplotlib (Debian: apt-get install python3-matplotlib; or pip install matplotlib).
bench/run --plot calls it.
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

SERVERS = [("lockd", "#2a7ab0"), ("redis", "#c8553d")]

# (panel title, y label, log scale, [(bar label, metric, case prefix)])
PANELS = [
    ("Throughput (higher is better)", "lock+unlock pairs/s", False, [
        ("distinct keys", "pairs_per_sec", "distinct"),
        ("one hot key", "pairs_per_sec", "one hot key"),
        ("distinct keys,\nlocks held", "pairs_per_sec_loaded", "distinct"),
    ]),
    ("Latency, median (lower is better)", "µs, log scale", True, [
        ("ping", "ping_p50", ""),
        ("handoff", "handoff_p50", ""),
        ("holder dies", "death_p50", ""),
        ("pair, hot key", "pair_latency_p50", "one hot key"),
    ]),
    ("Pair latency, distinct keys (lower is better)", "µs", False, [
        ("p50", "pair_latency_p50", "distinct keys"),
        ("p99", "pair_latency_p99", "distinct keys"),
        ("p99.9", "pair_latency_p99.9", "distinct keys"),
    ]),
    ("Memory per held lock (lower is better)", "bytes", False, [
        ("1M locks held", "bytes_per_lock", ""),
    ]),
    ("Memory per idle connection (lower is better)", "bytes", False, [
        ("idle connections", "bytes_per_connection", ""),
    ]),
]


def plain(number):
    """A bar label a reader need not decode: no scientific notation, thousands grouped."""
    return f"{number:,.0f}" if abs(number) >= 100 else f"{number:.3g}"


def value(records, server, metric, case_prefix):
    for r in records:
        if r["server"] == server and r["metric"] == metric and r["case"].startswith(case_prefix):
            return r["value"]
    return None


def main(results, out):
    with open(results) as f:
        records = [json.loads(line) for line in f if line.startswith("{")]
    fig, axes = plt.subplots(2, 3, figsize=(17, 8))
    fig.delaxes(axes.flat[-1])
    for ax, (title, ylabel, log, bars) in zip(axes.flat, PANELS):
        width = 0.38
        for i, (server, color) in enumerate(SERVERS):
            xs, ys = [], []
            for j, (_, metric, case) in enumerate(bars):
                v = value(records, server, metric, case)
                if v is not None:
                    xs.append(j + (i - 0.5) * width)
                    ys.append(v)
            drawn = ax.bar(xs, ys, width, label=server, color=color)
            ax.bar_label(drawn, labels=[plain(y) for y in ys], fontsize=8)
        ax.set_xticks(range(len(bars)), [b[0] for b in bars])
        ax.set_title(title)
        ax.set_ylabel(ylabel)
        if log:
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: plain(v)))
        ax.legend()
    fig.suptitle("pklock lockd vs redis-server (SET NX PX + compare-and-delete), same client, same machine")
    fig.tight_layout()
    fig.savefig(out, dpi=100)


if __name__ == "__main__":
    main(*sys.argv[1:3])
