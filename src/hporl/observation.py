"""How a task and its trials become the policy's input: shared by the env, a trained
:class:`~hporl.Policy` and the warm start.

The observation shows only what a user would have on a new task: its meta-features and the
trials run on it so far, their scores chance-adjusted (``(metric - chance) / (1 - chance)``, see
:mod:`hporl.rewards`). Per-task normalisation constants of benchmarks never reach it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from hporl.backends import TrialResult
from hporl.exceptions import ConfigError
from hporl.rewards import normalized_score
from hporl.space import Parameter, SearchSpace, _same, config_key

__all__ = [
    "DECIDE",
    "FIDELITIES",
    "OBS_BOUND",
    "TOKEN_PRESENT",
    "ObservationLayout",
    "epochs_at",
    "trial_score",
]

OBS_BOUND = 2.0

_TOKEN_FIELDS = ("score", "z", "rank", "is_best", "gap", "failed", "present", "index")
TOKEN_FAILED = _TOKEN_FIELDS.index("failed")
TOKEN_PRESENT = _TOKEN_FIELDS.index("present")
"""Offsets, after the encoded configuration, of a version-2 token's fields (a budget-aware
layout adds one more, the trial's fidelity, after them)."""

FIDELITIES = (1 / 9, 1 / 3, 1.0)
"""The default fidelities of a budget-aware layout: fractions of a task's full epochs."""
DECIDE = -1
"""The position of a trial's fidelity decision (before its parameters), in a budget-aware layout."""


def epochs_at(fidelity: float, full: int) -> int:
    """The epochs of a trial at ``fidelity`` (a fraction of ``full`` epochs): at least one."""
    return max(1, min(int(full), round(fidelity * int(full))))


def trial_score(result: TrialResult | float | None, chance: float = 0.0) -> float | None:
    """The chance-adjusted score of a trial, ``None`` for a diverged or failed one.

    A float is taken as a raw metric value (higher is better) on a task whose chance level is
    ``chance``.
    """
    if result is None:
        return None
    if isinstance(result, TrialResult):
        if result.status != "ok" or result.best_metric is None:
            return None
        return normalized_score(result.best_metric, result.chance_metric)
    value = float(result)
    return normalized_score(value, chance) if math.isfinite(value) else None


