"""Tasks: data, model(s), loss, metric and budget; built-in tasks and suites."""

from hporl.tasks import models
from hporl.tasks._builtin import available, builtin, suite, suites
from hporl.tasks._task import FEATURE_NAMES, ModelSpec, Task

__all__ = [
    "FEATURE_NAMES",
    "ModelSpec",
    "Task",
    "available",
    "builtin",
    "models",
    "suite",
    "suites",
]
