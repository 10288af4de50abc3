"""Policy ``suggest`` latency per configuration, next to optuna TPE's sampling time per trial.

Both on the built-in ``optimizer`` space, after 30 finished trials (the history the policy reads,
the observations TPE fits), in one process. Prints medians and their ratio.

    python benchmarks/policy_latency.py [--repeats 50]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import optuna
import torch

from hporl import HPOEnv, Policy, SearchSpace, SyntheticBackend
from hporl.agents import AgentConfig, build_agent, make_vec_env
from hporl.backends import SyntheticTask


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--history", type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = SearchSpace.builtin("optimizer")
    backend = SyntheticBackend(space)
    tasks = SyntheticTask.sample(0, 4, n_features=19)
    task = tasks[0]
    cfg = AgentConfig(net_arch=[64, 64])
    env = HPOEnv(space, backend, tasks, budget=10)
    agent = build_agent(cfg, make_vec_env([lambda: HPOEnv(space, backend, tasks, budget=10)]))
    policy = Policy.from_agent(
        agent, env.layout, algorithm=cfg.algorithm, policy_kwargs=cfg.policy_kwargs(env.layout)
    )

    rng = np.random.default_rng(0)
    history = []
    for _ in range(args.history):
        c = space.sample(rng)
        history.append((c, backend.evaluate(task, c)))

    policy.suggest(task, history)  # warm-up
    t_policy = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        policy.suggest(task, history)
        t_policy.append(time.perf_counter() - t0)

    study = _trimmed(space, history, seed=0)
    t_tpe = []
    for i in range(args.repeats):
        t0 = time.perf_counter()
        trial = study.ask()
        config = space.suggest(trial)
        t_tpe.append(time.perf_counter() - t0)
        study.tell(trial, backend.evaluate(task, config).best_metric or 0.0)
        # keep the history at the same size for every measurement
        study = _trimmed(space, history, seed=i + 1)

    mp, mt = statistics.median(t_policy), statistics.median(t_tpe)
    print(
        f"space: optimizer ({len(space.chosen)} parameters); history: {args.history} trials; repeats: {args.repeats}"
    )
    print(f"policy suggest (MaskablePPO, net 64x64): median {mp * 1e3:.2f} ms per configuration")
    print(f"optuna TPE ask + suggest:                median {mt * 1e3:.2f} ms per trial")
    print(f"ratio policy / TPE: {mp / mt:.3f}")


def _dists(space: SearchSpace, config: dict) -> dict:
    full = space.to_optuna()
    return {k: full[k] for k in space.optuna_params(config)}


def _trimmed(space: SearchSpace, history: list, *, seed: int) -> optuna.Study:
    """A TPE study holding exactly ``history`` (so every measurement sees 30 trials)."""
    fresh = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
    for c, r in history:
        fresh.add_trial(
            optuna.trial.create_trial(
                params=space.optuna_params(c),
                distributions=_dists(space, c),
                value=r.best_metric or 0.0,
            )
        )
    return fresh


if __name__ == "__main__":
    main()
