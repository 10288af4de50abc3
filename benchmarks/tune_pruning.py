"""What a pruner saves in ``tune_model``: real training, the packaged default policy.

For each pruner (none, median, asha, hyperband): one ``tune_model`` run of ``--trials`` trials
on a built-in task with ``--epochs`` epochs per trial, in this process; prints the trials
pruned, the epochs trained over all trials, the wall time of the trials, the best validation
metric of the fully trained trials and the final model's test metric.

    python benchmarks/tune_pruning.py [--task digits] [--trials 10] [--epochs 20]
"""

from __future__ import annotations

import argparse
import time

import torch

from hporl import Policy, TuneOptions, tune_model
from hporl.tasks import builtin


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="digits")
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(1)
    task = builtin(args.task, epochs=args.epochs)
    policy = Policy.default()
    print(
        f"{args.task}, {args.trials} trials of {args.epochs} epochs, the default policy\n"
        "| pruner | pruned | epochs trained | trials (s) | best val (full trials) | test |\n"
        "|---|---|---|---|---|---|"
    )
    for pruner in (None, "median", "asha", "hyperband"):
        t0 = time.perf_counter()
        result = tune_model(
            data=task,
            policy=policy,
            n_trials=args.trials,
            pruner=pruner,
            options=TuneOptions(compare_default=False),
        )
        seconds = time.perf_counter() - t0
        trials = result.trials
        pruned = sum(t["status"] == "pruned" for t in trials)
        epochs = sum(t["epochs"] for t in trials)
        trial_seconds = sum(t["seconds"] for t in trials)
        best = result.report()["best_val_metric"]
        print(
            f"| {pruner or 'none'} | {pruned} | {epochs} / {args.trials * args.epochs} | "
            f"{trial_seconds:.1f} (run {seconds:.1f}) | {best:.4f} | {result.test_metric:.4f} |"
        )


if __name__ == "__main__":
    main()
