"""Merge the runs of one benchmark's folds, run as separate processes, into one report.

Cross-validation folds are independent (each meta-trains on its own train tasks and is scored
on its own test tasks, which no other fold has), so they can run at once, one process per core:
write each fold as its own bench YAML (``train_tasks`` / ``test_tasks``), run them, then

    python benchmarks/merge_bench.py CONFIG.yaml RUN_DIR [RUN_DIR ...] --out OUT

writes ``OUT/results.json``, ``summary.json``, ``report.md`` and ``plots/`` over all of them,
as one ``hporl bench CONFIG.yaml`` would (each run's regrets are kept: its y_max was already
raised to the best any method found on its tasks).

With ``--methods-apart``, runs hold other methods on the same tasks (more methods added to a
finished bench): their rows are merged and every regret is computed again against one y_max
per task, the highest of the runs' (each run raised its own to the best its methods found).
y_min and each run's y_max are read back from the rows (two rows of a task with different
scores fix both), so no backend is needed. The report lists the methods of all runs; a method
run on a task with the same seed in several runs is taken from the first (the others still
count for y_max). Runs may also hold more seeds of the same methods (``first_seed``).
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
    parser.add_argument(
        "--methods-apart",
        action="store_true",
        help="runs hold other methods on the same tasks: one normalisation over all of them",
    )
    args = parser.parse_args()
    config = BenchConfig.load(args.config)
    records, train, test, timings, folds = [], set(), [], {}, []
    runs: list[list[dict]] = []
    for i, run in enumerate(args.runs):
        summary = json.loads((run / "summary.json").read_text())
        tasks = set(summary["test_tasks"])
        if tasks & set(test) and not args.methods_apart:
            raise SystemExit(f"{run}: its test tasks overlap another run's (--methods-apart?)")
        runs.append(json.loads((run / "results.json").read_text()))
        taken = {_run_of(r) for r in records} if args.methods_apart else set()
        records += [r for r in runs[-1] if _run_of(r) not in taken]
        train |= set(summary["train_tasks"])
        test += [t for t in summary["test_tasks"] if t not in test]
        timings |= {f"{k}_run{i}": v for k, v in summary.get("timings_seconds", {}).items()}
        folds += summary.get("folds", [])
    if args.methods_apart:
        renormalise(runs)
        methods = list(dict.fromkeys(r["method"] for r in records))
        config = config.model_copy(update={"methods": methods})
    args.out.mkdir(parents=True, exist_ok=True)
    merged = summarise(records, config, train_tasks=sorted(train), test_tasks=sorted(test))
    merged["timings_seconds"] = timings
    merged["folds"] = folds
    write_json(args.out / "results.json", records)
    write_json(args.out / "summary.json", merged)
    write_report(records, merged, config, args.out)
    print((args.out / "report.md").read_text())


def _run_of(row: dict) -> tuple[str, str, int]:
    """The run a row belongs to: its method, task and seed."""
    return row["method"], row["task"], row["seed"]


def renormalise(runs: list[list[dict]]) -> None:
    """Every row's regret again, against one y_max per task over all ``runs``. A run's y_min
    and y_max on a task follow from two rows with different scores (regret = (y_max - best) /
    (y_max - y_min)); a run whose rows on a task all hold one score takes y_min from another."""
    lows: dict[str, float] = {}
    highs: dict[str, list[float]] = {}
    single: list[tuple[str, float, float]] = []
    for rows in runs:
        for task in {r["task"] for r in rows}:
            seen = sorted(
                {
                    (r["best_so_far"], r["regret"])
                    for r in rows
                    if r["task"] == task and r["best_so_far"] is not None
                }
            )
            if len({b for b, _ in seen}) < 2:
                single += [(task, *seen[0])] if seen else []
                continue
            (b1, r1), (b2, r2) = seen[0], seen[-1]
            span = (b2 - b1) / (r1 - r2)
            hi = b1 + r1 * span
            if task in lows and abs(lows[task] - (hi - span)) > 1e-6 * max(abs(span), 1e-12):
                raise SystemExit(f"task {task}: the runs' y_min differ")
            lows[task] = hi - span
            highs.setdefault(task, []).append(hi)
    for task, b, r in single:
        if task not in lows or r >= 1:
            raise SystemExit(f"task {task}: one score in every run, cannot read its normalisation")
        highs.setdefault(task, []).append((b - r * lows[task]) / (1 - r))
    for rows in runs:
        for r in rows:
            lo, hi = lows[r["task"]], max(highs[r["task"]])
            best = r["best_so_far"]
            r["regret"] = None if best is None else (hi - best) / max(hi - lo, 1e-12)


if __name__ == "__main__":
    main()
