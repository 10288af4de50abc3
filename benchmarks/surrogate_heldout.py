"""A fitted surrogate on tasks that no trial base holds: the ``heldout`` suite, real training.

Trains ``--configs`` random configurations of the surrogate's space on each task of the
``heldout`` suite (``--epochs`` each, one thread) into a store of its own (never the trial base:
a policy meta-trained through the surrogate must not see these tasks), then scores the
surrogate there as ``hporl surrogate fit`` scores held-out folds: per task, the Spearman
correlation between predicted and real scores and the real regret of its top-ranked
configuration. Run again, it trains only what the store lacks.

    python benchmarks/surrogate_heldout.py --surrogate runs/surrogate [--configs 24] [--epochs 10]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import optuna
import torch

from hporl._io import write_json
from hporl.backends import SurrogateBackend, TorchBackend
from hporl.backends._trial_table import read_trials
from hporl.backends.surrogate import quality
from hporl.evaluation import Evaluator
from hporl.store import TrialStore
from hporl.tasks import suite


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--surrogate", required=True, help="a `hporl surrogate fit` directory")
    parser.add_argument("--storage", default="runs/surrogate-heldout/trials.db")
    parser.add_argument("--configs", type=int, default=24)
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    backend = SurrogateBackend.load(args.surrogate)
    tasks = suite("heldout", epochs=args.epochs)
    evaluator = Evaluator(
        TorchBackend(num_threads=1),
        store=TrialStore(args.storage),
        run="surrogate-heldout",
        space=backend.space,
    )
    t0 = time.perf_counter()
    for task in tasks:
        for i in range(args.configs):
            evaluator.evaluate(task, backend.space.sample(i), seed=0)
    train_s = time.perf_counter() - t0
    table = read_trials([args.storage], backend.space, feature_names=backend.feature_names)
    report = quality(backend, table)
    report |= {"trained": evaluator.n_trained, "training_wall_seconds": round(train_s, 1)}
    write_json(Path(args.storage).parent / "surrogate_heldout.json", report)
    print("| task | trials | Spearman | regret of its top config | of a random pick |")
    print("|---|---|---|---|---|")
    for e in report["per_task"]:
        cells = [
            f"{e[k]:.3f}" if k in e else "-" for k in ("spearman", "regret_top", "regret_random")
        ]
        print(f"| {e['task']} | {e['trials']} | " + " | ".join(cells) + " |")
    print(
        f"Spearman median {report['spearman_median']:.3f}, mean {report['spearman_mean']:.3f}; "
        f"regret of the top-ranked configuration: mean {report['regret_top_mean']:.3f} (a random "
        f"pick: {report['regret_random_mean']:.3f}); {evaluator.n_trained} trainings in "
        f"{train_s:.0f} s"
    )


if __name__ == "__main__":
    main()