@dataclass(frozen=True)
class ObservationLayout:
    """How observations are built; shared by the env and by a trained :class:`~hporl.Policy`.

    Blocks, in order (all float32, clipped to [-2, 2]):

    1. ``n_features`` task meta-features, as ``(f - feature_mean) / feature_scale`` when the
       layout carries them (a meta-training run sets them from its training tasks);
    2. one-hot of the parameter being chosen (one slot per chosen parameter; all zero when none);
    3. the partial configuration, ``space.encode`` (zeros where unset or inactive);
    4. one "unset" flag per chosen parameter (1 until it is chosen in the current trial);
    5. a summary: trial index / K, best score so far, 1 if any trial succeeded, fraction of
       failed trials;
    6. version 1: the last ``history`` trials, most recent first, each: encoded config, score,
       score minus the best so far, failed flag, present flag.
       version 2 (the default): ``history`` trial slots (the whole history when it is the
       budget), oldest first, each a token of :attr:`trial_width`: encoded config, score, its
       z-score and rank within the episode (task-invariant forms), is-best flag, score minus the
       best so far, failed flag, present flag, trial index / K. With more trials than slots,
       the best half of the slots keep the best trials and the rest the most recent ones.
       :attr:`tokens` says where they are, for a set encoder
       (:class:`hporl.agents.HistoryExtractor`).

    Budget-aware (``fidelities`` given, version 2 only): ``budget`` counts full-training
    equivalents of epochs (B: an episode spends B x the task's epochs), and each trial starts
    with a *fidelity decision* (position :data:`DECIDE`; block 2 has one more slot for it) among
    :attr:`decisions`: a new configuration trained for ``fidelities[i]`` of the full epochs, or
    the continuation of the best trial at ``fidelities[i]`` to ``fidelities[i + 1]`` (freeze-thaw,
    rung by rung as in successive halving). Block 5 adds the fraction of the epoch budget spent,
    and every token its trial's fidelity. Trials are then (config, score, fidelity).
    """

    space: SearchSpace
    n_features: int
    budget: int
    n_bins: int = 8
    history: int = 3
    feature_mean: tuple[float, ...] | None = None
    feature_scale: tuple[float, ...] | None = None
    extra_bins: tuple[tuple[str, tuple[Any, ...]], ...] = ()
    version: int = 2
    fidelities: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if self.version not in (1, 2):
            raise ConfigError(f"observation layout version must be 1 or 2, got {self.version!r}")
        if self.fidelities:
            f = self.fidelities
            if self.version != 2:
                raise ConfigError("a budget-aware observation layout (fidelities) needs version 2")
            if (
                len(f) > 16
                or not all(isinstance(v, (int, float)) and 0 < v <= 1 for v in f)
                or list(f) != sorted(set(f))
                or f[-1] != 1.0
            ):
                raise ConfigError(
                    "fidelities must be increasing fractions in (0, 1] ending with 1 (the full "
                    f"epochs), at most 16, got {list(f)}"
                )
        # Bounded before anything is allocated (a policy.json is read from disk).
        for name, value, low, high in (
            ("n_features", self.n_features, 0, 100_000),
            ("budget", self.budget, 1, 100_000),
            ("n_bins", self.n_bins, 2, 4096),
            ("history", self.history, 0, 100_000),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ConfigError(
                    f"observation layout: {name} must be an integer in [{low}, {high}], got {value!r}"
                )
        for name, values in self.extra_bins:
            if len(values) > 4096:
                raise ConfigError(f"observation layout: more than 4096 extra bins for {name!r}")
        for key in ("feature_mean", "feature_scale"):
            given = getattr(self, key)
            if given is not None and len(given) != self.n_features:
                raise ConfigError(
                    f"observation layout: {key} has {len(given)} values for {self.n_features} features"
                )

    @cached_property
    def _encoded(self) -> dict[str, np.ndarray]:
        return {}

    def encode(self, config: Mapping[str, Any]) -> np.ndarray:
        """``space.encode(config)`` of a complete configuration, remembered (an episode's
        tokens are rebuilt after every trial)."""
        key = config_key(config)
        found = self._encoded.get(key)
        if found is None:
            if len(self._encoded) >= 100_000:
                self._encoded.clear()
            found = self._encoded[key] = self.space.encode(config)
        return found

    @cached_property
    def params(self) -> list[Parameter]:
        return self.space.chosen

    @cached_property
    def bins(self) -> list[list[Any]]:
        """Each chosen parameter's action values: ``space.bins(name, n_bins)`` plus any
        ``extra_bins`` for it (numeric values merged in order; e.g. a warm start's portfolio
        values, so the policy can play those configurations exactly)."""
        extra = dict(self.extra_bins)
        out = []
        for p in self.params:
            values = self.space.bins(p.name, self.n_bins)
            if p.is_numeric and extra.get(p.name):
                head = [values[0]] if p.has_off else []
                numbers = values[1:] if p.has_off else values
                merged = sorted(
                    {*numbers, *(v for v in extra[p.name] if not (p.has_off and v == p.off))}
                )
                values = head + merged
            out.append(values)
        return out

    @cached_property
    def _param_index(self) -> dict[str, int]:
        return {p.name: i for i, p in enumerate(self.params)}

    @property
    def n_actions(self) -> int:
        return max(len(self.decisions), *(len(b) for b in self.bins))

    @property
    def budget_aware(self) -> bool:
        """Whether trials choose their fidelity (budgets in epochs)."""
        return bool(self.fidelities)

    @cached_property
    def decisions(self) -> list[tuple[str, int]]:
        """The fidelity decision's actions, in order: ``("new", i)``, a new configuration at
        ``fidelities[i]``; ``("continue", i)``, the best trial at ``fidelities[i]`` continued to
        ``fidelities[i + 1]``. Empty for a layout that is not budget-aware."""
        n = len(self.fidelities)
        return [("new", i) for i in range(n)] + [("continue", i) for i in range(n - 1)]

    def level(self, fidelity: float) -> int:
        """The index in :attr:`fidelities` nearest to ``fidelity``."""
        return int(np.argmin([abs(f - fidelity) for f in self.fidelities]))

    def best_at(self, trials: Sequence[tuple[Any, ...]], level: int) -> int | None:
        """The trial to continue from ``fidelities[level]``: the best-scoring one there (the
        earliest on ties), ``None`` when no successful trial is at that level."""
        found = [i for i, t in enumerate(trials) if t[1] is not None and self.level(t[2]) == level]
        return max(found, key=lambda i: (trials[i][1], -i)) if found else None

    def decision_mask(
        self,
        trials: Sequence[tuple[Any, ...]],
        remaining: int,
        full: int,
        *,
        resumable: bool,
    ) -> np.ndarray:
        """Allowed fidelity decisions with ``remaining`` epochs left, for a task of ``full``
        epochs: those whose cost fits (a continuation costs the extra epochs when the backend
        is ``resumable``, else a whole new training). All false: the budget is spent."""
        mask = np.zeros(self.n_actions, dtype=bool)
        for a in range(len(self.decisions)):
            cost = self.decision_cost(trials, a, full, resumable=resumable)
            mask[a] = cost is not None and cost <= remaining
        return mask

    def decision_cost(
        self, trials: Sequence[tuple[Any, ...]], action: int, full: int, *, resumable: bool
    ) -> int | None:
        """The epochs decision ``action`` costs (``None``: nothing to continue, or a
        continuation that would train no further: on a task of few epochs two fidelities can
        round to the same epochs, 1/9 and 1/3 of 4 both to one)."""
        kind, i = self.decisions[action]
        if kind == "new":
            return epochs_at(self.fidelities[i], full)
        if self.best_at(trials, i) is None:
            return None
        target, now = epochs_at(self.fidelities[i + 1], full), epochs_at(self.fidelities[i], full)
        if target <= now:
            return None
        return target - now if resumable else target

    @property
    def trial_width(self) -> int:
        if self.version == 1:
            return self.space.dim + 4
        return self.space.dim + len(_TOKEN_FIELDS) + (1 if self.fidelities else 0)

    @property
    def tokens(self) -> tuple[int, int, int]:
        """Where the trial tokens are: (offset of the first, number of slots, width of each);
        each token's "present" flag is at ``space.dim + TOKEN_PRESENT`` (version 2)."""
        return self.dim - self.history * self.trial_width, self.history, self.trial_width

    @property
    def dim(self) -> int:
        n = len(self.params)
        extra = 2 if self.fidelities else 0  # the decision's slot in block 2, epochs spent
        return (
            self.n_features + n + self.space.dim + n + 4 + extra + self.history * self.trial_width
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_features": self.n_features,
            "budget": self.budget,
            "n_bins": self.n_bins,
            "history": self.history,
            "feature_mean": list(self.feature_mean) if self.feature_mean is not None else None,
            "feature_scale": list(self.feature_scale) if self.feature_scale is not None else None,
            "extra_bins": {name: list(values) for name, values in self.extra_bins},
            "version": self.version,
            "fidelities": list(self.fidelities),
        }

    @classmethod
    def from_dict(cls, space: SearchSpace, data: Mapping[str, Any]) -> ObservationLayout:
        data = dict(data)
        for key in ("feature_mean", "feature_scale"):
            if data.get(key) is not None:
                data[key] = tuple(float(v) for v in data[key])
        data["extra_bins"] = tuple((k, tuple(v)) for k, v in (data.get("extra_bins") or {}).items())
        data.setdefault("version", 1)  # policies saved before version 2 carry no version
        data["fidelities"] = tuple(float(v) for v in data.get("fidelities") or ())
        return cls(space, **data)

    @staticmethod
    def extra_bins_of(
        space: SearchSpace, configs: Sequence[Mapping[str, Any]]
    ) -> tuple[tuple[str, tuple[Any, ...]], ...]:
        """The numeric values of ``configs``, per parameter, as ``extra_bins``."""
        out = []
        for p in space.chosen:
            if p.is_numeric:
                values = sorted(
                    {
                        c[p.name]
                        for c in configs
                        if p.name in c and not (p.has_off and c[p.name] == p.off)
                    }
                )
                if values:
                    out.append((p.name, tuple(values)))
        return tuple(out)

    @staticmethod
    def normalisation(
        features: Sequence[np.ndarray],
    ) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Mean and scale (twice the standard deviation, at least 0.1) of training tasks' features."""
        f = np.stack([np.asarray(x, dtype=np.float64).reshape(-1) for x in features])
        return tuple(f.mean(0).tolist()), tuple(np.maximum(2 * f.std(0), 0.1).tolist())

    # -- stepping through a configuration -----------------------------------------------------
    def advance(self, partial: dict[str, Any], start: int) -> int | None:
        """Fill fixed parameters from position ``start`` in ``space.parameters`` on; return the
        position of the next parameter to choose, or ``None`` when the configuration is complete."""
        params = self.space.parameters
        for i in range(start, len(params)):
            p = params[i]
            if not self.space.is_active(p.name, partial):
                continue
            if p.kind == "fixed":
                partial[p.name] = p.default
                continue
            return i
        return None

    def mask(self, position: int | None) -> np.ndarray:
        mask = np.zeros(self.n_actions, dtype=bool)
        if position is None:
            mask[0] = True  # no choice pending (episode over): any action is a no-op
            return mask
        if position == DECIDE:
            raise ValueError("the fidelity decision's mask depends on the budget: decision_mask")
        k = self._param_index[self.space.parameters[position].name]
        mask[: len(self.bins[k])] = True
        return mask

    def value_of(self, position: int, action: int) -> Any:
        """The value of bin ``action`` for the parameter at ``position`` (out-of-range actions,
        from agents that ignore masks, wrap around)."""
        bins = self.bins[self._param_index[self.space.parameters[position].name]]
        return bins[int(action) % len(bins)]

    def action_of(self, name: str, value: Any) -> int:
        """The bin nearest to ``value`` (exact for categorical values)."""
        p = self.space[name]
        bins = self.bins[self._param_index[name]]
        if p.kind == "categorical":
            return next(i for i, b in enumerate(bins) if _same(b, value))
        if p.has_off:
            if _same(value, p.off):
                return 0
            units = [p._to_unit(float(b)) for b in bins[1:]]
            return 1 + int(np.argmin([abs(u - p._to_unit(float(value))) for u in units]))
        units = [p._to_unit(float(b)) for b in bins]
        return int(np.argmin([abs(u - p._to_unit(float(value))) for u in units]))

    # -- observations -------------------------------------------------------------------------
    def observe(
        self,
        features: np.ndarray,
        position: int | None,
        partial: Mapping[str, Any],
        trials: Sequence[tuple[Mapping[str, Any], float | None]],
    ) -> np.ndarray:
        """The observation for choosing the parameter at ``position`` given ``trials`` (config,
        chance-adjusted score or ``None`` for failed), oldest first."""
        return self.compose(
            self.features_block(features), position, partial, self.trials_block(trials)
        )

    def features_block(self, features: np.ndarray) -> np.ndarray:
        """Block 1: the task's features, normalised (constant over an episode)."""
        features = np.asarray(features, dtype=np.float32).reshape(-1)
        if features.shape != (self.n_features,):
            raise ConfigError(f"expected {self.n_features} task features, got {features.shape[0]}")
        if self.feature_mean is not None and self.feature_scale is not None:
            mean = np.asarray(self.feature_mean, dtype=np.float32)
            features = (features - mean) / np.asarray(self.feature_scale, dtype=np.float32)
        return features

    def trials_block(self, trials: Sequence[tuple[Any, ...]], spent: float = 0.0) -> np.ndarray:
        """Blocks 5 and 6: the summary and the trials (constant within a trial). Budget-aware:
        ``spent`` is the fraction of the episode's epochs spent, trials carry their fidelity."""
        scores = [t[1] for t in trials if t[1] is not None]
        best = max(scores) if scores else 0.0
        summary = np.array(
            [
                min(len(trials) / self.budget, 1.0),
                best,
                1.0 if scores else 0.0,
                (len(trials) - len(scores)) / max(len(trials), 1),
            ],
            dtype=np.float32,
        )
        if self.fidelities:
            summary = np.append(summary, np.float32(spent))
        if self.version == 1:
            recent = self._recent_v1(trials, best)
        else:
            recent = self._tokens(trials, scores, best)
        return np.concatenate([summary, recent.reshape(-1)])

    def _recent_v1(
        self, trials: Sequence[tuple[Mapping[str, Any], float | None]], best: float
    ) -> np.ndarray:
        recent = np.zeros((self.history, self.trial_width), dtype=np.float32)
        for row, (config, score, *_) in enumerate(
            reversed(trials[-self.history :] if self.history else [])
        ):
            recent[row, : self.space.dim] = self.space.encode(config)
            if score is None:
                recent[row, -2] = 1.0
            else:
                recent[row, -4] = score
                recent[row, -3] = score - best
            recent[row, -1] = 1.0
        return recent

    def _tokens(
        self,
        trials: Sequence[tuple[Any, ...]],
        scores: list[float],
        best: float,
    ) -> np.ndarray:
        tokens = np.zeros((self.history, self.trial_width), dtype=np.float32)
        kept = self.kept(trials)
        ok = np.asarray(scores, dtype=np.float64)
        spread = ok.std() if len(ok) > 1 else 0.0
        mean = ok.mean() if len(ok) else 0.0
        d = self.space.dim
        for row, i in enumerate(kept):
            config, score = trials[i][0], trials[i][1]
            tokens[row, :d] = self.encode(config)
            token = tokens[row, d:]
            if score is None:
                token[TOKEN_FAILED] = 1.0
            else:
                token[0] = score
                token[1] = (score - mean) / spread if spread > 1e-9 else 0.0
                token[2] = (ok < score).sum() / (len(ok) - 1) if len(ok) > 1 else 1.0
                token[3] = 1.0 if score >= best else 0.0
                token[4] = score - best
            token[TOKEN_PRESENT] = 1.0
            token[7] = i / self.budget
            if self.fidelities:
                token[8] = trials[i][2] if len(trials[i]) > 2 else 1.0
        return tokens

    def kept(self, trials: Sequence[tuple[Any, ...]]) -> list[int]:
        """Indices of the trials the version-2 slots show, in order: all of them while they fit;
        beyond, the best ``history // 2`` and the most recent others."""
        n = len(trials)
        if n <= self.history:
            return list(range(n))
        n_best = self.history // 2
        ranked = sorted(range(n), key=lambda i: (trials[i][1] is None, -(trials[i][1] or 0.0), -i))
        best = set(ranked[:n_best])
        recent = [i for i in range(n - 1, -1, -1) if i not in best][: self.history - n_best]
        return sorted(best | set(recent))

    def replay(
        self, features: np.ndarray, trials: np.ndarray, config: Mapping[str, Any]
    ) -> tuple[list[np.ndarray], list[np.ndarray], list[int]]:
        """Observations, masks and actions (nearest bins) that produce ``config``, given a
        :meth:`features_block` and a :meth:`trials_block`: the steps an expert would take."""
        obs, masks, actions = [], [], []
        partial: dict[str, Any] = {}
        if self.fidelities:  # a new configuration at full fidelity
            obs.append(self.compose(features, DECIDE, partial, trials))
            mask = np.zeros(self.n_actions, dtype=bool)
            mask[: len(self.decisions)] = True
            masks.append(mask)
            actions.append(self.decisions.index(("new", len(self.fidelities) - 1)))
        position = self.advance(partial, 0)
        while position is not None:
            name = self.space.parameters[position].name
            obs.append(self.compose(features, position, partial, trials))
            masks.append(self.mask(position))
            action = self.action_of(name, config.get(name, self.space[name].default))
            actions.append(action)
            partial[name] = self.value_of(position, action)
            position = self.advance(partial, position + 1)
        return obs, masks, actions

    def compose(
        self,
        features: np.ndarray,
        position: int | None,
        partial: Mapping[str, Any],
        trials: np.ndarray,
    ) -> np.ndarray:
        """An observation from a :meth:`features_block` and a :meth:`trials_block` (the per-step
        part, the current parameter and the partial configuration, is built here)."""
        current = np.zeros(len(self.params) + (1 if self.fidelities else 0), dtype=np.float32)
        if position == DECIDE:
            current[-1] = 1.0
        elif position is not None:
            current[self._param_index[self.space.parameters[position].name]] = 1.0
        unset = np.array([0.0 if p.name in partial else 1.0 for p in self.params], dtype=np.float32)
        obs = np.concatenate([features, current, self.space.encode(partial), unset, trials])
        return np.clip(obs, -OBS_BOUND, OBS_BOUND).astype(np.float32)
