"""HPOEnv steps per second during meta-training, with the synthetic backend (no training cost).

Measures (1) raw env steps with random masked actions and (2) MaskablePPO meta-training
throughput (env steps including the agent's rollouts and updates), on the ``optimizer`` space.

    python benchmarks/env_steps.py [--steps 20000]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from hporl import HPOEnv, SearchSpace, SyntheticBackend
from hporl.agents import AgentConfig, train_agent
from hporl.backends import SyntheticTask


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20_000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    space = SearchSpace.builtin("optimizer")
    backend = SyntheticBackend(space)
    tasks = SyntheticTask.sample(0, 50, n_features=19)

    def make() -> HPOEnv:
        return HPOEnv(space, backend, tasks, budget=5)

    env = make()
    rng = np.random.default_rng(0)
    env.reset(seed=0)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        action = int(rng.choice(np.flatnonzero(env.action_masks())))
        _, _, done, _, _ = env.step(action)
        if done:
            env.reset()
    raw = args.steps / (time.perf_counter() - t0)

    cfg = AgentConfig(total_timesteps=args.steps, seed=0)
    t0 = time.perf_counter()
    agent = train_agent(cfg, [make])
    train = agent.num_timesteps / (time.perf_counter() - t0)
    print(
        f"space: optimizer ({len(space.chosen)} parameters), K=5, synthetic backend, obs dim {env.layout.dim}"
    )
    print(f"raw env steps/s (random masked actions): {raw:,.0f}")
    print(f"MaskablePPO meta-training env steps/s (rollouts + updates, 1 env): {train:,.0f}")


if __name__ == "__main__":
    main()
