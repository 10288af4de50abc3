"""Do transfer GP's refined first trials beat the best of its candidates on held-out tasks?

For each bench config given (a surrogate benchmark with ``train_tasks`` and ``test_tasks``),
:class:`hporl.bench.TransferGPSampler` proposes its first two trials (the portfolio stage: they
do not depend on the scores) with ``rounds=0`` (the best-average candidate of the bench's 10,000,
then its greedy complement) and with the default rounds of local search on the meta-train tasks
(:meth:`~hporl.bench.TransferGPSampler._refine`). Each is scored on every test task, as normalised
regret against the task's 10,000-sample y_min / y_max (the bench's normalisation before any
method raises y_max; below 0: better than every configuration of the sample). Prints mean regret
at K = 1 and 2, and the paired difference (refined - candidates) with its standard error over
the test tasks of all configs.

    python benchmarks/refined_first_trials.py CONFIG.yaml [CONFIG.yaml ...] [--seeds 3]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from hporl.bench import BenchConfig, TransferGPSampler
from hporl.bench._runner import _Bench


def first_two(sampler: TransferGPSampler) -> list[dict]:
    first = sampler.next_config([])
    return [first, sampler.next_config([(first, 0.0)])]  # the portfolio stage ignores scores


def regret(bench: _Bench, names: list[str], configs: list[dict]) -> np.ndarray:
    """Normalised regret of the best of ``configs[:K]`` on each task ``[task, K]``."""
    y = np.array([bench.scores(bench.task(n), configs) for n in names])
    y = np.nan_to_num(y, nan=-np.inf)
    lo, hi = np.array([bench.normalisation(n) for n in names]).T[:, :, None]
    return np.minimum.accumulate((hi - y) / (hi - lo), axis=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("configs", nargs="+", type=Path)
    parser.add_argument("--seeds", type=int, default=3, help="seeds of the local search")
    args = parser.parse_args()
    rows: dict[str, list[np.ndarray]] = {"candidates": [], "refined": []}
    with tempfile.TemporaryDirectory() as out:
        for path in args.configs:
            config = BenchConfig.load(path)
            bench = _Bench(config, Path(out))
            transfer = bench.transfer_candidates(list(config.train_tasks))
            names = list(config.test_tasks)
            plain = regret(
                bench, names, first_two(TransferGPSampler(bench.space, transfer, rounds=0))
            )
            refined = np.mean(
                [
                    regret(
                        bench, names, first_two(TransferGPSampler(bench.space, transfer, seed=s))
                    )
                    for s in range(args.seeds)
                ],
                axis=0,
            )
            rows["candidates"].append(plain)
            rows["refined"].append(refined)
            print(
                f"{path.name}: {len(names)} test tasks; K = 1, 2 mean regret: "
                f"candidates {plain.mean(0).round(4).tolist()}, "
                f"refined {refined.mean(0).round(4).tolist()}",
                flush=True,
            )
    plain, refined = (np.concatenate(rows[k]) for k in ("candidates", "refined"))
    diff = refined - plain
    se = diff.std(0, ddof=1) / np.sqrt(len(diff))
    print(f"all {len(diff)} test tasks, K = 1, 2:")
    print(f"  candidates (rounds=0): {plain.mean(0).round(4).tolist()}")
    print(f"  refined (default):     {refined.mean(0).round(4).tolist()}")
    print(
        f"  paired refined - candidates: {diff.mean(0).round(4).tolist()} ± {se.round(4).tolist()}"
    )


if __name__ == "__main__":
    main()
