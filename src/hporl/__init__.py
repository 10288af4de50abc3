"""hporl: a policy meta-trained across tasks picks training hyperparameters for new ones."""

__version__ = "0.1.0"

from hporl import agents, rewards, tasks  # noqa: E402
from hporl.backends import Backend, SyntheticBackend, TorchBackend, TrialResult  # noqa: E402
from hporl.env import HPOEnv  # noqa: E402
from hporl.exceptions import ConfigError, HporlError, PolicyError, SearchSpaceError, TaskError  # noqa: E402
from hporl.experiment import ExperimentConfig, run_experiment  # noqa: E402
from hporl.policy import Policy, PolicySampler  # noqa: E402
from hporl.space import SearchSpace  # noqa: E402
from hporl.tasks import Task  # noqa: E402
from hporl.tune import TuneResult, tune_model  # noqa: E402

__all__ = [
    "Backend",
    "ConfigError",
    "ExperimentConfig",
    "HPOEnv",
    "HporlError",
    "Policy",
    "PolicyError",
    "PolicySampler",
    "SearchSpace",
    "SearchSpaceError",
    "SyntheticBackend",
    "Task",
    "TaskError",
    "TorchBackend",
    "TrialResult",
    "TuneResult",
    "__version__",
    "agents",
    "rewards",
    "run_experiment",
    "tasks",
    "tune_model",
]
