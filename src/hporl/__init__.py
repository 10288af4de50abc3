"""hporl: a policy meta-trained across tasks picks training hyperparameters for new ones."""

__version__ = "0.1.0"

from hporl import agents, rewards, tasks
from hporl.backends import Backend, SyntheticBackend, TorchBackend, TrialResult
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
from hporl.policy import Policy
from hporl.sampler import PolicySampler
from hporl.saved_model import Predictor, load_model
from hporl.space import SearchSpace
from hporl.store import TrialStore
from hporl.tasks import Task
from hporl.tune import TuneOptions, TuneResult, tune_model

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
    "SyntheticBackend",
    "Task",
    "TaskError",
    "TorchBackend",
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
