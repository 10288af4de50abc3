"""The meta-training recipes hporl uses when a config leaves a key out: the best known, measured
on held-out tasks (see the README's benchmark section for the figures).

A surrogate benchmark (cheap steps, evaluated in this process) gets a million PPO steps on 32
envs at once, after a behaviour-cloning warm start that imitates the greedy portfolio of the
transfer baselines' own sample (its values played exactly), with the first trial anchored to
it. Real training, where every step is a
training run, keeps a short run.
"""

from __future__ import annotations

from typing import Any

__all__ = ["REAL_AGENT", "SURROGATE_AGENT", "SURROGATE_AUGMENT", "SURROGATE_PRETRAIN"]

SURROGATE_AGENT: dict[str, Any] = {
    "total_timesteps": 1_000_000,
    "n_envs": 32,
    "learning_rate": 1e-4,
    "params": {"ent_coef": 0.0, "n_steps": 64, "batch_size": 512, "n_epochs": 4},
}
"""The agent on a surrogate: 2,048 steps per update over 32 envs, 4 passes in batches of 512."""

SURROGATE_PRETRAIN: dict[str, Any] = {"epochs": 300, "anchor_trials": 1}
"""The warm start on a surrogate (its ``candidates`` are the benchmark's transfer sample; 300
passes: 100 left the network imitating the adaptive expert's actions at 0.76-0.90 accuracy)."""

SURROGATE_AUGMENT: dict[str, Any] | None = None
"""Task augmentation on a surrogate (see :class:`hporl.env.TaskAugmentation`): off. Measured on
an LCBench split (24 train / 10 test tasks, 1M steps, portfolio warm start): with shift 0.1,
warp 0.3, noise 0.01 the policy's best score after 3-10 trials was lower on 8 of 10 test
tasks than without, and even at 30 trials (README)."""

REAL_AGENT: dict[str, Any] = {
    "total_timesteps": 20_000,
    "learning_rate": 1e-4,
    "params": {"ent_coef": 0.0},
}
"""The agent on real training, where each trial is a training run."""
