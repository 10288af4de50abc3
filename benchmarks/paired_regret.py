"""Paired differences of normalised regret between two methods of a finished bench.

Every (task, seed) run of method A is paired with B's on the same task and seed, and the mean
difference A - B is printed with its standard error at each budget: trials, or full-training
equivalents of epochs with ``budget_unit: epochs`` (a run's regret at B is that of its trials
within B full trainings' epochs, as ``report.md`` reads it). Negative: A is lower.

    python benchmarks/paired_regret.py RUN_DIR A B
    python benchmarks/paired_regret.py RUN_DIR A B --budgets 3,5 --against 10

The second form compares A at each budget with B at one budget (``--against``): "does A reach
with half the epochs what B reaches at 10?". RUN_DIR holds ``results.json`` and ``summary.json``
(a bench's output, or ``benchmarks/merge_bench.py``'s).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from hporl.bench._report import regret_at_budgets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a bench's output folder")
    parser.add_argument("a")
    parser.add_argument("b")
    parser.add_argument("--budgets", help="comma-separated (default: the bench's)")
    parser.add_argument("--against", type=int, help="B at this one budget")
    args = parser.parse_args()
    records = json.loads((args.run / "results.json").read_text())
    summary = json.loads((args.run / "summary.json").read_text())
    found = {r["method"] for r in records}
    for name in (args.a, args.b):
        if name not in found:
            parser.error(f"no method {name!r} in {args.run}; methods: {', '.join(sorted(found))}")
    if args.budgets:
        budgets = [int(b) for b in args.budgets.split(",")]
    else:
        budgets = sorted({int(k) for m in summary["methods"].values() for k in m["regret"]})
    against = [] if args.against is None else [args.against]
    unit = summary.get("budget_unit", "trials")
    curves = regret_at_budgets(records, [*budgets, *against], unit=unit)
    a, b = curves[args.a], curves[args.b]
    pairs = sorted(set(a) & set(b))
    diff = np.array(
        [[a[key][i] - b[key][-1 if against else i] for i in range(len(budgets))] for key in pairs]
    )
    mean, se = diff.mean(0), diff.std(0, ddof=1) / np.sqrt(len(diff))
    letter = "B" if unit == "epochs" else "K"
    other = f" at {letter} = {args.against}" if against else ""
    print(f"{args.a} - {args.b}{other}, {len(pairs)} paired runs ({unit}):")
    for k, m, s in zip(budgets, mean, se, strict=True):
        print(f"  {letter} = {k}: {m:+.4f} ± {s:.4f}")


if __name__ == "__main__":
    main()
