"""The backend contract: evaluate one configuration on one task, report a :class:`TrialResult`."""

from __future__ import annotations

import abc
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hporl.space import SearchSpace
    from hporl.tasks import Task

__all__ = ["STATUSES", "Backend", "EpochCallback", "TrialResult"]

STATUSES = ("ok", "diverged", "failed")

EpochCallback = Callable[[int, float], "bool | None"]
"""``on_epoch(epoch, value)``: called after each epoch (1-based) with the validation metric; a
return value of ``True`` stops the trial there (e.g. optuna pruning)."""


@dataclass
class TrialResult:
    """What one evaluation produced.

    Promises:

    - ``status`` is ``"ok"``, ``"diverged"`` (a non-finite loss; training stopped in the epoch it
      appeared, ``curve`` holds the epochs before it) or ``"failed"`` (the configuration could not
      be trained; ``reason`` says why). ``reason`` is ``None`` only for ``"ok"``.
    - ``curve[i]`` is the validation metric after epoch ``i + 1`` (higher is better: accuracy for
      classification, R² for regression); ``loss_curve`` the validation loss, ``train_loss_curve``
      the mean training loss. All three have ``epochs_done`` entries, all finite.
    - ``final_metric`` is ``curve[-1]``, ``best_metric`` its maximum, reached at 1-based
      ``best_epoch``, and ``test_metric`` the test-split metric of the weights of that epoch;
      all ``None`` when no epoch finished.
    - ``chance_metric`` is the metric of a constant prediction on the validation split, so scores
      can be normalised across tasks (see :mod:`hporl.rewards`).
    - ``wall_time`` is in seconds; ``stopped_early`` is true when ``on_epoch`` stopped the trial.
    - With several models, figures are the mean over models, ``per_model`` keeps each model's
      result, and the status is the worst of them (failed > diverged > ok).
    """

    status: str
    metric_name: str
    curve: list[float] = field(default_factory=list)
    loss_curve: list[float] = field(default_factory=list)
    train_loss_curve: list[float] = field(default_factory=list)
    final_metric: float | None = None
    best_metric: float | None = None
    best_epoch: int | None = None
    test_metric: float | None = None
    chance_metric: float = 0.0
    epochs: int = 0
    wall_time: float = 0.0
    reason: str | None = None
    stopped_early: bool = False
    seed: int | None = None
    config: dict[str, Any] = field(default_factory=dict)
    per_model: list[TrialResult] = field(default_factory=list)
    cached: bool = False

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {self.status!r}")

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def epochs_done(self) -> int:
        return len(self.curve)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (no NaN: missing figures are ``None``)."""
        d = asdict(self)
        d["per_model"] = [r.to_dict() for r in self.per_model]
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrialResult:
        data = dict(data)
        data["per_model"] = [cls.from_dict(r) for r in data.get("per_model", [])]
        return cls(**data)

    @classmethod
    def from_curves(
        cls,
        *,
        metric_name: str,
        curve: list[float],
        loss_curve: list[float] | None = None,
        train_loss_curve: list[float] | None = None,
        test_metric: float | None = None,
        **kwargs: Any,
    ) -> TrialResult:
        """Fill final/best metric and best epoch from a validation curve (for backends)."""
        best_epoch = max(range(len(curve)), key=lambda i: (curve[i], -i)) + 1 if curve else None
        return cls(
            metric_name=metric_name,
            curve=list(curve),
            loss_curve=list(loss_curve or []),
            train_loss_curve=list(train_loss_curve or []),
            final_metric=curve[-1] if curve else None,
            best_metric=curve[best_epoch - 1] if best_epoch else None,
            best_epoch=best_epoch,
            test_metric=test_metric,
            **kwargs,
        )

    def summary(self) -> str:
        if self.status == "failed":
            return f"failed: {self.reason}"
        best = "n/a" if self.best_metric is None else f"{self.best_metric:.4f}"
        test = "n/a" if self.test_metric is None else f"{self.test_metric:.4f}"
        text = f"{self.status}: best val {self.metric_name} {best} (epoch {self.best_epoch}), test {test}"
        return text + (f"; {self.reason}" if self.reason else "")


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None and math.isfinite(v)]
    return sum(present) / len(present) if present else None


def stop_epoch(curve: Sequence[float], on_epoch: EpochCallback | None) -> int | None:
    """The epoch at which ``on_epoch``, shown ``curve`` value by value as if it were being
    trained, says stop (a pruner); ``None`` when it never does."""
    if on_epoch is None:
        return None
    return next((e for e, v in enumerate(curve, start=1) if on_epoch(e, v)), None)


def aggregate(results: list[TrialResult]) -> TrialResult:
    """Combine the results of several models trained with one configuration (mean figures)."""
    if len(results) == 1:
        return results[0]
    order = {"ok": 0, "diverged": 1, "failed": 2}
    worst = max(results, key=lambda r: order[r.status])
    n = min(len(r.curve) for r in results)
    curve = [sum(r.curve[i] for r in results) / len(results) for i in range(n)]
    loss = [sum(r.loss_curve[i] for r in results) / len(results) for i in range(n)]
    train = [sum(r.train_loss_curve[i] for r in results) / len(results) for i in range(n)]
    out = TrialResult.from_curves(
        metric_name=results[0].metric_name,
        curve=curve,
        loss_curve=loss,
        train_loss_curve=train,
        status=worst.status,
        reason="; ".join(f"model {i}: {r.reason}" for i, r in enumerate(results) if r.reason)
        or None,
        chance_metric=results[0].chance_metric,
        epochs=results[0].epochs,
        wall_time=sum(r.wall_time for r in results),
        stopped_early=any(r.stopped_early for r in results),
        seed=results[0].seed,
        config=results[0].config,
        per_model=results,
    )
    out.test_metric = _mean([r.test_metric for r in results])
    # best/final as the mean of each model's own figures, which is what a user compares.
    out.best_metric = _mean([r.best_metric for r in results])
    out.final_metric = _mean([r.final_metric for r in results])
    return out


class Backend(abc.ABC):
    """Trains (or looks up) a configuration on a task.

    Every implementation guarantees:

    - :meth:`evaluate` never raises because of a hyperparameter value: a value it cannot use
      (unknown optimizer, negative learning rate, out of memory, ...) gives a ``"failed"`` result
      with the reason, and a non-finite loss gives ``"diverged"`` with the epoch it appeared in.
      It raises only for programming errors and ``KeyboardInterrupt``.
    - The result satisfies every promise of :class:`TrialResult`; the curve never holds NaN.
    - The same task, configuration, seed and epochs give the same result (on the CPU).
    - It decides nothing about search: it evaluates what it is given.
    """

    name: str = "backend"
    resumable: bool = False
    """Whether a trial can be continued to more epochs at the cost of the extra epochs only:
    the curve of an evaluation for ``e`` epochs is the first ``e`` points of a longer one's (a
    surrogate that predicts every epoch). A budget-aware policy then continues a trial for the
    extra epochs; otherwise continuing it means training it again, and costs every epoch."""

    def horizon(self, task: Task, epochs: int | None) -> int | None:
        """The epochs an evaluation for ``epochs`` is planned for, when it is the start of a
        longer training rather than a whole training of its own (a resuming
        :class:`~hporl.backends.TorchBackend`: the task's epochs); ``None`` otherwise. Part of
        what identifies a result in the caches."""
        return None

    def check_space(self, space: SearchSpace, task: Task) -> None:  # noqa: B027 - optional hook
        """Raise :class:`~hporl.exceptions.HporlError` naming a parameter of ``space`` that this
        backend would misread on ``task`` (unknown to it, or a range it cannot train), before
        any evaluation. The default accepts every space."""

    @abc.abstractmethod
    def evaluate(
        self,
        task: Task,
        config: Mapping[str, Any],
        *,
        seed: int = 0,
        epochs: int | None = None,
        checkpoint_dir: str | Path | None = None,
        on_epoch: EpochCallback | None = None,
    ) -> TrialResult:
        """Train ``task``'s model(s) with ``config`` for ``epochs`` (default ``task.epochs``)."""
