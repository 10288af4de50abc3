"""Meta-training throughput on the LCBench surrogate with the default recipe.

Measures, in one run: raw HPOEnv steps/s (random masked actions, the whole-history observation,
64 bins, K = 30), and MaskablePPO steps/s with the history encoder and the surrogate recipe's
settings (``hporl.recipes.SURROGATE_AGENT``: 32 envs, 2,048 steps per update), over
``--steps`` steps; then the projected wall time of the recipe's 1,000,000 steps.

    python benchmarks/lcbench_meta_train.py [--steps 50000] [--data DIR]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from hporl import HPOEnv, SearchSpace
from hporl.agents import AgentConfig, train_agent
from hporl.backends.lcbench import LCBenchBackend
from hporl.evaluation import Evaluator
from hporl.recipes import SURROGATE_AGENT


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50_000)
    parser.add_argument("--data", default=None, help="the LCBench scenario folder")
    args = parser.parse_args()
    torch.set_num_threads(1)
    backend = LCBenchBackend(data_dir=args.data)
    tasks = backend.tasks()[:24]
    space = SearchSpace.builtin("lcbench")
    evaluator = Evaluator(backend)

    def make() -> HPOEnv:
        return HPOEnv(space, evaluator, tasks, budget=30)

    env = make()
    rng = np.random.default_rng(0)
    env.reset(seed=0)
    n = min(args.steps, 20_000)
    t0 = time.perf_counter()
    for _ in range(n):
        _, _, done, _, _ = env.step(int(rng.choice(np.flatnonzero(env.action_masks()))))
        if done:
            env.reset()
    raw = n / (time.perf_counter() - t0)

    config = AgentConfig.model_validate({**SURROGATE_AGENT, "total_timesteps": args.steps})
    t0 = time.perf_counter()
    agent = train_agent(config, [make] * config.n_envs)
    seconds = time.perf_counter() - t0
    ppo = agent.num_timesteps / seconds
    print(
        f"LCBench, 24 tasks, K=30, obs dim {env.layout.dim}, {env.layout.n_actions} actions, "
        f"{len(space.chosen)} parameters"
    )
    print(f"raw env steps/s (random masked actions, whole history): {raw:,.0f}")
    print(
        f"MaskablePPO + history encoder steps/s ({config.n_envs} envs): {ppo:,.0f} "
        f"({agent.num_timesteps:,} steps in {seconds:.0f} s)"
    )
    print(f"projected wall time of 1,000,000 steps: {1_000_000 / ppo / 60:.1f} min")


if __name__ == "__main__":
    main()
