"""The real trials of trial stores as arrays, for fitting a :class:`~hporl.backends.SurrogateBackend`.

A trial is usable when its study names the task's meta-features (``hporl_features``, recorded by
:meth:`hporl.store.TrialStore.study`; a study made before that is matched to a built-in task by
its fingerprint when it can be), its configuration lies in the space, and its result is ``ok``
(its curve) or ``diverged`` (its curve, then the epoch it diverged in). Failed trials, trials
without a result, and repeats of the same evaluation (a cached trial recorded again) are
skipped and counted.

Scores are normalised per task as the rewards do (:func:`hporl.rewards.normalized_score`:
``(metric - chance) / (1 - chance)`` clipped to [-1, 1]), so that tasks are comparable.
"""

from __future__ import annotations

import logging
import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hporl.exceptions import ConfigError, SearchSpaceError
from hporl.space import SearchSpace

__all__ = ["TrialTable", "complete_config", "data_group", "read_trials"]

logger = logging.getLogger(__name__)


_SAME_DATA = {"digits_linear": "digits", "digits_image": "digits"}
"""Built-in tasks that train on another one's data set (the held-out folds keep them together)."""


def data_group(label: str) -> str:
    """The data set of a task label: ``digits+mlp64`` (a model variant), ``digits#2`` (another
    fingerprint of the same name) and ``digits_linear`` are all ``digits``, so tasks held out from
    a fit share no data with the tasks it was fitted on."""
    base = label.split("#", 1)[0].split("+", 1)[0]
    return _SAME_DATA.get(base, base)


