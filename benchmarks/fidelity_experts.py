"""Multi-fidelity schedules over the transfer portfolio, offline on LCBench: how much can cheap
probes buy at a budget in epochs?

Each held-out task (4-fold over all 34) is played by a fixed schedule of fidelity decisions over
the greedy portfolio of the training folds (a new configuration at 1/9, 1/3 or all 52 epochs, or
the best trial of a fidelity continued to the next, at the cost of the extra epochs, as the
budget-aware env does). Regret at B full-training equivalents is that of the best configuration
trained fully within B x 52 epochs (normalised by the task's 10,000-sample y_min / y_max). No RL,
no network: the ceiling of what a budget-aware warm start can imitate from these candidates.

Also printed: how well a probe's score after 6 epochs picks among the first k portfolio
configurations, against the oracle that knows their final scores.

    python benchmarks/fidelity_experts.py [--candidates 1000] [--data DIR]
"""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Callable, Iterator

import numpy as np

from hporl import SearchSpace
from hporl.backends.lcbench import LCBenchBackend
from hporl.observation import FIDELITIES, epochs_at
from hporl.pretrain import greedy_portfolio
from transfer_experts import four_folds  # beside this script

BUDGETS = (1, 2, 3, 5, 10, 30)
Decision = tuple[str, int]  # ("new", level) or ("continue", level)


def play(
    order: list[int], values: np.ndarray, plan: Iterator[Decision], epochs: list[int], budget: int
) -> list[float]:
    """Regret at each of :data:`BUDGETS` of ``plan`` on one task (``values[level, candidate]``,
    normalised). A decision that does not fit in the epochs left is replaced by the first that
    does (a continuation first, then a new configuration from the cheapest fidelity)."""
    top = len(epochs) - 1
    left = budget * epochs[-1]
    trials: list[list[int]] = []  # [candidate, level]
    found: list[tuple[int, float]] = []  # (epochs spent when trained fully, its value)
    queue = iter(order)

    def cost(d: Decision) -> int | None:
        kind, level = d
        if kind == "new":
            return epochs[level]
        if level >= top or not any(t[1] == level for t in trials):
            return None
        return epochs[level + 1] - epochs[level]

    fallbacks = [("continue", i) for i in range(top)] + [("new", i) for i in range(top + 1)]
    for d in plan:
        c = cost(d)
        if c is None or c > left:
            d = next((f for f in fallbacks if (cf := cost(f)) is not None and cf <= left), None)
            if d is None:
                break
            c = cost(d)
        left -= c
        kind, level = d
        if kind == "new":
            trial = [next(queue), level]
            trials.append(trial)
        else:
            trial = max((t for t in trials if t[1] == level), key=lambda t: values[t[1], t[0]])
            trial[1] = level + 1
        if trial[1] == top:
            found.append((budget * epochs[-1] - left, float(values[top, trial[0]])))
    return [
        1.0 - max((v for spent, v in found if spent <= b * epochs[-1]), default=0.0)
        for b in BUDGETS
    ]


def schedule(first_full: int, brackets: list[list[Decision]]) -> Callable[[], Iterator]:
    """``first_full`` full trainings, then the brackets in turn, the last repeated."""

    def plan() -> Iterator[Decision]:
        yield from [("new", 2)] * first_full
        for bracket in itertools.chain(brackets, itertools.repeat(brackets[-1])):
            yield from bracket

    return plan


def probe(k: int, to_third: int = 1) -> list[Decision]:
    """``k`` new configurations at 1/9, the best ``to_third`` continued to 1/3, the best of
    those to full."""
    return [("new", 0)] * k + [("continue", 0)] * to_third + [("continue", 1)]


SCHEDULES = {
    "portfolio (full trainings)": schedule(1, [[("new", 2)]]),
    "halving 9/3/1 (the halving expert)": schedule(1, [probe(9, 3)]),
    "probe 3 at 1/9, best to full": schedule(1, [probe(3)]),
    "probe 6 at 1/9, best 2 to 1/3, best to full": schedule(1, [probe(6, 2)]),
    "probe 9 at 1/9, best to full": schedule(1, [probe(9)]),
    "probe 3 at 1/3, best to full": schedule(1, [[("new", 1)] * 3 + [("continue", 1)]]),
    "2 full, then probe 6": schedule(2, [probe(6)]),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", type=int, default=1000)
    parser.add_argument("--data", default=None, help="the LCBench scenario folder")
    args = parser.parse_args()
    backend = LCBenchBackend(data_dir=args.data)
    tasks = backend.tasks()
    space = SearchSpace.builtin("lcbench")
    rng = np.random.default_rng(0)
    configs = [space.sample(rng) for _ in range(args.candidates)]
    epochs = [epochs_at(f, backend.max_epoch) for f in FIDELITIES]
    values = np.zeros((len(tasks), len(epochs), len(configs)))
    for t, task in enumerate(tasks):
        lo, hi = backend.normalisation(task, n=10_000, seed=0)
        for level, e in enumerate(epochs):
            ys = np.asarray(backend.final_scores(task, configs, epoch=e), float)
            values[t, level] = (np.nan_to_num(ys, nan=lo) - lo) / (hi - lo)
    n = len(tasks)
    folds = four_folds(n)
    orders = {k: greedy_portfolio(values[train, -1], 400) for k, (_, train) in enumerate(folds)}
    print(f"{args.candidates} candidates, epochs per fidelity {epochs}, 4-fold over {n} tasks")
    print("mean normalised regret ± s.e. at B = " + ", ".join(map(str, BUDGETS)))
    for name, plan in SCHEDULES.items():
        regret = np.array(
            [
                play(orders[k], values[i], plan(), epochs, max(BUDGETS))
                for k, (test, _) in enumerate(folds)
                for i in test
            ]
        )
        se = regret.std(0) / np.sqrt(len(regret))
        cells = "  ".join(f"{m:.4f}±{s:.4f}" for m, s in zip(regret.mean(0), se, strict=True))
        print(f"{name:46s} {cells}")
    print("\nchoosing among the first k portfolio configurations (mean regret of the choice):")
    for k in (3, 5, 10, 20, 40, 160):
        oracle, by_probe = [], []
        for f, (test, _) in enumerate(folds):
            first = orders[f][:k]
            for i in test:
                oracle.append(1 - values[i, -1, first].max())
                by_probe.append(1 - values[i, -1, max(first, key=lambda c: values[i, 0, c])])
        print(
            f"k = {k:3d}: the best by its final score {np.mean(oracle):.4f}, "
            f"the best by its score after {epochs[0]} epochs {np.mean(by_probe):.4f}"
        )
    corr = [
        np.corrcoef(np.argsort(np.argsort(v[0])), np.argsort(np.argsort(v[-1])))[0, 1]
        for v in values
    ]
    print(f"Spearman between scores after {epochs[0]} and {epochs[-1]} epochs, median over tasks:")
    print(f"  {np.median(corr):.3f}")


if __name__ == "__main__":
    main()
