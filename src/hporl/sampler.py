"""``PolicySampler``: an optuna sampler whose proposals come from a trained :class:`~hporl.Policy`."""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np
import optuna
from optuna.samplers import BaseSampler, RandomSampler
from optuna.trial import FrozenTrial, TrialState

from hporl.augment import check_space
from hporl.exceptions import HporlError
from hporl.policy import Policy
from hporl.space import config_key

__all__ = ["PolicySampler"]


class PolicySampler(BaseSampler):
    """An optuna sampler that proposes whole configurations from a :class:`Policy`.

    The study's finished trials are the policy's history: a COMPLETE trial's value is the task's
    metric (higher is better for a ``maximize`` study; a ``minimize`` study's values are negated),
    a PRUNED trial counts with its last reported value, a FAIL as failed. Use it with an objective
    that samples ``policy.space.suggest(trial)``; parameters outside the policy's space go to
    ``independent_sampler`` (random by default). Configurations already tried are not proposed
    again.

    Args:
        policy: the trained policy.
        task: the task (or its feature vector) being tuned.
        deterministic: take the most likely bins (else sample them).
        seed: seeds sampling and the independent sampler.

    Raises:
        TaskError: the policy's space has augmentation parameters and ``task`` is not an image
            task (checked here, so that ``tune_model`` refuses it before any training).
    """

    def __init__(
        self,
        policy: Policy,
        *,
        task: Any,
        deterministic: bool = True,
        seed: int | None = None,
        independent_sampler: BaseSampler | None = None,
    ) -> None:
        if hasattr(task, "input_kind"):  # a task, not a feature vector: refuse what cannot apply
            check_space(policy.space, task)
        self.policy = policy
        self.task = task
        self.deterministic = deterministic
        self._rng = np.random.default_rng(seed)
        self._independent = independent_sampler or RandomSampler(seed=seed)
        self._search_space = policy.space.to_optuna()
        # Configurations of finished trials, parsed once: (study id, trial id) -> (config, its
        # key), or None for a trial of other parameters. A finished trial never changes.
        self._finished: dict[tuple[int, int], tuple[dict[str, Any], str] | None] = {}

    def reseed_rng(self) -> None:
        self._rng = np.random.default_rng()
        self._independent.reseed_rng()

    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, Any]:
        return dict(self._search_space)

    def history(self, study: optuna.Study) -> list[tuple[dict[str, Any], float | None]]:
        """The study's finished trials as (config, metric value or ``None``), oldest first.

        A FAIL trial that was retried (optuna's ``RetryHeartbeatStaleTrialCallback`` marks the
        retry with ``system_attrs["failed_trial"]`` and ``"retry_history"``) is left out, since
        its retry stands for it; so is a FAIL trial with the user attribute ``hporl_stale``.
        """
        return [(config, value) for config, value, _ in self._read(study)]

    def _read(self, study: optuna.Study) -> list[tuple[dict[str, Any], float | None, str]]:
        """:meth:`history`, each trial with its :func:`config_key`."""
        sign = -1.0 if study.direction == optuna.study.StudyDirection.MINIMIZE else 1.0
        out: list[tuple[dict[str, Any], float | None, str]] = []
        trials = study.get_trials(deepcopy=False)
        retried: set[int] = set()
        for t in trials:
            if t.system_attrs.get("failed_trial") is not None:
                retried.add(t.system_attrs["failed_trial"])
            retried.update(t.system_attrs.get("retry_history") or ())
        states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
        for t in trials:
            if t.state not in states:
                continue
            if t.state == TrialState.FAIL and (
                t.number in retried or t.user_attrs.get("hporl_stale") is True
            ):
                continue
            parsed = self._config_of(study, t)
            if parsed is None:
                continue  # the objective asked other parameters: not a trial of this space
            config, key = parsed
            if t.state == TrialState.COMPLETE and t.value is not None:
                value: float | None = sign * t.value
            elif t.state == TrialState.PRUNED and t.intermediate_values:
                value = sign * t.intermediate_values[max(t.intermediate_values)]
            else:
                value = None
            out.append((config, value, key))
        return out

    def _config_of(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> tuple[dict[str, Any], str] | None:
        """``trial``'s configuration in the policy's space and its key (``None``: other
        parameters), parsed once per finished trial: the history is read before every proposal."""
        key = (study._study_id, trial._trial_id)
        if key not in self._finished:
            try:
                config = self.policy.space.from_optuna_params(trial.params)
                self._finished[key] = (config, config_key(config))
            except HporlError:
                self._finished[key] = None
        return self._finished[key]

    def propose(self, study: optuna.Study, *, exclude: int | None = None) -> dict[str, Any]:
        """The policy's next configuration for ``study``, given its :meth:`history`: never one
        tried already or under way (RUNNING or WAITING, trial number ``exclude`` aside)."""
        read = self._read(study)
        history = [(config, value) for config, value, _ in read]
        avoid = {key for _, _, key in read}
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING))
        for t in running:
            if t.number != exclude and t.params:
                with contextlib.suppress(HporlError):
                    avoid.add(config_key(self.policy.space.from_optuna_params(t.params)))
        return self.policy.suggest(
            self.task, history, deterministic=self.deterministic, rng=self._rng, avoid=avoid
        )

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, Any]
    ) -> dict[str, Any]:
        if not search_space:
            return {}
        config = self.propose(study, exclude=trial.number)
        params = self.policy.space.optuna_params(config)
        return {k: v for k, v in params.items() if k in search_space}

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: Any
    ) -> Any:
        return self._independent.sample_independent(study, trial, param_name, param_distribution)
