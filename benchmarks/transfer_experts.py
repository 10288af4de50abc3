"""The warm start's experts offline on LCBench: the greedy portfolio against the adaptive rule
(:func:`hporl.pretrain.adaptive_orders`), 4-fold and leave-one-task-out over all 34 tasks.

Each held-out task's normalised regret (against its 10,000-sample y_min / y_max) after K trials
of each expert, choosing among one shared random sample of the space; no RL, no network: what
the policy's warm start imitates.

    python benchmarks/transfer_experts.py [--candidates 4000] [--data DIR]
"""

from __future__ import annotations

import argparse

import numpy as np

from hporl import SearchSpace
from hporl.backends.lcbench import LCBenchBackend
from hporl.pretrain import adaptive_orders, greedy_portfolio

KS = (1, 3, 5, 10, 30)


def lcbench_configs(candidates: int) -> list[dict]:
    """The shared random sample of LCBench's space (seed 0) that :func:`lcbench_sample` scores."""
    space, rng = SearchSpace.builtin("lcbench"), np.random.default_rng(0)
    return [space.sample(rng) for _ in range(candidates)]


def lcbench_sample(candidates: int, data: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One shared random sample of LCBench's space (seed 0) scored on every task: normalised
    values ``[task, candidate]`` (against the task's 10,000-sample y_min / y_max; a failure at
    y_min) and the tasks' features ``[task, feature]``."""
    backend = LCBenchBackend(data_dir=data)
    configs = lcbench_configs(candidates)
    values, features = [], []
    for task in backend.tasks():
        lo, hi = backend.normalisation(task, n=10_000, seed=0)
        ys = np.nan_to_num(np.asarray(backend.final_scores(task, configs), float), nan=lo)
        values.append((ys - lo) / (hi - lo))
        features.append(task.features())
    return np.array(values), np.array(features, dtype=float)


def four_folds(n: int) -> list[tuple[list[int], list[int]]]:
    """(test, train) task indices of the 4-fold split over ``n`` tasks: fold k tests every 4th
    task from k (the folds of the LCBench benches)."""
    return [(list(range(k, n, 4)), [j for j in range(n) if j % 4 != k]) for k in range(4)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", type=int, default=4000)
    parser.add_argument("--data", default=None, help="the LCBench scenario folder")
    args = parser.parse_args()
    v, f = lcbench_sample(args.candidates, args.data)
    n = len(v)
    splits = {
        "4-fold": four_folds(n),
        "leave-one-out": [([i], [j for j in range(n) if j != i]) for i in range(n)],
    }
    experts = {
        "portfolio": None,
        "adaptive (defaults)": {},
        "adaptive, features only": {"match": 0.0},
        "adaptive, scores only": {"bandwidth": 1e3},
    }
    print(f"{args.candidates} candidates; mean normalised regret at K = {', '.join(map(str, KS))}")
    for split, parts in splits.items():
        for name, kwargs in experts.items():
            regret = []
            for test, train in parts:
                for i in test:
                    if kwargs is None:
                        order = greedy_portfolio(v[train], max(KS))
                    else:
                        idx = [*train, i]
                        order = adaptive_orders(v[idx], f[idx], max(KS), **kwargs)[-1]
                    regret.append([1 - v[i, order[:k]].max() for k in KS])
            r = np.array(regret)
            se = r.std(0) / np.sqrt(len(r))
            cells = "  ".join(f"{m:.4f}±{s:.4f}" for m, s in zip(r.mean(0), se, strict=True))
            print(f"{split:14s} {name:26s} {cells}")


if __name__ == "__main__":
    main()
