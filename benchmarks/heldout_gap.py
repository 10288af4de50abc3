"""How far the default configuration is from the best known one on held-out tasks: the test
accuracy of the ``optimizer`` space's default against that of the best of N random
configurations (chosen by validation accuracy, as a tuner would), each trained once with
TorchBackend at the task's own epoch budget, seed 0. The ``heldout_hard`` suite was chosen so
that the gap is at least 5 points on every task: there tuning matters and methods can be told
apart.

    python benchmarks/heldout_gap.py [--suite heldout_hard] [--configs 30]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from hporl import SearchSpace, TorchBackend
from hporl.tasks import builtin, suites


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default="heldout_hard")
    parser.add_argument("--configs", type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(1)
    space = SearchSpace.builtin("optimizer")
    backend = TorchBackend(num_threads=1)
    print(
        f"{'task':<14} {'default':>8} {'best of ' + str(args.configs):>11} {'gap (pts)':>9} {'s':>5}"
    )
    for name in suites()[args.suite]:
        start = time.perf_counter()
        task = builtin(name)
        default = backend.evaluate(task, space.default(), seed=0)
        rng = np.random.default_rng(0)
        results = [backend.evaluate(task, space.sample(rng), seed=0) for _ in range(args.configs)]
        best = max((r for r in results if r.ok), key=lambda r: r.best_metric)
        gap = 100 * (best.test_metric - default.test_metric)
        took = time.perf_counter() - start
        print(
            f"{name:<14} {default.test_metric:>8.3f} {best.test_metric:>11.3f} {gap:>9.1f} {took:>5.0f}"
        )


if __name__ == "__main__":
    main()
