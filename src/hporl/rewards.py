"""Reward approaches: turn a :class:`~hporl.backends.TrialResult` into one number.

Rewards must be comparable across tasks, so every approach starts from the *normalised score*
of a metric value ``v``::

    score(v) = clip((v - chance) / (1 - chance), -1, 1)

where ``chance`` is the result's ``chance_metric``: the validation accuracy of always predicting
the majority class (classification), or 0 (regression, whose metric R² is already 0 for a
constant prediction). So 0 means "no better than a constant", 1 means perfect, on every task.
A ``diverged`` or ``failed`` result gets the approach's ``floor``, which is never above the
reward of any successful result.

Choose an approach by name (``rewards.get("best_metric")``); add one with ``@rewards.register``.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable
from typing import Any

from hporl._io import did_you_mean
from hporl.backends import TrialResult
from hporl.exceptions import ConfigError

__all__ = [
    "BestMetric",
    "CurveAUC",
    "FinalMetric",
    "ImprovementOverReference",
    "RewardApproach",
    "TimePenalized",
    "available",
    "get",
    "normalized_score",
    "register",
]

_REGISTRY: dict[str, type[RewardApproach]] = {}


def normalized_score(value: float | None, chance: float) -> float:
    """``(value - chance) / (1 - chance)`` clipped to [-1, 1]; -1 for a missing value."""
    if value is None or not math.isfinite(value):
        return -1.0
    return float(min(max((value - chance) / max(1.0 - chance, 1e-9), -1.0), 1.0))


class RewardApproach(abc.ABC):
    """Maps a trial result (and, for some approaches, a reference result) to a float."""

    name: str = ""
    floor: float = -1.0
    needs_reference: bool = False

    def __call__(
        self, result: TrialResult, *, reference: TrialResult | None = None, task: Any = None
    ) -> float:
        """The reward of ``result``; ``task`` (the task it ran on) is for approaches that need it."""
        if result.status != "ok" or result.best_metric is None:
            return self.floor
        if self.needs_reference and reference is None:
            raise ConfigError(
                f"reward {self.name!r} needs a reference result (the default configuration's)"
            )
        return max(self.floor, self.score(result, reference))

    @abc.abstractmethod
    def score(self, result: TrialResult, reference: TrialResult | None) -> float:
        """The reward of a successful result."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def register(name: str) -> Callable[[type[RewardApproach]], type[RewardApproach]]:
    """Class decorator that makes an approach available by ``name``."""

    def wrap(cls: type[RewardApproach]) -> type[RewardApproach]:
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return wrap


def available() -> list[str]:
    return sorted(_REGISTRY)


def get(name: str | RewardApproach, **kwargs: Any) -> RewardApproach:
    """The approach called ``name`` (an instance passes through unchanged)."""
    if isinstance(name, RewardApproach):
        return name
    if name not in _REGISTRY:
        raise ConfigError(
            f"unknown reward approach {name!r}; available: {', '.join(available())}."
            + did_you_mean(name, _REGISTRY)
        )
    try:
        return _REGISTRY[name](**kwargs)
    except TypeError as err:
        raise ConfigError(f"reward approach {name!r}: {err}") from None


@register("final_metric")
class FinalMetric(RewardApproach):
    """Normalised score of the last epoch's validation metric."""

    def score(self, result: TrialResult, reference: TrialResult | None) -> float:
        return normalized_score(result.final_metric, result.chance_metric)


@register("best_metric")
class BestMetric(RewardApproach):
    """Normalised score of the best epoch's validation metric (the weights a user keeps)."""

    def score(self, result: TrialResult, reference: TrialResult | None) -> float:
        return normalized_score(result.best_metric, result.chance_metric)


@register("improvement_over_reference")
class ImprovementOverReference(RewardApproach):
    """Normalised best score minus the reference's (the space's default configuration on the
    same task), clipped to [-1, 1]: positive when the configuration beats the default."""

    needs_reference = True

    def score(self, result: TrialResult, reference: TrialResult | None) -> float:
        assert reference is not None  # checked in __call__
        ref = (
            normalized_score(reference.best_metric, reference.chance_metric)
            if reference.ok
            else -1.0
        )
        return min(max(normalized_score(result.best_metric, result.chance_metric) - ref, -1.0), 1.0)


@register("time_penalized")
class TimePenalized(RewardApproach):
    """Normalised best score minus ``weight * log2(1 + wall_time / time_scale)`` (capped at
    ``4 * weight``). ``time_scale`` is the reference's wall time when one is given, else
    ``time_scale`` seconds: doubling the cost of a trial costs ``weight``."""

    def __init__(self, weight: float = 0.05, time_scale: float = 60.0) -> None:
        if weight < 0 or time_scale <= 0:
            raise ConfigError(
                f"time_penalized needs weight >= 0 and time_scale > 0, got {weight}, {time_scale}"
            )
        self.weight = weight
        self.time_scale = time_scale
        self.floor = -1.0 - 4 * weight

    def score(self, result: TrialResult, reference: TrialResult | None) -> float:
        scale = (
            reference.wall_time
            if reference is not None and reference.wall_time > 0
            else self.time_scale
        )
        penalty = self.weight * min(math.log2(1 + result.wall_time / scale), 4.0)
        return normalized_score(result.best_metric, result.chance_metric) - penalty


@register("curve_auc")
class CurveAUC(RewardApproach):
    """Mean normalised score over the epoch budget (area under the validation curve): rewards
    configurations that learn fast. Epochs a stopped trial did not run count at its last value."""

    def score(self, result: TrialResult, reference: TrialResult | None) -> float:
        scores = [normalized_score(v, result.chance_metric) for v in result.curve]
        scores += [scores[-1]] * max(0, result.epochs - len(scores))
        return sum(scores) / len(scores)
