"""Tasks: data, model(s), loss, metric and budget; built-in tasks and suites; feature sets."""

from hporl.tasks import models
from hporl.tasks._builtin import available, builtin, suite, suites
from hporl.tasks._features import (
    SIZE_FEATURE_NAMES,
    FeatureSet,
    feature_set,
    feature_sets,
    register_feature_set,
    size_features,
    task_size_features,
)
from hporl.tasks._preprocess import Preprocessor
from hporl.tasks._task import FEATURE_NAMES, ModelSpec, Task

__all__ = [
    "FEATURE_NAMES",
    "SIZE_FEATURE_NAMES",
    "FeatureSet",
    "ModelSpec",
    "Preprocessor",
    "Task",
    "available",
    "builtin",
    "feature_set",
    "feature_sets",
    "models",
    "register_feature_set",
    "size_features",
    "suite",
    "suites",
    "task_size_features",
]
