from __future__ import annotations

import pytest
import torch

from hporl import SearchSpace
from hporl.tasks import builtin

# Small models train faster on one thread here, and two-thread runs were seen to stall.
torch.set_num_threads(1)

SMALL_SPACE = {
    "optimizer": {"type": "categorical", "choices": ["sgd", "adam", "rmsprop"]},
    "lr": {"type": "float", "low": 1e-5, "high": 1.0, "log": True},
    "momentum": {
        "type": "float",
        "low": 0.0,
        "high": 0.99,
        "when": {"optimizer": ["sgd", "rmsprop"]},
    },
}


@pytest.fixture(scope="session")
def digits():
    return builtin("digits")


@pytest.fixture(scope="session")
def iris():
    return builtin("iris")


@pytest.fixture(scope="session")
def small_space():
    return SearchSpace.from_dict(SMALL_SPACE)


@pytest.fixture(scope="session")
def tiny_policy(tmp_path_factory):
    """A policy meta-trained for a few steps on two real tasks (shared by tune and CLI tests)."""
    from hporl import run_experiment

    out = tmp_path_factory.mktemp("meta")
    policy = run_experiment(
        {
            "name": "tiny",
            "tasks": ["iris", "wine"],
            "backend": {"epochs": 2},
            "budget": 2,
            "agent": {
                "total_timesteps": 128,
                "net_arch": [16],
                "params": {"n_steps": 64, "batch_size": 32},
            },
        },
        out=out,
    )
    return policy, out
