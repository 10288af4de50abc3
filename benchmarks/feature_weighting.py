"""Do LCBench's task features tell which configurations to try first?

Leave-one-task-out over every task of a bench config (its train and test tasks together): the
other tasks' normalised regrets on the bench's 10,000 candidates (:class:`hporl.bench.
TransferCandidates`) are weighted by a Gaussian kernel of bandwidth ``h`` on the task features
(``features()``: LCBench's log sizes), and the greedy portfolio of the weighted mean (``h =
inf``: unweighted, the bench's ``portfolio``) is played on the left-out task. Prints the mean
regret at K = 1, 2, 3 and, for each ``h``, the paired difference to the unweighted portfolio
with its standard error over tasks. This is how issue 14's "K = 1: the task features must pay"
was checked (README, "Refined proposals").

    python benchmarks/feature_weighting.py [CONFIG.yaml]   (default: the 4-fold LCBench bench)
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from hporl.bench import BenchConfig
from hporl.bench._runner import _Bench

BANDWIDTHS = (0.03, 0.05, 0.1, 0.2, 0.4)
KS = (1, 2, 3)


def weighted_portfolio(regret: np.ndarray, weights: np.ndarray, k: int) -> list[int]:
    """Greedy: each next candidate minimises the weighted mean regret of the best so far."""
    best = np.full(len(regret), np.inf)
    picks: list[int] = []
    for _ in range(k):
        i = int(np.argmin(weights @ np.minimum(best[:, None], regret)))
        picks.append(i)
        best = np.minimum(best, regret[:, i])
    return picks


def leave_one_out(regret: np.ndarray, features: np.ndarray, h: float | None) -> np.ndarray:
    """Regret ``[task, K]`` of the (feature-weighted) portfolio of the other tasks."""
    out = np.empty((len(regret), max(KS)))
    for t in range(len(regret)):
        rest = np.delete(np.arange(len(regret)), t)
        if h is None:
            w = np.ones(len(rest))
        else:
            w = np.exp(-((features[rest] - features[t]) ** 2).sum(1) / (2 * h * h))
        picks = weighted_portfolio(regret[rest], w / w.sum(), max(KS))
        out[t] = np.minimum.accumulate(regret[t, picks])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = Path(__file__).resolve().parents[1] / "examples" / "bench_lcbench.yaml"
    parser.add_argument("config", nargs="?", type=Path, default=default)
    args = parser.parse_args()
    config = BenchConfig.load(args.config)
    with tempfile.TemporaryDirectory() as out:
        bench = _Bench(config, Path(out))
        names = list(dict.fromkeys([*config.train_tasks, *config.test_tasks]))
        if config.folds is not None and not config.test_tasks:
            names = list(dict.fromkeys([*bench.all_tasks, *names]))
        transfer = bench.transfer_candidates(names)
        features = np.array([bench.task(n).features() for n in names], dtype=np.float64)
    if features.shape[1] == 0:
        raise SystemExit(f"{config.benchmark}'s tasks have no features to weigh by")
    base = leave_one_out(transfer.regret, features, None)
    print(f"{len(names)} tasks, {features.shape[1]} features; mean regret at K = {KS}")
    print(f"  unweighted portfolio: {base.mean(0).round(4).tolist()}")
    for h in BANDWIDTHS:
        r = leave_one_out(transfer.regret, features, h)
        d = r - base
        se = d.std(0, ddof=1) / np.sqrt(len(d))
        print(
            f"  h = {h}: {r.mean(0).round(4).tolist()}; paired - unweighted "
            + ", ".join(f"{m:+.4f} ± {s:.4f}" for m, s in zip(d.mean(0), se, strict=True))
        )


if __name__ == "__main__":
    main()
