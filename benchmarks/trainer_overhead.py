"""TorchBackend versus a bare hand-written training loop: the ratio of their times.

Same model (same initial weights), same data tensors, same optimizer (Adam, the optimizer
space's defaults), same batch size and epochs; both evaluate validation accuracy after every
epoch and the test accuracy at the end, as any real training loop does. Runs are interleaved in
one process; the figure is median(backend) / median(bare). Target: at most 1.05.

    python benchmarks/trainer_overhead.py [--repeats 9] [--tasks digits digits_image]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from hporl import SearchSpace, TorchBackend
from hporl.tasks import builtin


def bare_loop(task, config, seed, epochs):
    torch.manual_seed(seed)
    model = task.build_model(0)
    opt = torch.optim.Adam(
        model.parameters(), lr=config["lr"], betas=(config["beta1"], config["beta2"])
    )
    loss_fn = nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(seed)
    X, y, n, bs = task.X_train, task.y_train, len(task.X_train), config["batch_size"]
    accs = []
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(n, generator=gen)
        total = torch.zeros(())
        for s in range(0, n, bs):
            idx = perm[s : s + bs]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(X[idx]), y[idx])
            loss.backward()
            opt.step()
            total += loss.detach() * len(idx)
        model.eval()
        with torch.no_grad():
            accs.append((model(task.X_val).argmax(1) == task.y_val).float().mean().item())
    with torch.no_grad():
        test = (model(task.X_test).argmax(1) == task.y_test).float().mean().item()
    return max(accs), test


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--tasks", nargs="+", default=["digits", "digits_image", "mnist1d"])
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = SearchSpace.builtin("optimizer").default()
    backend = TorchBackend()
    print(f"config: {config}")
    print(
        f"{'task':14s} {'backend s':>10s} {'bare s':>10s} {'ratio':>7s}   best val (backend / bare)"
    )
    for name in args.tasks:
        task = builtin(name)
        backend.evaluate(task, config, seed=0, epochs=1)  # warm-up both paths
        bare_loop(task, config, 0, 1)
        t_backend, t_bare = [], []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            result = backend.evaluate(task, config, seed=0, epochs=args.epochs)
            t_backend.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            best_bare, _ = bare_loop(task, config, 0, args.epochs)
            t_bare.append(time.perf_counter() - t0)
        mb, mr = statistics.median(t_backend), statistics.median(t_bare)
        print(
            f"{name:14s} {mb:10.3f} {mr:10.3f} {mb / mr:7.3f}   {result.best_metric:.4f} / {best_bare:.4f}"
        )


if __name__ == "__main__":
    main()
