"""The meta-training recipes hporl uses when a config leaves a key out: the best known, measured
on held-out tasks (see the README's benchmark section for the figures).

A surrogate benchmark (cheap steps, evaluated in this process) gets about a million PPO steps
on 32 envs at once after a behaviour-cloning warm start on the transfer baselines' own sample
(played exactly), with the first trial anchored to the portfolio's. Real training, where every
step is a training run, keeps a short run.
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

SURROGATE_PRETRAIN: dict[str, Any] = {"epochs": 100, "anchor_trials": 1}
"""The warm start on a surrogate (its ``candidates`` are the benchmark's transfer sample)."""

SURROGATE_AUGMENT: dict[str, Any] | None = None
"""Task augmentation on a surrogate (see :class:`hporl.env.TaskAugmentation`)."""

REAL_AGENT: dict[str, Any] = {
    "total_timesteps": 20_000,
    "learning_rate": 1e-4,
    "params": {"ent_coef": 0.0},
}
"""The agent on real training, where each trial is a training run."""
