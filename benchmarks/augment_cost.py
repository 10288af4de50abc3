"""Cost of data augmentation per training batch, as a fraction of the training step.

For each image task and policy, in one process, interleaved and repeated (medians):

- step: one training step of the task's model on a batch (forward, backward, Adam step), with
  the optimizer space's defaults (batch size 64);
- aug: augmenting that batch the way TorchBackend does it (a run of whole batches, about 1,024
  images, per call; the time per batch is the call's time x 64 / images in the run), and,
  for reference, one call per batch of 64 ("aug/call");
- end to end: TorchBackend.evaluate's time with the policy over its time without augmentation
  (5 epochs, median of 3).

    python benchmarks/augment_cost.py [--repeats 7] [--tasks digits_image shapes shapes_rgb]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
from torch import nn

from hporl import SearchSpace, TorchBackend
from hporl.augment import Augmenter
from hporl.backends.torch_backend import AUGMENT_CHUNK
from hporl.tasks import builtin


def policies() -> dict[str, dict]:
    space = SearchSpace.builtin("autoaugment")
    autoaugment = {"augment": "autoaugment"}
    for p in space.parameters:  # the space's defaults: AutoAugment's CIFAR-10 sub-policies
        if p.name != "augment" and space.is_active(p.name, autoaugment):
            autoaugment[p.name] = p.default
    return {
        "trivialaugment": {"augment": "trivialaugment"},
        "randaugment": {"augment": "randaugment", "randaugment_n": 2, "randaugment_m": 9},
        "autoaugment": autoaugment,
    }


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument(
        "--tasks", nargs="+", default=["digits_image", "shapes", "shapes_rgb", "glyph_letters"]
    )
    parser.add_argument("--epochs", type=int, default=5, help="epochs of the end-to-end runs")
    args = parser.parse_args()
    torch.set_num_threads(1)
    bs = 64
    chunk = bs * math.ceil(AUGMENT_CHUNK / bs)
    backend = TorchBackend(num_threads=1)
    print(
        f"{'task':14s} {'policy':15s} {'step ms':>8s} {'aug ms':>7s} {'fraction':>9s} "
        f"{'aug/call ms':>12s} {'end-to-end':>11s}"
    )
    fractions = []
    for name in args.tasks:
        task = builtin(name)
        torch.manual_seed(0)
        model = task.build_model(0)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        loss_fn = nn.CrossEntropyLoss()
        gen = torch.Generator().manual_seed(0)
        X, y = task.X_train, task.y_train
        idx = torch.randperm(len(X), generator=gen)[:bs]
        xb, yb = X[idx], y[idx]
        ahead = X[torch.randint(0, len(X), (chunk,), generator=gen)]

        def step(xb=xb, yb=yb, model=model, opt=opt, loss_fn=loss_fn) -> None:
            opt.zero_grad(set_to_none=True)
            loss_fn(model(xb), yb).backward()
            opt.step()

        for _ in range(20):
            step()  # warm-up
        backend.evaluate(task, {}, epochs=1)  # warm-up
        plain = timed(lambda task=task: backend.evaluate(task, {}, epochs=args.epochs), 3)
        for policy, config in policies().items():
            aug = Augmenter.for_task(config, task, seed=0)
            aug(ahead)  # warm-up
            t_step = timed(lambda: [step() for _ in range(10)], args.repeats) / 10
            t_run = timed(lambda aug=aug, ahead=ahead: aug(ahead), args.repeats) * bs / chunk
            t_call = timed(lambda aug=aug, xb=xb: [aug(xb) for _ in range(5)], args.repeats) / 5
            t_end = timed(
                lambda task=task, config=config: backend.evaluate(task, config, epochs=args.epochs),
                3,
            )
            fractions.append(t_run / t_step)
            print(
                f"{name:14s} {policy:15s} {t_step * 1e3:8.3f} {t_run * 1e3:7.3f} "
                f"{t_run / t_step:9.1%} {t_call * 1e3:12.3f} {t_end / plain:10.2f}x"
            )
    print(
        f"augmentation per batch / training step: median {statistics.median(fractions):.1%}, "
        f"range {min(fractions):.1%} - {max(fractions):.1%}"
    )


if __name__ == "__main__":
    main()