def complete_config(space: SearchSpace, config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` in ``space`` with its missing active parameters at their defaults (what
    :class:`~hporl.backends.TorchBackend` trains with), validated.

    Raises:
        SearchSpaceError: a key outside the space, or a value outside its range.
    """
    if not isinstance(config, Mapping):
        raise SearchSpaceError(f"a configuration must be a mapping, got {type(config).__name__}")
    filled: dict[str, Any] = {}
    for p in space.parameters:
        if space.is_active(p.name, filled):
            filled[p.name] = config.get(p.name, p.default)
    extra = [k for k in config if k not in space]
    if extra:
        raise SearchSpaceError(f"parameter {extra[0]!r} is not in the space {space.name!r}")
    return space.validate(filled)  # values of inactive parameters are dropped


@dataclass
class TrialTable:
    """Usable trials, one entry per trial (see the module docstring).

    ``curves[i]`` holds trial ``i``'s normalised validation score per epoch done;
    ``diverged[i]``: it diverged in the epoch after those; ``stopped[i]``: stopped early (a
    partial curve, no full evaluation); ``test[i]``: the normalised test score at its best epoch
    (NaN when unknown); ``seconds[i]``: training seconds per epoch (NaN when unknown).
    """

    space: SearchSpace
    feature_names: list[str]
    tasks: list[str] = field(default_factory=list)
    features: list[np.ndarray] = field(default_factory=list)
    configs: list[np.ndarray] = field(default_factory=list)
    budgets: list[int] = field(default_factory=list)
    curves: list[np.ndarray] = field(default_factory=list)
    diverged: list[bool] = field(default_factory=list)
    stopped: list[bool] = field(default_factory=list)
    test: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    task_info: dict[str, dict[str, Any]] = field(default_factory=dict)
    skipped: Counter = field(default_factory=Counter)

    def __len__(self) -> int:
        return len(self.tasks)

    def subset(self, index: Iterable[int]) -> TrialTable:
        """The trials at ``index`` (in that order)."""
        index = list(index)
        out = TrialTable(self.space, self.feature_names, task_info=self.task_info)
        for name in (
            "tasks",
            "features",
            "configs",
            "budgets",
            "curves",
            "diverged",
            "stopped",
            "test",
            "seconds",
        ):
            values = getattr(self, name)
            setattr(out, name, [values[i] for i in index])
        return out

    def score(self, i: int) -> float | None:
        """Trial ``i``'s score as the ``best_metric`` reward sees it: its best normalised
        validation score, -1 when it diverged; ``None`` when it was stopped early."""
        if self.stopped[i]:
            return None
        if self.diverged[i] or len(self.curves[i]) == 0:
            return -1.0
        return float(np.max(self.curves[i]))


def _builtin_features(name: str, fingerprint: str, budgets: Iterable[int]) -> dict[str, Any]:
    """The description of a study made before features were recorded, when its task is a
    built-in one (matched by fingerprint, with its default or a trial's epoch budget)."""
    from hporl.store import _task_description
    from hporl.tasks import available, builtin

    base = name.split("+", 1)[0]
    if base not in available() and not re.fullmatch(r"synth_(clf|reg)_\d+", base):
        return {}
    if base != name:
        return {}  # a variant with another model: its model is not known here
    for epochs in [None, *sorted(set(budgets))]:
        try:
            task = builtin(name, epochs=epochs)
        except Exception:
            return {}
        if task.fingerprint == fingerprint:
            return _task_description(task)
    return {}


def read_trials(
    storages: Sequence[Any], space: SearchSpace, *, feature_names: Sequence[str] | None = None
) -> TrialTable:
    """Read the usable trials of every study in ``storages`` (URLs, SQLite paths or
    :class:`~hporl.store.TrialStore`).

    Args:
        feature_names: the task features to keep, in order (default: those of the first study
            that records features, less ``log_epochs``, which the trial's budget replaces).

    Raises:
        StoreError: a storage cannot be opened.
        ConfigError: a SQLite path that does not exist (nothing to read), or studies that
            record different feature names.
    """
    from optuna.trial import TrialState

    from hporl.store import FINISHED, KEY, RESULT, TASK_FEATURES, TrialStore

    stores = []
    for s in storages:
        if isinstance(s, TrialStore):
            stores.append(s)
            continue
        text = str(s)
        if "://" not in text and not Path(text).expanduser().is_file():
            raise ConfigError(f"storage {text!r}: no such file (a trial store to read)")
        stores.append(TrialStore(text))
    table = TrialTable(space, list(feature_names) if feature_names is not None else [])
    seen: set[str] = set()
    for store in stores:
        studies = store._retrying(store.storage.get_all_studies, "cannot be read")
        for study in studies:
            attrs = dict(study.user_attrs)
            name, fingerprint = attrs.get("hporl_task"), attrs.get("hporl_fingerprint")
            trials = store._retrying(
                lambda store=store, study=study: store.storage.get_all_trials(
                    study._study_id, deepcopy=False, states=FINISHED
                ),
                "cannot be read",
            )
            trials = [t for t in trials if RESULT in t.user_attrs]
            if not trials:
                continue
            if not isinstance(name, str) or not isinstance(fingerprint, str):
                table.skipped["study without a task fingerprint"] += len(trials)
                continue
            if TASK_FEATURES not in attrs:
                budgets = [int(t.user_attrs.get("epochs", 0) or 0) for t in trials]
                attrs |= _builtin_features(name, fingerprint, [b for b in budgets if b > 0])
            if TASK_FEATURES not in attrs:
                table.skipped["study without task features"] += len(trials)
                continue
            names = [str(n) for n in attrs.get("hporl_feature_names", [])]
            if not table.feature_names:
                table.feature_names = [n for n in names if n != "log_epochs"]
            missing = [n for n in table.feature_names if n not in names]
            if missing:
                raise ConfigError(
                    f"study {study.study_name!r} records task features without {missing[0]!r}; "
                    "fit a surrogate on stores written by one hporl version"
                )
            values = dict(zip(names, attrs[TASK_FEATURES], strict=False))
            features = np.array([values[n] for n in table.feature_names], dtype=np.float32)
            label = _label(table, name, fingerprint)
            table.task_info.setdefault(
                label,
                {
                    "name": name,
                    "fingerprint": fingerprint,
                    "metric": attrs.get("hporl_metric"),
                    "task_type": attrs.get("hporl_task_type"),
                },
            )
            for t in trials:
                key = t.user_attrs.get(KEY)
                if key is not None:
                    if key in seen:
                        table.skipped["repeat of a stored evaluation"] += 1
                        continue
                    seen.add(key)
                _add(table, label, features, t.user_attrs, pruned=t.state == TrialState.PRUNED)
    return table


def _label(table: TrialTable, name: str, fingerprint: str) -> str:
    """The task's label: its name, made unique when two fingerprints share it."""
    label = name
    n = 2
    while label in table.task_info and table.task_info[label]["fingerprint"] != fingerprint:
        label = f"{name}#{n}"
        n += 1
    return label


def _add(
    table: TrialTable,
    label: str,
    features: np.ndarray,
    attrs: Mapping[str, Any],
    *,
    pruned: bool,
) -> None:
    from hporl.backends._base import TrialResult
    from hporl.store import PRUNED_EPOCH

    try:
        result = TrialResult.from_dict(attrs["hporl_result"])
    except (TypeError, ValueError, KeyError):
        table.skipped["unreadable result"] += 1
        return
    if result.status == "failed":
        table.skipped["failed"] += 1
        return
    config = attrs.get("hporl_config", result.config)
    try:
        config = complete_config(table.space, config)
    except SearchSpaceError:
        table.skipped["configuration outside the space"] += 1
        return
    budget = int(attrs.get("epochs") or result.epochs or len(result.curve))
    # Here, not at the top: hporl.rewards imports hporl.backends, whose package imports this
    # module (``from hporl import HPOEnv`` in a fresh interpreter failed on the cycle).
    from hporl.rewards import normalized_score

    chance = float(result.chance_metric)
    curve = np.array([normalized_score(v, chance) for v in result.curve], dtype=np.float64)
    if budget < 1 or len(curve) > budget or (result.status == "ok" and len(curve) == 0):
        table.skipped["inconsistent curve"] += 1
        return
    stopped = bool(result.stopped_early or pruned or PRUNED_EPOCH in attrs)
    stopped = stopped or (result.status == "ok" and len(curve) < budget)
    done = len(curve)
    per_epoch = result.wall_time / done if done and result.status == "ok" else math.nan
    test = math.nan
    if result.status == "ok" and not stopped and result.test_metric is not None:
        test = normalized_score(result.test_metric, chance)
    table.tasks.append(label)
    table.features.append(features)
    table.configs.append(table.space.encode(config))
    table.budgets.append(budget)
    table.curves.append(curve)
    table.diverged.append(result.status == "diverged")
    table.stopped.append(stopped)
    table.test.append(test)
    table.seconds.append(per_epoch if per_epoch > 0 else math.nan)
