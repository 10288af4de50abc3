"""A synthetic backend with no training: the best configuration is a known function of the task's
features. It exists to test and measure the meta-learning machinery (does an agent learn to read
the features?) and to time environment steps without training cost."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from hporl.backends._base import Backend, EpochCallback, TrialResult
from hporl.space import SearchSpace

__all__ = ["SyntheticBackend", "SyntheticTask"]


class SyntheticTask:
    """A task that is only a feature vector (in [0, 1]) and a name."""

    task_type = "classification"
    metric_name = "accuracy"
    chance_metric = 0.0

    def __init__(self, name: str, features: np.ndarray, *, epochs: int = 10) -> None:
        self.name = name
        self._features = np.asarray(features, dtype=np.float32).reshape(-1)
        self.epochs = epochs

    @classmethod
    def sample(
        cls,
        rng: np.random.Generator | int,
        n: int,
        *,
        n_features: int = 4,
        prefix: str = "synthetic",
    ) -> list[SyntheticTask]:
        rng = np.random.default_rng(rng)
        return [cls(f"{prefix}_{i}", rng.random(n_features)) for i in range(n)]

    def features(self) -> np.ndarray:
        return self._features

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(self.name.encode() + self._features.tobytes()).hexdigest()[:32]


def _weights(name: str, n_features: int, n_out: int) -> np.ndarray:
    seed = int(hashlib.sha256(name.encode()).hexdigest()[:8], 16)
    return np.random.default_rng(seed).normal(size=(n_out, n_features)) * 3.0


class SyntheticBackend(Backend):
    """Scores a configuration by its distance to a feature-dependent optimum.

    For each chosen numeric parameter the optimum, as a position in [0, 1] of its range (log
    scale where ``log``), is ``sigmoid(w . (f - 0.5))``; for a categorical one, the best choice is
    ``argmax(W (f - 0.5))``; ``w``, ``W`` are fixed by the parameter's name. The score is the mean
    closeness over active parameters (numeric: ``exp(-(d / width)^2)``; categorical: 1 for the
    best choice, 0.3 otherwise); the validation curve rises to ``0.1 + 0.9 * score``. A numeric
    parameter named ``lr`` or ``learning_rate`` above 97% of its range diverges. Deterministic;
    ``noise`` adds seeded Gaussian noise to the final score.
    """

    name = "synthetic"

    def __init__(self, space: SearchSpace, *, width: float = 0.2, noise: float = 0.0) -> None:
        self.space = space
        self.width = width
        self.noise = noise

    def optimum(self, task: Any) -> dict[str, Any]:
        """The best configuration for ``task`` (parameters the score depends on)."""
        f = np.asarray(task.features(), dtype=np.float64) - 0.5
        best: dict[str, Any] = {}
        for p in self.space.parameters:
            if not self.space.is_active(p.name, best):
                continue
            if p.kind == "fixed":
                best[p.name] = p.default
            elif p.kind == "categorical":
                w = _weights(p.name, len(f), len(p.choices))
                best[p.name] = p.choices[int(np.argmax(w @ f))]
            else:
                w = _weights(p.name, len(f), 1)[0]
                best[p.name] = p._from_unit(1 / (1 + math.exp(-float(w @ f))))
        return best

    def score(self, task: Any, config: Mapping[str, Any]) -> float:
        best = self.optimum(task)
        closeness = []
        for p in self.space.chosen:
            if p.name not in config:
                continue
            if p.kind == "categorical":
                closeness.append(1.0 if config[p.name] == best.get(p.name) else 0.3)
            elif p.name in best:
                if p.has_off and (config[p.name] == p.off or best[p.name] == p.off):
                    closeness.append(1.0 if config[p.name] == best[p.name] else 0.5)
                    continue
                d = p._to_unit(float(config[p.name])) - p._to_unit(float(best[p.name]))
                closeness.append(math.exp(-((d / self.width) ** 2)))
        return float(np.mean(closeness)) if closeness else 0.0

    def evaluate(
        self,
        task: Any,
        config: Mapping[str, Any],
        *,
        seed: int = 0,
        epochs: int | None = None,
        checkpoint_dir: str | Path | None = None,
        on_epoch: EpochCallback | None = None,
    ) -> TrialResult:
        epochs = int(epochs or task.epochs)
        common = {
            "metric_name": "accuracy",
            "chance_metric": 0.0,
            "epochs": epochs,
            "seed": seed,
            "config": dict(config),
            "wall_time": 1e-6,
        }
        for p in self.space.chosen:
            if (
                p.name in ("lr", "learning_rate")
                and p.name in config
                and p.is_numeric
                and p._to_unit(float(config[p.name])) > 0.97
            ):
                return TrialResult.from_curves(
                    curve=[],
                    status="diverged",
                    reason="non-finite training loss in epoch 1",
                    **common,
                )
        final = 0.1 + 0.9 * self.score(task, config)
        if self.noise:
            h = int(
                hashlib.sha256(
                    f"{getattr(task, 'name', '')}|{seed}|{sorted(config.items())}".encode()
                ).hexdigest()[:8],
                16,
            )
            final = float(np.clip(final + np.random.default_rng(h).normal(0, self.noise), 0, 1))
        curve, stopped = [], False
        for e in range(1, epochs + 1):
            curve.append(final * (1 - math.exp(-3 * e / epochs)) / (1 - math.exp(-3)))
            if on_epoch is not None and on_epoch(e, curve[-1]):
                stopped = True
                break
        return TrialResult.from_curves(
            curve=curve,
            loss_curve=[1 - v for v in curve],
            train_loss_curve=[1 - v for v in curve],
            test_metric=curve[-1],
            status="ok",
            stopped_early=stopped,
            **common,
        )
