"""hporl: a policy meta-trained across tasks picks training hyperparameters for new ones.

The public names below are imported on first use (PEP 562), so that ``import hporl.cli`` and
``hporl --help`` do not load torch, and a Ctrl-C while the command starts is caught by the
command's own handler ("hporl: aborted") instead of printing an import traceback.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_WHERE = {
    "Backend": "hporl.backends",
    "SyntheticBackend": "hporl.backends",
    "TorchBackend": "hporl.backends",
    "TrialResult": "hporl.backends",
    "SurrogateBackend": "hporl.backends",
    "HPOEnv": "hporl.env",
    "Evaluator": "hporl.evaluation",
    "ConfigError": "hporl.exceptions",
    "HporlError": "hporl.exceptions",
    "ModelError": "hporl.exceptions",
    "PolicyError": "hporl.exceptions",
    "SearchSpaceError": "hporl.exceptions",
    "StoreError": "hporl.exceptions",
    "TaskError": "hporl.exceptions",
    "ExperimentConfig": "hporl.experiment",
    "run_experiment": "hporl.experiment",
    "Policy": "hporl.policy",
    "TrialChoice": "hporl.policy",
    "PolicySampler": "hporl.sampler",
    "Predictor": "hporl.saved_model",
    "load_model": "hporl.saved_model",
    "SearchSpace": "hporl.space",
    "TrialStore": "hporl.store",
    "Task": "hporl.tasks",
    "TuneOptions": "hporl.tune",
    "TuneResult": "hporl.tune",
    "tune_model": "hporl.tune",
}
_SUBMODULES = ("agents", "rewards", "tasks")

__all__ = [
    "Backend",
    "ConfigError",
    "Evaluator",
    "ExperimentConfig",
    "HPOEnv",
    "HporlError",
    "ModelError",
    "Policy",
    "PolicyError",
    "PolicySampler",
    "Predictor",
    "SearchSpace",
    "SearchSpaceError",
    "StoreError",
    "SurrogateBackend",
    "SyntheticBackend",
    "Task",
    "TaskError",
    "TorchBackend",
    "TrialChoice",
    "TrialResult",
    "TrialStore",
    "TuneOptions",
    "TuneResult",
    "__version__",
    "agents",
    "load_model",
    "rewards",
    "run_experiment",
    "tasks",
    "tune_model",
]


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        value = getattr(importlib.import_module(_WHERE[name]), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"hporl.{name}")
    else:
        raise AttributeError(f"module 'hporl' has no attribute {name!r}")
    globals()[name] = value  # the next access is a plain lookup
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])


if TYPE_CHECKING:
    from hporl import agents, rewards, tasks
    from hporl.backends import (
        Backend,
        SurrogateBackend,
        SyntheticBackend,
        TorchBackend,
        TrialResult,
    )
    from hporl.env import HPOEnv
    from hporl.evaluation import Evaluator
    from hporl.exceptions import (
        ConfigError,
        HporlError,
        ModelError,
        PolicyError,
        SearchSpaceError,
        StoreError,
        TaskError,
    )
    from hporl.experiment import ExperimentConfig, run_experiment
    from hporl.policy import Policy, TrialChoice
    from hporl.sampler import PolicySampler
    from hporl.saved_model import Predictor, load_model
    from hporl.space import SearchSpace
    from hporl.store import TrialStore
    from hporl.tasks import Task
    from hporl.tune import TuneOptions, TuneResult, tune_model
