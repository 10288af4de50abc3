"""Trials per second of :func:`hporl.tune_model` as trials pile up, with an instant backend.

One tune run with the packaged default policy on ``iris`` and a SQLite trial store; the backend
answers at once (``store_overhead.InstantBackend``), so what is measured is hporl's own work per
trial: the policy sampler reading the history and proposing, the store, the bookkeeping. Prints
trials/s in a window of trials around each mark (default 10, 1,000 and 5,000) and each rate's
ratio to the first, all measured in this one run (target: within 20 % of each other).

    python benchmarks/trial_rate.py [--marks 10 1000 5000] [--window 50]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import optuna
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hporl import TuneOptions, tune_model
from hporl.tasks import builtin
from store_overhead import InstantBackend


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--marks", type=int, nargs="+", default=[10, 1000, 5000])
    parser.add_argument("--window", type=int, default=100, help="trials per measured window")
    args = parser.parse_args()
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    n = max(args.marks)
    stamps: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        task = builtin("iris", epochs=2)
        options = TuneOptions(backend=InstantBackend(), compare_default=False)
        tune_model(
            data=task,
            n_trials=n,
            out=Path(tmp) / "run",
            options=options,
            callback=lambda *_: stamps.append(time.perf_counter()),
        )
    print(f"tune_model, instant backend, default policy, SQLite store, {n} trials")
    print(f"{'around trial':>12} {'trials/s':>9} {'ratio to first':>15}")
    first = None
    for mark in args.marks:
        hi = min(max(mark, args.window), n) - 1
        lo = max(hi - args.window, 0)
        rate = (hi - lo) / (stamps[hi] - stamps[lo])
        first = first or rate
        print(f"{mark:>12} {rate:>9.1f} {rate / first:>15.2f}")


if __name__ == "__main__":
    main()
