"""Parallel trials: how ``tune_model``'s wall time scales with the workers it is given.

For P = 1, 2, 4, ... up to the cores (or ``--workers``), ``tune_model`` on ``digits`` (its MLP,
``--epochs`` per trial, ``--trials`` trials, a fresh SQLite store (``--store memory``: in
memory), the packaged default policy) with ``LocalExecutor(P)`` (or ``RayExecutor(P)`` with ``--executor ray``). Each row:
wall seconds of the trials, speed-up over P = 1, workers busy on average (training seconds /
wall seconds), efficiency (busy / P, the target is >= 0.6), the driver's CPU seconds, and the driver's seconds broken down (``TuneResult.extra["driver_seconds"]``): starting the
workers, proposing (optuna ask + the policy), submitting, recording (annotate + tell), the
per-trial callbacks, and the final trainings after the trials; ``setup`` is what came before the
first trial (loading the policy, opening the store, starting the workers). Then a projection: the driver's
serial time per trial bounds the throughput at ``trial seconds / driver seconds per trial``
trials at once, whatever the cores.

    python benchmarks/parallel_scaling.py [--trials 32] [--epochs 20] [--workers 1,2] [--executor local]
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

import optuna
import torch

from hporl import Policy, TuneOptions, tune_model
from hporl.executors import make_executor
from hporl.tasks import builtin

PARTS = ("setup", "propose", "submit", "record", "after", "wait", "final")


def one(p: int, args: argparse.Namespace, policy: Policy) -> dict:
    task = builtin("digits", epochs=args.epochs)
    storage = None
    if args.store == "sqlite":
        storage = Path(tempfile.mkdtemp(prefix="hporl-scaling-")) / "trials.db"
    cpu0 = _cpu()
    t0 = time.perf_counter()
    result = tune_model(
        data=task,
        policy=policy,
        n_trials=args.trials,
        storage=storage,
        executor=make_executor(args.executor, p),
        options=TuneOptions(compare_default=False),
    )
    wall = time.perf_counter() - t0
    cpu = _cpu() - cpu0
    seconds = result.extra["driver_seconds"]
    trial_seconds = [t["seconds"] for t in result.trials]
    trials_wall = wall - seconds["final"]
    loop = sum(v for k, v in seconds.items() if k != "final")
    return {
        "p": p,
        "wall": wall,
        "trials_wall": trials_wall,
        "trial_mean": sum(trial_seconds) / len(trial_seconds),
        "busy": sum(trial_seconds) / trials_wall,
        "cpu": cpu,
        # before the first trial: the policy loaded, the store opened, the workers started
        # (a local pool's start while the policy loads)
        "setup": trials_wall - loop + seconds["start"],
        **seconds,
    }


def _cpu() -> float:
    """CPU seconds of this (the driving) process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--executor", default="local", choices=["local", "ray"])
    parser.add_argument(
        "--store",
        default="sqlite",
        choices=["sqlite", "memory"],
        help="a fresh SQLite file per run (what `hporl tune --out` uses), or in memory",
    )
    cores = os.cpu_count() or 1
    default = [p for p in (1, 2, 4, 8, 16, 32) if p <= cores]
    parser.add_argument("--workers", default=",".join(map(str, default)))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    policy = Policy.default()
    rows = [one(int(p), args, policy) for p in args.workers.split(",")]
    base = rows[0]["trials_wall"]
    print(
        f"tune_model on digits, {args.trials} trials of {args.epochs} epochs, {args.executor} "
        f"executor, {args.store} store, {cores} cores; seconds. busy: workers busy on average "
        "(training seconds / wall seconds of the trials); eff.: busy / P (configurations, and "
        "so trial lengths, differ between runs: busy compares them fairly)"
    )
    head = f"{'P':>3} {'trials wall':>11} {'speed-up':>8} {'busy':>5} {'eff.':>5} {'trial':>6}"
    print(head + "".join(f" {k:>8}" for k in PARTS) + f" {'cpu':>8}")
    for r in rows:
        print(
            f"{r['p']:>3} {r['trials_wall']:>11.1f} {base / r['trials_wall']:>8.2f} "
            f"{r['busy']:>5.2f} {r['busy'] / r['p']:>5.2f} {r['trial_mean']:>6.2f}"
            + "".join(f" {r[k]:>8.2f}" for k in PARTS)
            + f" {r['cpu']:>8.2f}"
        )
    last = rows[-1]
    serial = (last["propose"] + last["submit"] + last["record"] + last["after"]) / args.trials
    print(
        f"driver's serial work per trial: {serial * 1e3:.1f} ms (propose + submit + record + "
        f"callbacks, at P = {last['p']}); a trial of {rows[0]['trial_mean']:.2f} s keeps at most "
        f"{rows[0]['trial_mean'] / max(serial, 1e-9):.0f} workers busy; set-up before the first "
        f"trial at P = {last['p']}: {last['setup']:.1f} s (at P = 1: {rows[0]['setup']:.1f} s)"
    )


if __name__ == "__main__":
    main()
