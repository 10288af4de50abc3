"""Feature sets: named lists of task features and how a :class:`Task` computes them.

A policy stores the names of the task features it was trained on (``Policy.feature_names``). To
tune a real :class:`Task`, it looks up the feature set with those names and computes them from
the task, whatever backend simulated its training tasks. Two sets are built in: ``"hporl"``
(:data:`FEATURE_NAMES`, ``Task.features()``) and ``"size"`` (:data:`SIZE_FEATURE_NAMES`, what
is known of a data set from its size alone; the features of LCBench's tasks). A backend whose
tasks give other features registers their set with :func:`register_feature_set` when it is
imported.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from hporl.exceptions import PolicyError
from hporl.tasks._task import FEATURE_NAMES, Task

__all__ = [
    "SIZE_FEATURE_NAMES",
    "FeatureSet",
    "feature_set",
    "feature_sets",
    "register_feature_set",
    "size_features",
    "task_size_features",
]


@dataclass(frozen=True)
class FeatureSet:
    """A named list of task features and the function that computes them for a :class:`Task`."""

    name: str
    names: tuple[str, ...]
    compute: Callable[[Task], np.ndarray]


_REGISTRY: dict[tuple[str, ...], FeatureSet] = {}


def register_feature_set(
    name: str, names: Sequence[str], compute: Callable[[Task], np.ndarray]
) -> FeatureSet:
    """Declare that features called ``names`` are ``compute(task)`` for a :class:`Task`.

    Registering the same names again replaces the earlier set.
    """
    entry = FeatureSet(name, tuple(names), compute)
    _REGISTRY[entry.names] = entry
    return entry


def feature_set(names: Sequence[str]) -> FeatureSet | None:
    """The registered set whose feature names are ``names`` (in order), or ``None``."""
    return _REGISTRY.get(tuple(names))


def feature_sets() -> list[FeatureSet]:
    """Every registered feature set, in registration order."""
    return list(_REGISTRY.values())


SIZE_FEATURE_NAMES = ["log10_instances_over_7", "log10_features_over_4", "log2_classes_over_7"]
"""The size features: what is known of a data set from its size alone (LCBench's task features)."""


def size_features(instances: int, features: int, classes: int) -> np.ndarray:
    """``[log10(instances)/7, log10(features)/4, log2(classes)/7]`` clipped to [0, 1]: the same
    for an LCBench data set (from OpenML's figures) and for any real classification task, so a
    policy meta-trained on the surrogate can read a task it never saw."""
    raw = [
        math.log10(max(instances, 1)) / 7,
        math.log10(max(features, 1)) / 4,
        math.log2(max(classes, 2)) / 7,
    ]
    return np.clip(np.asarray(raw, dtype=np.float32), 0.0, 1.0)


def task_size_features(task: Task) -> np.ndarray:
    """:func:`size_features` of a real :class:`Task` (all rows, input size, classes).

    Raises:
        PolicyError: ``task`` is not a classification task.
    """
    if getattr(task, "task_type", "classification") != "classification":
        raise PolicyError(
            f"an LCBench policy tunes classification tasks; {task.name!r} is {task.task_type}"
        )
    rows = len(task.X_train) + len(task.X_val) + len(task.X_test)
    return size_features(rows, int(np.prod(task.input_shape)), int(task.n_outputs))


register_feature_set("hporl", FEATURE_NAMES, Task.features)
register_feature_set("size", SIZE_FEATURE_NAMES, task_size_features)
