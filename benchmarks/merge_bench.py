"""Merge the runs of one benchmark's folds, run as separate processes, into one report.

Cross-validation folds are independent (each meta-trains on its own train tasks and is scored
on its own test tasks, which no other fold has), so they can run at once, one process per core:
write each fold as its own bench YAML (``train_tasks`` / ``test_tasks``), run them, then

    python benchmarks/merge_bench.py CONFIG.yaml RUN_DIR [RUN_DIR ...] --out OUT

writes ``OUT/results.json``, ``summary.json``, ``report.md`` and ``plots/`` over all of them,
as one ``hporl bench CONFIG.yaml`` would (each run's regrets are kept: its y_max was already
raised to the best any method found on its tasks).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from hporl._io import write_json
from hporl.bench import BenchConfig
from hporl.bench._report import summarise, write_report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", type=Path, help="the benchmark YAML the folds come from")
    parser.add_argument("runs", type=Path, nargs="+", help="output folders of the fold runs")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    config = BenchConfig.load(args.config)
    records, train, test, timings, folds = [], set(), [], {}, []
    for i, run in enumerate(args.runs):
        summary = json.loads((run / "summary.json").read_text())
        tasks = set(summary["test_tasks"])
        if tasks & set(test):
            raise SystemExit(f"{run}: its test tasks overlap another run's")
        records += json.loads((run / "results.json").read_text())
        train |= set(summary["train_tasks"])
        test += summary["test_tasks"]
        timings |= {f"{k}_run{i}": v for k, v in summary.get("timings_seconds", {}).items()}
        folds += summary.get("folds", [])
    args.out.mkdir(parents=True, exist_ok=True)
    merged = summarise(records, config, train_tasks=sorted(train), test_tasks=sorted(test))
    merged["timings_seconds"] = timings
    merged["folds"] = folds
    write_json(args.out / "results.json", records)
    write_json(args.out / "summary.json", merged)
    write_report(records, merged, config, args.out)
    print((args.out / "report.md").read_text())


if __name__ == "__main__":
    main()
