"""What resuming saves on real training: a probe of 1/3 of the epochs, then the same
configuration to all the epochs, with ``TorchBackend(resume=True)`` (the continuation trains the
extra epochs) against without it (the full training starts again). Also checks that the resumed
curve is the uninterrupted one.

Configurations are sampled from the optimizer space (seeded); runs are interleaved in one
process, in alternating order, after an untimed warm-up. Prints the wall time of probe + continuation for both, their ratio (target: about
1 - probe / full, i.e. 0.67 with a third), and the epochs trained.

    python benchmarks/resume_cost.py [--task digits] [--epochs 30] [--configs 6]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from hporl import SearchSpace, TorchBackend
from hporl.tasks import builtin


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="digits")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--configs", type=int, default=6)
    args = parser.parse_args()
    torch.set_num_threads(1)
    task = builtin(args.task, epochs=args.epochs)
    space = SearchSpace.builtin("optimizer")
    rng = np.random.default_rng(0)
    probe = max(1, args.epochs // 3)
    TorchBackend(num_threads=1).evaluate(task, space.default(), epochs=1)  # warm-up, untimed
    times = {"resume": 0.0, "again": 0.0}
    exact = 0
    for i in range(args.configs):
        config = space.sample(rng)
        trained = {"resume": 0, "again": 0}
        curves = {}
        for how in ("resume", "again") if i % 2 == 0 else ("again", "resume"):
            backend = TorchBackend(num_threads=1, resume=how == "resume")
            epochs: list[int] = []  # the epochs trained after the probe
            t0 = time.perf_counter()
            backend.evaluate(task, config, seed=i, epochs=probe)
            full = backend.evaluate(
                task, config, seed=i, on_epoch=lambda e, v, epochs=epochs: epochs.append(e)
            )
            times[how] += time.perf_counter() - t0
            curves[how], trained[how] = full.curve, len(epochs)
        exact += curves["resume"] == curves["again"]
        print(
            f"config {i}: {config['optimizer']}, {config['lr_schedule']}, batch "
            f"{config['batch_size']}: epochs trained after the probe {trained['resume']} "
            f"(resumed) / {trained['again']} (again)"
        )
    print(
        f"{args.task}, {args.epochs} epochs, probe {probe}, {args.configs} configurations: "
        f"probe + full {times['resume']:.2f} s resumed, {times['again']:.2f} s trained again; "
        f"ratio {times['resume'] / times['again']:.2f}; resumed curve = uninterrupted one for "
        f"{exact} of {args.configs}"
    )


if __name__ == "__main__":
    main()
