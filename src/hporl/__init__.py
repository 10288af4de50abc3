"""hporl: a policy meta-trained across tasks picks training hyperparameters for new ones."""

from hporl import rewards, tasks
from hporl.backends import Backend, TorchBackend, TrialResult
from hporl.exceptions import ConfigError, HporlError, SearchSpaceError, TaskError
from hporl.space import SearchSpace
from hporl.tasks import Task

__version__ = "0.1.0"

__all__ = [
    "Backend",
    "ConfigError",
    "HporlError",
    "SearchSpace",
    "SearchSpaceError",
    "Task",
    "TaskError",
    "TorchBackend",
    "TrialResult",
    "__version__",
    "rewards",
    "tasks",
]
