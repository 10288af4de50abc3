"""Parallel trials: how ``tune_model``'s wall time scales with the workers it is given.

For P = 1, 2, 4, ... up to the cores (or ``--workers``), ``tune_model`` on ``digits`` (its MLP,
``--epochs`` per trial, ``--trials`` trials, a fresh in-memory store, the packaged default
policy) with ``LocalExecutor(P)`` (or ``RayExecutor(P)`` with ``--executor ray``). Each row:
wall seconds of the trials, speed-up over P = 1, efficiency (speed-up / P, the target is >= 0.6),
and the driver's seconds broken down (``TuneResult.extra["driver_seconds"]``): starting the
workers, proposing (optuna ask + the policy), submitting, recording (annotate + tell), the
per-trial callbacks, and the final trainings after the trials. Then a projection: the driver's
serial time per trial bounds the throughput at ``trial seconds / driver seconds per trial``
trials at once, whatever the cores.

    python benchmarks/parallel_scaling.py [--trials 32] [--epochs 20] [--workers 1,2] [--executor local]
"""

from __future__ import annotations

import argparse
import os
import time

import optuna
import torch

from hporl import Policy, TuneOptions, tune_model
from hporl.executors import make_executor
from hporl.tasks import builtin

PARTS = ("start", "propose", "submit", "record", "after", "wait", "final")


def one(p: int, args: argparse.Namespace, policy: Policy) -> dict:
    task = builtin("digits", epochs=args.epochs)
    t0 = time.perf_counter()
    result = tune_model(
        data=task,
        policy=policy,
        n_trials=args.trials,
        executor=make_executor(args.executor, p),
        options=TuneOptions(compare_default=False),
    )
    wall = time.perf_counter() - t0
    seconds = result.extra["driver_seconds"]
    trial_seconds = [t["seconds"] for t in result.trials]
    return {
        "p": p,
        "wall": wall,
        "trials_wall": wall - seconds["final"],
        "trial_mean": sum(trial_seconds) / len(trial_seconds),
        **seconds,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--executor", default="local", choices=["local", "ray"])
    cores = os.cpu_count() or 1
    default = [p for p in (1, 2, 4, 8, 16, 32) if p <= cores]
    parser.add_argument("--workers", default=",".join(map(str, default)))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    policy = Policy.default()
    rows = [one(int(p), args, policy) for p in args.workers.split(",")]
    base = rows[0]["trials_wall"] * rows[0]["p"]
    print(
        f"tune_model on digits, {args.trials} trials of {args.epochs} epochs, {args.executor} "
        f"executor, {cores} cores; seconds"
    )
    head = f"{'P':>3} {'trials wall':>11} {'speed-up':>8} {'eff.':>5} {'trial':>6}"
    print(head + "".join(f" {k:>8}" for k in PARTS))
    for r in rows:
        speed = base / r["trials_wall"]
        print(
            f"{r['p']:>3} {r['trials_wall']:>11.1f} {speed:>8.2f} {speed / r['p']:>5.2f} "
            f"{r['trial_mean']:>6.2f}" + "".join(f" {r[k]:>8.2f}" for k in PARTS)
        )
    last = rows[-1]
    serial = (last["propose"] + last["submit"] + last["record"] + last["after"]) / args.trials
    print(
        f"driver's serial work per trial: {serial * 1e3:.1f} ms (propose + submit + record + "
        f"callbacks, at P = {last['p']}); a trial of {rows[0]['trial_mean']:.2f} s keeps at most "
        f"{rows[0]['trial_mean'] / max(serial, 1e-9):.0f} workers busy; worker start-up at "
        f"P = {last['p']}: {last['start']:.1f} s"
    )


if __name__ == "__main__":
    main()
