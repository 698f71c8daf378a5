#!/usr/bin/env python3
"""Draws the PHP comparison's chart of BENCHMARKS.md from the JSON lines of bench/php/run:
pairs/s from 1 and 16 processes, handoff and holder-death latency, for every peer.

    python3 bench/php/plot.py bench/results/php.jsonl bench/results/php-chart.png

Needs matplotlib (Debian: apt-get install python3-matplotlib). bench/php/run --plot calls it.
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

PKLOCK = "#2a7ab0"
OTHER = "#c8553d"
FLOOR = "#999999"
# Colour says who (as in every panel and in bench/plot.py); hatching says how many processes.
CASE_HATCHES = ["", "//", "xx"]


def label(r):
    if r["metric"].startswith("ping"):
        return "pklock\nrpc('ping')"
    if r["peer"] == "teardown":
        return "PHP process\nteardown"
    return r["peer"].replace("-", "\n")


def color(r):
    if r["peer"] == "teardown" or r["metric"].startswith("ping"):
        return FLOOR
    return PKLOCK if r["peer"] == "pklock" else OTHER


def name_color(name):
    return FLOOR if name == "ping" else PKLOCK if name == "pklock" else OTHER


def plain(number):
    """A bar label a reader need not decode: no scientific notation, thousands grouped."""
    return f"{number:,.0f}" if abs(number) >= 100 else f"{number:.3g}"


def pairs(ax, records):
    """Pairs/s per peer, a bar per process count; flock (local only) is far off this scale."""
    cases = list(dict.fromkeys(r["case"] for r in records if r["part"] == "pairs"))
    names = list(dict.fromkeys(
        "ping" if r["metric"] == "pings_per_sec" else r["peer"]
        for r in records if r["part"] == "pairs" and r["peer"] != "flock"))
    width = 0.8 / len(cases)
    for i, case in enumerate(cases):
        values = {("ping" if r["metric"] == "pings_per_sec" else r["peer"]): r["value"]
                  for r in records if r["part"] == "pairs" and r["case"] == case}
        xs = [j + (i - (len(cases) - 1) / 2) * width for j in range(len(names))]
        ys = [values.get(n, 0) for n in names]
        drawn = ax.bar(xs, ys, width, label=case, color=[name_color(n) for n in names],
                       hatch=CASE_HATCHES[i % len(CASE_HATCHES)], edgecolor="white")
        ax.bar_label(drawn, labels=[plain(y) for y in ys], fontsize=7, rotation=90, padding=2)
    flock = [r for r in records if r["part"] == "pairs" and r["peer"] == "flock"]
    note = ", ".join(f"{r['value'] / 1e6:.2f} M/s ({r['case']})" for r in flock)
    ax.set_xticks(range(len(names)), ["pklock\nrpc('ping')" if n == "ping" else n for n in names], fontsize=8)
    ax.set_title("lock+unlock pairs/s, own key each (higher is better)" + (f"\nflock, local only: {note}" if note else ""), fontsize=10)
    ax.set_ylabel("per second, all processes")
    # The legend tells the hatching (process count); colours are the peers', as elsewhere.
    legend = ax.legend()
    for patch in legend.get_patches():
        patch.set_facecolor("#dddddd")


def latency(ax, records, part, title):
    rows = [r for r in records if r["part"] == part and r["metric"].endswith("_p50")]
    drawn = ax.bar(range(len(rows)), [r["value"] / 1000 for r in rows], color=[color(r) for r in rows])
    ax.bar_label(drawn, labels=[plain(r["value"] / 1000) for r in rows], fontsize=8)
    ax.set_xticks(range(len(rows)), [label(r) for r in rows], fontsize=8)
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: plain(v)))
    ax.set_title(f"{title}, median (lower is better)", fontsize=10)
    ax.set_ylabel("ms, log scale")


def main(results, out):
    with open(results) as f:
        records = [json.loads(line) for line in f if line.startswith("{")]
    fig, axes = plt.subplots(1, 3, figsize=(17, 5))
    pairs(axes[0], records)
    latency(axes[1], records, "handoff", "handoff: release → waiter granted")
    latency(axes[2], records, "death", "holder killed → waiter granted")
    fig.suptitle("pklock.so vs PHP lock recipes, same machine, one run")
    fig.tight_layout()
    fig.savefig(out, dpi=100)


if __name__ == "__main__":
    main(*sys.argv[1:3])
