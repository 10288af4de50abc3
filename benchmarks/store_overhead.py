"""What the trial store costs per trial: in memory, a SQLite file, and PostgreSQL.

Two paths, each with an instant backend (no training, so only the store is measured):

- ``record``: :class:`hporl.Evaluator` with a store, as meta-training and ``hporl bench`` use it (cache
  lookup that misses, then one finished trial added), over distinct configurations;
- ``tune``: the trial loop of :func:`hporl.tune_model` (optuna ask with the policy sampler,
  cache lookup, the result written into the running trial, tell, heartbeat), per trial.

The PostgreSQL server is started here (127.0.0.1 only, a temporary directory) with the tests'
helper, or taken from ``--postgres URL``. Prints milliseconds per trial, and the difference from
the in-memory store, all measured in this one run.

    python benchmarks/store_overhead.py [--trials 200] [--postgres URL]
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import optuna
import torch

from hporl import (
    Evaluator,
    SearchSpace,
    TorchBackend,
    TrialResult,
    TrialStore,
    TuneOptions,
    tune_model,
)
from hporl.space import config_key
from hporl.tasks import builtin

ROOT = Path(__file__).resolve().parents[1]


class InstantBackend(TorchBackend):
    """A backend that answers at once with a made-up curve (a function of the configuration)."""

    def evaluate(self, task, config, **kwargs):
        h = int(hashlib.sha256(config_key(config).encode()).hexdigest()[:8], 16) / 2**32
        curve = [0.5 + 0.4 * h * (i + 1) / task.epochs for i in range(task.epochs)]
        return TrialResult.from_curves(
            metric_name=task.metric_name, curve=curve, status="ok", test_metric=curve[-1]
        )

    def fit(self, task, config, **kwargs):
        return [task.build_model()], self.evaluate(task, config)


def record_ms(url: str | None, space: SearchSpace, task, n: int) -> float:
    backend = Evaluator(InstantBackend(), store=TrialStore(url), run="bench", space=space)
    rng = np.random.default_rng(0)
    configs = [space.sample(rng) for _ in range(n)]
    backend.evaluate(task, configs[0])  # study creation out of the timing
    t0 = time.perf_counter()
    for c in configs[1:]:
        backend.evaluate(task, c)
    return (time.perf_counter() - t0) / (n - 1) * 1e3


def tune_ms(url: str | None, policy, task, n: int) -> float:
    stamps: list[float] = []
    tune_model(
        data=task,
        policy=policy,
        n_trials=n,
        storage=url,
        options=TuneOptions(backend=InstantBackend(), compare_default=False),
        callback=lambda *_: stamps.append(time.perf_counter()),
    )
    gaps = np.diff(stamps)
    return float(statistics.median(gaps)) * 1e3


def tiny_policy(space: SearchSpace, out: Path):
    from hporl import run_experiment

    return run_experiment(
        {
            "name": "store-bench",
            "tasks": ["iris"],
            "backend": {"epochs": 1},
            "budget": 2,
            "agent": {"total_timesteps": 64, "params": {"n_steps": 64, "batch_size": 32}},
        },
        out=out,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--tune-trials", type=int, default=40)
    parser.add_argument("--postgres", help="a PostgreSQL URL (default: start a server here)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = SearchSpace.builtin("optimizer")
    task = builtin("iris", epochs=5)
    tmp = Path(tempfile.mkdtemp(prefix="hporl-store-bench-"))
    server = None
    pg_url = args.postgres
    if pg_url is None:
        sys.path.insert(0, str(ROOT))
        from tests import _postgres

        try:
            server, pg_url = _postgres.start_server()
        except _postgres.PostgresUnavailable as err:
            print(f"PostgreSQL not measured: {err}")
    try:
        policy = tiny_policy(space, tmp / "policy-run")
        stores = {"memory": lambda name: None, "sqlite": lambda name: f"sqlite:///{tmp}/{name}.db"}
        if pg_url:
            stores["postgresql"] = lambda name: pg_url
        rows = []
        for kind, url_of in stores.items():
            rec = record_ms(url_of("record"), space, task, args.trials)
            tun = tune_ms(url_of("tune"), policy, builtin("wine", epochs=5), args.tune_trials)
            rows.append((kind, rec, tun))
        base_rec, base_tun = rows[0][1], rows[0][2]
        print(
            f"store overhead per trial (ms), instant backend; record: {args.trials} trials, tune: {args.tune_trials}"
        )
        print(f"{'store':<12}{'record':>10}{'+ vs memory':>14}{'tune':>10}{'+ vs memory':>14}")
        for kind, rec, tun in rows:
            print(
                f"{kind:<12}{rec:>10.2f}{rec - base_rec:>14.2f}{tun:>10.2f}{tun - base_tun:>14.2f}"
            )
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
