#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""Print an avocado job of tests/avocado as tables (markdown):
the matrix (one row per variant, one column per test, the status in each
cell), the reasons of everything that did not pass, and the benchmark
figures (bench_nn.py writes data/figures.json).

Usage: report.py JOB_DIR   (e.g. $CACHE/avocado-results/latest)
"""

import glob
import json
import os
import re
import sys


def main():
    job = sys.argv[1]
    with open(os.path.join(job, "results.json")) as f:
        res = json.load(f)
    rows, cols, cells, reasons = [], [], {}, []
    for t in res.get("tests", []):
        tid = t.get("id") or t.get("name")
        m = re.match(r"(?:\d+-)?(?:.*/)?[^/:]+\.py:(\w+)\.(\w+)(?:;(.*))?$", tid)
        test = f"{m.group(1)}.{m.group(2)}" if m else tid
        variant = (m.group(3) if m and m.group(3) else "-")
        variant = re.sub(r"^run-", "", variant)
        variant = re.sub(r"-[0-9a-f]{4}$", "", variant)
        variant = variant.replace("cell-", "")
        # full matrix: "kernel-plain-kernel_path-auto-model-default-queues-q1-smp-smp1"
        variant = re.sub(r"(^|-)(kernel_path|kernel|model|queues|smp)-", r"\1", variant)
        if variant not in rows:
            rows.append(variant)
        if test not in cols:
            cols.append(test)
        st = t.get("status", "?")
        secs = t.get("time") or t.get("time_elapsed") or 0
        cells[(variant, test)] = f"{st} {float(secs):.0f}s"
        if st != "PASS":
            reasons.append(f"- {test} [{variant}]: {st}: {(t.get('fail_reason') or '')[:400]}")
    short = [c.split(".", 1)[1].replace("test_", "") for c in cols]
    print(f"## avocado job {os.path.basename(os.path.realpath(job))}\n")
    print("| variant | " + " | ".join(short) + " |")
    print("|---|" + "---|" * len(cols))
    for r in rows:
        print(f"| {r} | " + " | ".join(cells.get((r, c), "") for c in cols) + " |")
    counts = {k: res.get(k) for k in ("pass", "failures", "errors", "cancel", "skip", "interrupt")}
    print("\n" + ", ".join(f"{k}: {v}" for k, v in counts.items() if v is not None))
    if reasons:
        print("\nNot passed:")
        print("\n".join(reasons))
    figs = sorted(glob.glob(os.path.join(job, "test-results", "*", "data", "figures.json")))
    for path in figs:
        with open(path) as f:
            data = json.load(f)
        print(f"\n## end-to-end figures ({data.get('variant', '')})\n")
        print("| path | batch | predictions/s | p50 | p99 | note |")
        print("|---|---|---|---|---|---|")
        for r in data.get("rows", []):
            print(f"| {r['path']} | {r.get('batch', '')} | {r.get('rate', '')} | "
                  f"{r.get('p50', '')} | {r.get('p99', '')} | {r.get('note', '')} |")


if __name__ == "__main__":
    main()
