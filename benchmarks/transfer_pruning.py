"""Does stopping transfer GP's unpromising trials early buy regret with budgets in epochs, and
how should a stopped trial be read?

Offline, on a bench config with ``folds`` or ``train_tasks`` / ``test_tasks`` on a surrogate
that predicts every epoch (LCBench): :class:`hporl.bench.TransferGPSampler` proposes on each test
task until ``--budget`` full trainings' epochs are spent, one run per seed, each trial's curve
taken whole from the surrogate. Rules:

- ``full``: every trial trains all epochs (the bench's default);
- ``stop:E:read``: a trial whose value at epoch E lies below the best complete trial's value
  there stops at E; ``read`` says what transfer GP is told of it: ``estimate`` (its value at E
  plus what the best complete trial gained from E to its end, as the sampler reads an optuna
  trial its pruner stopped) or ``nothing`` (a trial under way);
- ``rungs:F/F...:P:N``: budget-aware transfer GP (:class:`hporl.bench.Rungs`, the bench's
  default): after N complete trials, a trial stops at the first rung (fraction F of the epochs)
  where its chance to beat the best complete trial is below P (``P/P...``: per trial, the
  last for every later one), and transfer GP reads its score
  there for what it is; ``rungs`` alone: the default rungs; ``rungs:F/F...:P:N:resume``: the
  same with freeze-thaw (:meth:`hporl.bench.Rungs.resumed`: a stopped trial is trained on to
  the end when that is the better use of the next epochs); ``...:cost`` (with or after
  ``resume``): the proposals' expected improvement per expected epochs
  (:meth:`hporl.bench.Rungs.expected_cost`); ``...:anyway``: a trial may stop even when the
  epochs it saves fit no other complete trial in ``--budget`` (``Rungs(fits=False)``);
- ``oracle:F:N``: what a perfect stopping decision could buy: after N complete trials, a trial
  stops at fraction F of the epochs exactly when its final score would not beat the best
  complete trial's (read there as ``rungs`` reads it). No tuner knows this; it shows what a
  better ``chance`` could gain from a rung at F (not a strict bound: a trial stopped tells
  transfer GP less than one trained to the end, and that changes what it proposes next).

``--inner`` chooses a rule without the held-out tasks: within each fold, the meta-train tasks
are split in two halves (alternate tasks), and each half is the held-out set of a run whose
candidates come from the other. ``--inner loo`` holds out each meta-train task in turn, with
candidates from all the others: as many runs, each with a prior from nearly as many tasks as
the held-out runs have (the halves' candidates come from half of them).

``--calibration`` prints, for each ``rungs`` rule, how often the trials its rungs asked about
would have beaten the best complete trial, by trial and by the chance they were given
(:func:`calibration`): where the share is below the chance, the chance overstates it.

A run's regret at B is that of the best complete trial within B full trainings' epochs,
normalised by the task's 10,000-sample y_min / y_max (below 0: better than every configuration
of the sample). Prints mean regret at each B and paired differences against the first rule.

    python benchmarks/transfer_pruning.py CONFIG.yaml [--rules full,stop:13:estimate,...]
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from hporl.bench import RUNGS, BenchConfig, Rungs, TransferCandidates, TransferGPSampler
from hporl.bench._runner import _Bench, _folds

BUDGETS = (1, 2, 3, 4, 5, 6, 8, 10)


def run(
    bench: _Bench,
    name: str,
    transfer: TransferCandidates,
    seed: int,
    rule: str,
    budget: int,
    first: dict[str, Any],
    decisions: list[tuple[int, float, bool]] | None = None,
    settings: dict[str, Any] | None = None,
) -> list[float]:
    """Normalised regret at each of :data:`BUDGETS` (up to ``budget``) of one run; each rung's
    decision appended to ``decisions`` as (trials before it, its chance to beat the best
    complete trial, whether it would have)."""
    task = bench.task(name)
    full = int(task.epochs)
    lo, hi = bench.normalisation(name)
    sampler = TransferGPSampler(bench.space, transfer, seed=seed, **(settings or {}))
    asked: list[tuple[int, float]] = []
    if decisions is not None:
        sampler.improvement_chance = _recording(sampler.improvement_chance, asked)
    rungs = _rungs(rule)
    stop, read = (int(rule.split(":")[1]), rule.split(":")[2]) if rule[:5] == "stop:" else (0, "")
    oracle = rule.split(":") if rule.startswith("oracle:") else None
    trials: list[tuple[Any, ...]] = []
    best: np.ndarray | None = None  # the best complete trial's curve
    spent, found = 0, []  # (epochs spent, best complete value) after each complete trial
    while spent < budget * full:
        cost = rungs.cost(trials) if rungs is not None else None
        config = sampler.next_config(trials, cost) if trials else first
        thaw = rungs.resumed(sampler, trials, config, full) if rungs is not None else None
        if thaw is not None:  # freeze-thaw: train a stopped trial on to the end
            config, at = trials[thaw][0], trials[thaw][2]
            curve = np.asarray(bench.evaluate(task, config, 0).curve, dtype=float)
            spent += full - at
            trials[thaw] = (config, float(curve[-1]))
            if best is None or curve[-1] > best[-1]:
                best = curve
            found.append((spent, float(best[-1])))
            continue
        curve = np.asarray(bench.evaluate(task, config, 0).curve, dtype=float)
        at = None
        if rungs is not None and len(curve) == full:
            at = rungs.stop_at(
                sampler,
                trials,
                config,
                lambda e, c=curve: float(c[e - 1]),
                full,
                budget * full - spent,
            )
            if decisions is not None and best is not None:
                decisions += [(n, chance, bool(curve[-1] > best[-1])) for n, chance in asked]
            asked.clear()
        if (
            oracle is not None
            and len(curve) == full
            and len(found) >= int(oracle[2])
            and best is not None
            and curve[-1] <= best[-1]
        ):
            at = max(1, round(float(oracle[1]) * full))
        if len(curve) < full:  # failed or diverged
            trials.append((config, float("nan")))
            spent += max(len(curve), 1)
        elif at is not None:
            spent += at
            trials.append((config, float(curve[at - 1]), at))
        elif stop and best is not None and curve[stop - 1] < best[stop - 1]:
            spent += stop
            estimate = curve[stop - 1] + best[-1] - best[stop - 1]
            trials.append((config, float(estimate) if read == "estimate" else None))
        else:
            spent += full
            trials.append((config, float(curve[-1])))
            if best is None or curve[-1] > best[-1]:
                best = curve
            found.append((spent, float(best[-1])))
    out = []
    for b in BUDGETS:
        within = [v for s, v in found if s <= b * full]
        out.append((hi - (within[-1] if within else lo)) / (hi - lo) if b <= budget else np.nan)
    return out


def _recording(ask: Any, asked: list[tuple[int, float]]) -> Any:
    """``improvement_chance`` that also notes each answer, with the trials before the one asked
    about (the last of ``trials``)."""

    def improvement_chance(trials: list[tuple[Any, ...]], config: dict[str, Any]) -> float:
        chance = ask(trials, config)
        asked.append((len(trials) - 1, chance))
        return chance

    return improvement_chance


def calibration(decisions: list[tuple[int, float, bool]]) -> str:
    """How often the trials the rungs asked about would have beaten the best complete trial,
    by trial and by the chance they were given (a calibrated chance: the share equals it)."""
    if not decisions:
        return "no rung decisions"
    n, chance, won = (np.array(v) for v in zip(*decisions, strict=True))
    bins = (0.0, 0.1, 0.3, 0.5, 0.7, 1.01)
    lines = [
        "trial | decisions | mean chance | share won | "
        + " | ".join(f"won, chance {a:.1f}-{min(b, 1):.1f}" for a, b in itertools.pairwise(bins))
    ]
    groups = (("1-3", 1, 3), ("4-6", 4, 6), ("7-9", 7, 9), ("10+", 10, math.inf))
    for label, first, last in groups:  # the trial asked about: trials before it + 1
        rows = (n + 1 >= first) & (n + 1 <= last)
        if not rows.any():
            continue
        cells = []
        for a, b in itertools.pairwise(bins):
            cell = rows & (chance >= a) & (chance < b)
            cells.append(f"{won[cell].mean():.2f} ({cell.sum()})" if cell.any() else "-")
        lines.append(
            f"{label} | {rows.sum()} | {chance[rows].mean():.3f} | {won[rows].mean():.3f} | "
            + " | ".join(cells)
        )
    return "\n".join(lines)


def _rungs(rule: str) -> Rungs | None:
    if rule == "rungs":
        return RUNGS
    if not rule.startswith("rungs:"):
        return None
    _, at, chance, after, *flags = rule.split(":")
    fractions = tuple(float(f) for f in at.split("/"))
    chances = tuple(float(p) for p in chance.split("/"))
    return Rungs(
        fractions,
        chances[0] if len(chances) == 1 else chances,
        int(after),
        "resume" in flags,
        "cost" in flags,
        "anyway" not in flags,
    )


def _settings(text: str | None) -> dict[str, Any]:
    """``--sampler``'s ``KEY=VALUE,...`` as keyword arguments of :class:`TransferGPSampler`:
    a number, or ``V/V/...`` a list of numbers."""
    settings: dict[str, Any] = {}
    for item in (text or "").split(","):
        if not item:
            continue
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--sampler takes KEY=VALUE,..., got {item!r}")
        numbers = [float(v) if "." in v or "e" in v else int(v) for v in value.split("/")]
        settings[key] = numbers if "/" in value else numbers[0]
    return settings


def _splits(
    config: BenchConfig, tasks: list[str], inner: str | None
) -> list[tuple[int, list[str], list[str]]]:
    """The folds' (fold, candidates' tasks, held-out tasks); with ``inner="halves"``, each
    fold's meta-train tasks split in two halves, each held out once; with ``"loo"``, each of
    them held out once, the candidates from the others."""
    folds = _folds(config, tasks)
    if inner is None:
        return [(i, train, test) for i, (train, test) in enumerate(folds)]
    if inner == "halves":
        return [
            (i, train[1 - h :: 2], train[h::2])
            for i, (train, _) in enumerate(folds)
            for h in (0, 1)
        ]
    return [
        (i, [t for t in train if t != name], [name])
        for i, (train, _) in enumerate(folds)
        for name in train
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", type=Path)
    parser.add_argument("--rules", default="full,stop:13:estimate,stop:13:nothing")
    parser.add_argument("--budget", type=int, default=10, help="full trainings' epochs")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument(
        "--inner",
        nargs="?",
        const="halves",
        choices=("halves", "loo"),
        help="held out: halves of the meta-train tasks (default), or each one (loo)",
    )
    parser.add_argument("--folds", help="only these folds (comma-separated, from 0)")
    parser.add_argument("--out", type=Path, help="write each rule's regrets per run (JSON)")
    parser.add_argument(
        "--calibration",
        action="store_true",
        help="print how often the trials a rule's rungs asked about would have won, by chance",
    )
    parser.add_argument(
        "--sampler",
        help="TransferGPSampler's keyword arguments for every rule: KEY=VALUE,... (V/V/...: a list)",
    )
    args = parser.parse_args()
    settings = _settings(args.sampler)
    config = BenchConfig.load(args.config)
    rules = args.rules.split(",")
    rows: dict[str, list[list[float]]] = {r: [] for r in rules}
    decisions: dict[str, list[tuple[int, float, bool]]] = {r: [] for r in rules}
    with tempfile.TemporaryDirectory() as out:
        bench = _Bench(config, Path(out))
        splits = _splits(config, bench.all_tasks, args.inner)
        keep = None if args.folds is None else {int(f) for f in args.folds.split(",")}
        for fold, train, test in splits:
            if keep is not None and fold not in keep:
                continue
            transfer = bench.transfer_candidates(train)
            for seed in range(args.seeds):
                first = TransferGPSampler(bench.space, transfer, seed=seed, **settings)
                first = first.next_config([])
                for name in test:
                    for rule in rules:
                        record = decisions[rule] if args.calibration else None
                        rows[rule].append(
                            run(
                                bench,
                                name,
                                transfer,
                                seed,
                                rule,
                                args.budget,
                                first,
                                record,
                                settings,
                            )
                        )
                    print(f"task {name} seed {seed} done", flush=True)
    if args.out is not None:
        args.out.write_text(json.dumps({"budgets": BUDGETS, "rows": rows}))
    base = np.array(rows[rules[0]])
    print(f"{len(base)} runs; mean normalised regret at B = {', '.join(map(str, BUDGETS))}")
    for rule in rules:
        r = np.array(rows[rule])
        line = f"{rule:22s}" + " ".join(f"{m:8.4f}" for m in r.mean(0))
        if rule != rules[0]:
            d = r - base
            se = d.std(0, ddof=1) / np.sqrt(len(d))
            line += "  paired: " + " ".join(
                f"{m:+.4f}±{s:.4f}" for m, s in zip(d.mean(0), se, strict=True)
            )
        print(line)
        if args.calibration and _rungs(rule) is not None:
            print(calibration(decisions[rule]))


if __name__ == "__main__":
    main()
