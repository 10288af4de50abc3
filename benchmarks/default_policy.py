"""The packaged default policy on held-out data sets, against the default configuration, random
search and optuna TPE, all with the same checked final training
(``hporl.evaluation.Evaluator.best_then_final_fit``).

    .venv/bin/python benchmarks/default_policy.py [--out runs/bench-default-policy] [--seeds 3]
        [--epochs 10] [--methods default,policy,random,tpe]

Data sets: the ``heldout`` built-in suite (scikit-learn generators, spirals, a derived diabetes
task), none of which is among the policy's training tasks (asserted by name); ``--tasks
spirals_deep,hastie_short,checkerboard,glyph_k_t --epochs 0`` runs the ``heldout_hard`` suite
with each task's own (short) epoch budget, where the default configuration is far from the best. For each data set
and seed (the seed sets the split and training): the test accuracy of ``tune_model`` with the
default policy at 3 and 10 trials; the space's default configuration (one trial for its epoch
count, then the final training); random search and TPE at 3, 10 and 30 trials (the first k
trials of one 30-trial run; its prefixes are what a k-trial run would draw).

Every evaluation goes through the trial store in OUT/trials.db, and each finished cell is kept
in OUT/cells.json, so a rerun (or a run stopped and started again) trains nothing twice.
Writes OUT/results.json and OUT/report.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import optuna
import torch

from hporl import Evaluator, Policy, SearchSpace, TorchBackend, TrialStore, TuneOptions, tune_model
from hporl.space import config_key
from hporl.store import storage_url
from hporl.tasks import builtin, suites
from hporl.tune import random_search

BUDGETS = {
    "policy": (3, 10),
    "candidate": (5, 10),
    "random": (3, 10, 30),
    "tpe": (3, 10, 30),
    "default": (1,),
    "policy+tpe": (20,),
    "policy+gp": (20,),
}
"""Trials per method; ``policy+<sampler>`` (or ``candidate+<sampler>``) is ``tune_model``
with ``then=<sampler>``: the policy's trials (its meta-training budget), then that sampler's."""


def tpe_trials(backend: Evaluator, task: Any, space: SearchSpace, n: int, seed: int) -> list:
    sampler = optuna.samplers.TPESampler(seed=seed)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    trials: list[tuple[int, dict[str, Any], Any]] = []

    def objective(trial: optuna.Trial) -> float:
        config = space.suggest(trial)
        result = backend.evaluate(task, config, seed=seed)
        trials.append((trial.number, config, result))
        return float(result.best_metric) if result.ok and result.best_metric is not None else 0.0

    study.optimize(objective, n_trials=n)
    return trials


def run_cell(
    method: str,
    task: Any,
    seed: int,
    backend: Evaluator,
    out: Path,
    space: SearchSpace,
    policy: Policy | None = None,
) -> dict[int, dict[str, float]]:
    if method == "default":  # what tune_model's default_test_metric does
        config = space.default()
        probe = backend.evaluate(task, config, seed=seed)
        final = backend.final_fit(task, config, probe, seed=seed)
        return {1: {"test": final.result.test_metric, "seconds": probe.wall_time}}
    base, _, then = method.partition("+")
    if base in ("policy", "candidate"):
        policy = policy or Policy.default()
        cells = {}
        for k in BUDGETS.get(method, (20,)):
            r = tune_model(
                data=task,
                policy=policy,
                n_trials=k,
                seed=seed,
                storage=storage_url(None, out),
                options=TuneOptions(
                    study_name=f"{method}{k}/{task.name}-{seed}",
                    backend=backend.backend,
                    compare_default=False,
                    then=then or None,
                ),
            )
            first = [config_key(t["config"]) for t in r.trials[:5]]
            cells[k] = {"test": r.test_metric, "seconds": r.seconds, "first5": first}
        return cells
    if method == "random":
        return {
            k: {
                "test": (
                    r := random_search(task, space, k, seed=seed, evaluator=backend)
                ).test_metric
            }
            | {"seconds": r.seconds}
            for k in BUDGETS["random"]
        }
    trials = tpe_trials(backend, task, space, max(BUDGETS["tpe"]), seed)
    cells = {}
    for k in BUDGETS["tpe"]:
        final = backend.best_then_final_fit(task, trials[:k], seed=seed)
        cells[k] = {
            "test": final.result.test_metric,
            "seconds": sum(r.wall_time for *_, r in trials[:k]),
        }
    return cells


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bench-default-policy"))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument(
        "--epochs", type=int, default=10, help="epochs per trial; 0: each task's own budget"
    )
    parser.add_argument("--methods", default="default,policy,random,tpe")
    parser.add_argument("--tasks", default=",".join(suites()["heldout"]))
    parser.add_argument("--policy", help="a policy directory (default: the packaged policy)")
    parser.add_argument(
        "--candidate",
        help="a second policy directory, the method 'candidate' (e.g. a new default policy "
        "against the packaged one): paired differences against the others are reported",
    )
    parser.add_argument(
        "--budgets",
        default="",
        help="trials per method, e.g. 'policy=5,10 candidate=5,10 random=5,20 tpe=5,20'",
    )
    parser.add_argument("--space", default="optimizer", help="the policy's space")
    parser.add_argument("--model", help="mlp, linear or lcbench_mlp (default: each task's own)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    args.out.mkdir(parents=True, exist_ok=True)
    names = args.tasks.split(",")
    methods = args.methods.split(",")
    space = SearchSpace.builtin(args.space)
    policy = Policy.load(args.policy, space=space) if args.policy else Policy.default()
    candidate = Policy.load(args.candidate, space=space) if args.candidate else None
    for item in args.budgets.split():
        method, _, ks = item.partition("=")
        BUDGETS[method] = tuple(int(k) for k in ks.split(","))
    if candidate is not None and "candidate" not in methods:
        methods.append("candidate")
    model = None
    if args.model:
        from hporl.experiment import MODELS

        model = MODELS[args.model]
    for p in (policy, candidate) if "policy" in methods else (candidate,):
        trained_on = {t.split("+")[0] for t in p.training_tasks} if p is not None else set()
        leaked = trained_on & set(names)
        assert not leaked, f"held-out tasks among the policy's training tasks: {leaked}"
    store = TrialStore(storage_url(None, args.out))
    backend = Evaluator(TorchBackend(num_threads=1), store=store, run="bench", space=space)
    cells_path = args.out / "cells.json"
    cells = json.loads(cells_path.read_text()) if cells_path.exists() else {}
    start = time.perf_counter()
    for name in names:
        for seed in range(args.seeds):
            task = builtin(name, epochs=args.epochs or None, seed=seed, model=model)
            for method in methods:
                key = f"{name}/{seed}/{method}"
                if key in cells:
                    continue
                t0 = time.perf_counter()
                chosen = candidate if method.startswith("candidate") else policy
                cells[key] = run_cell(method, task, seed, backend, args.out, space, chosen)
                shown = {
                    k: {f: v for f, v in c.items() if f != "first5"} for k, c in cells[key].items()
                }
                print(f"{key}: {shown} ({time.perf_counter() - t0:.1f} s)", flush=True)
                cells_path.write_text(json.dumps(cells, indent=1))
    report(cells, names, args.seeds, args.out, time.perf_counter() - start, backend)


def report(
    cells: dict, names: list[str], seeds: int, out: Path, seconds: float, backend: Any
) -> None:
    run = {key.split("/")[2] for key in cells}
    order = ["default", "candidate", "policy", *sorted(m for m in run if "+" in m), "random", "tpe"]
    columns = [(m, k) for m in order if m in run for k in BUDGETS.get(m, (20,))]

    def value(name: str, seed: int, m: str, k: int) -> float | None:
        cell = cells.get(f"{name}/{seed}/{m}", {})
        got = cell.get(str(k), cell.get(k))
        return None if got is None else got["test"]

    def mean(name: str, m: str, k: int) -> float | None:
        vals = [value(name, s, m, k) for s in range(seeds)]
        vals = [v for v in vals if v is not None]
        return statistics.mean(vals) if vals else None

    head = "| data set | " + " | ".join(f"{m} K={k}" for m, k in columns) + " |"
    lines = [head, "|---" * (len(columns) + 1) + "|"]
    table: dict[str, dict[str, float | None]] = {}
    for name in names:
        row = {f"{m}@{k}": mean(name, m, k) for m, k in columns}
        table[name] = row
        lines.append(
            f"| {name} | "
            + " | ".join("" if v is None else f"{v:.4f}" for v in row.values())
            + " |"
        )
    avg = {
        c: statistics.mean(v for r in table.values() if (v := r[c]) is not None)
        for c in next(iter(table.values()))
        if any(r[c] is not None for r in table.values())
    }
    lines.append(
        "| **mean** | "
        + " | ".join(f"{avg.get(f'{m}@{k}', float('nan')):.4f}" for m, k in columns)
        + " |"
    )
    wins = {
        f"{m}@{k}": sum(
            1
            for r in table.values()
            if r[f"{m}@{k}"] is not None
            and r["default@1"] is not None
            and r[f"{m}@{k}"] > r["default@1"] + 1e-9
        )
        for m, k in columns
        if m != "default"
    }
    lines.append("")
    lines.append(
        "data sets where the mean test accuracy beats the default configuration's: "
        + ", ".join(f"{c} {w}/{len(names)}" for c, w in wins.items())
    )
    subjects = [m for m in order if m in run and (m == "candidate" or "+" in m)]
    if subjects:
        lines += ["", *_paired(cells, names, seeds, value, subjects, run)]
    text = "\n".join(lines)
    (out / "report.md").write_text(
        f"Held-out test accuracy, mean of {seeds} seeds ({seconds:.0f} s this run)\n\n{text}\n"
    )
    (out / "results.json").write_text(
        json.dumps({"per_dataset": table, "mean": avg, "wins_vs_default": wins}, indent=2)
    )
    print(text)
    print(
        f"{seconds:.0f} s; evaluations of default/random/TPE this run: trained "
        f"{backend.n_trained}, from the store {backend.n_store_hits} (tune_model keeps its own count)"
    )


def _paired(
    cells: dict, names: list[str], seeds: int, value: Any, subjects: list[str], run: set[str]
) -> list[str]:
    """Each subject (the candidate policy, a policy handing over) against the others, paired
    over (data set, seed): mean difference of test accuracy and its standard error; and how
    many distinct first-5 proposal lists the policies made."""
    lines = ["| comparison | mean difference | paired s.e. | n |", "|---|---|---|---|"]
    pairs = []
    for subject in subjects:
        ks = BUDGETS.get(subject, (20,))
        small, large = min(ks), max(ks)
        if small != large:
            pairs.append(((subject, large), (subject, small)))
        pairs += [
            ((subject, small), (m, k))
            for m in ("policy", "random", "tpe")
            if m in run
            for k in BUDGETS[m]
        ]
        if subject == "candidate":
            pairs += [((subject, large), ("policy", max(BUDGETS["policy"])))]
    for (m1, k1), (m2, k2) in pairs:
        diffs = [
            a - b
            for name in names
            for s in range(seeds)
            if (a := value(name, s, m1, k1)) is not None
            and (b := value(name, s, m2, k2)) is not None
        ]
        if len(diffs) < 2:
            continue
        se = statistics.stdev(diffs) / len(diffs) ** 0.5
        lines.append(
            f"| {m1}@{k1} - {m2}@{k2} | {statistics.mean(diffs):+.4f} | {se:.4f} | {len(diffs)} |"
        )
    for m in ("candidate", "policy"):
        lists = {
            tuple(cell["first5"])
            for name in names
            for s in range(seeds)
            if (row := cells.get(f"{name}/{s}/{m}", {}))
            and (cell := row.get(str(max(BUDGETS[m])), row.get(max(BUDGETS[m]))))
            and "first5" in cell
        }
        if lists:
            lines.append(
                f"\n{m}: {len(lists)} distinct first-5 proposal lists over {len(names)} data sets x {seeds} seeds"
            )
    return lines


if __name__ == "__main__":
    main()
