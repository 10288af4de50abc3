"""``Policy``: a meta-trained policy network and everything needed to use it on a new task.

Saved as ``policy.safetensors`` (weights) and ``policy.json`` (network description, search space,
observation layout, reward, training tasks, versions, checksums; see :mod:`hporl._policy_files`).
Loading rebuilds the network from JSON and reads the weights with safetensors: nothing is
unpickled. :class:`~hporl.sampler.PolicySampler` puts a policy into an optuna study.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from hporl import _policy_files
from hporl._policy_files import META, WEIGHTS
from hporl.agents import (
    ALGORITHMS,
    HistoryExtractor,
    action_logits,
    policy_class,
    sb3_policy_kwargs,
)
from hporl.backends import TrialResult
from hporl.exceptions import HporlError, PolicyError
from hporl.observation import DECIDE, OBS_BOUND, ObservationLayout, epochs_at, trial_score
from hporl.space import SearchSpace, config_key
from hporl.tasks import Task, feature_set, feature_sets

__all__ = ["Policy", "TrialChoice"]

History = Sequence[tuple[Mapping[str, Any], "TrialResult | float | None"]]
"""Trials on a task so far, oldest first: (config, TrialResult, or raw metric value (higher is
better), or ``None`` for a failed trial)."""


@dataclass(frozen=True)
class TrialChoice:
    """A budget-aware policy's next trial (see :meth:`Policy.suggest_trial`).

    Attributes:
        config: the configuration to train.
        fidelity: the fraction of the full epochs to train it for.
        epochs: those epochs.
        continues: the index (in the history given) of the trial this one continues to a
            higher fidelity, ``None`` for a new configuration.
        cost: the epochs it spends (a continuation on a resumable backend: the extra ones).
    """

    config: dict[str, Any]
    fidelity: float
    epochs: int
    continues: int | None
    cost: int


class Policy:
    """A trained policy: ``suggest(task, history)`` proposes the next configuration; a
    budget-aware one (:attr:`budget_aware`) also how long to train it, ``suggest_trial``."""

    def __init__(
        self,
        network: torch.nn.Module,
        *,
        algorithm: str,
        policy_kwargs: dict[str, Any],
        layout: ObservationLayout,
        reward: str = "best_metric",
        feature_names: Sequence[str] | None = None,
        training_tasks: Sequence[str] = (),
        meta: Mapping[str, Any] | None = None,
    ) -> None:
        if algorithm not in ALGORITHMS:
            raise PolicyError(f"unknown algorithm {algorithm!r}; expected one of {ALGORITHMS}")
        self.network = network.eval()
        self.algorithm = algorithm
        self.policy_kwargs = dict(policy_kwargs)
        self.layout = layout
        self.reward = reward
        self.feature_names = list(feature_names) if feature_names is not None else None
        self.training_tasks = list(training_tasks)
        self.meta = dict(meta or {})

    @property
    def space(self) -> SearchSpace:
        return self.layout.space

    @property
    def budget(self) -> int:
        return self.layout.budget

    @property
    def budget_aware(self) -> bool:
        """Whether the policy chooses each trial's fidelity (meta-trained with budgets in
        epochs); :attr:`fidelities` are the fractions of the full epochs it may choose."""
        return self.layout.budget_aware

    @property
    def fidelities(self) -> tuple[float, ...]:
        return self.layout.fidelities

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_agent(
        cls,
        agent: Any,
        layout: ObservationLayout,
        *,
        algorithm: str,
        policy_kwargs: dict[str, Any],
        **kwargs: Any,
    ) -> Policy:
        """Wrap the network of a trained SB3 agent (copied to the CPU)."""
        network = cls._new_network(algorithm, policy_kwargs, layout)
        network.load_state_dict({k: v.detach().cpu() for k, v in agent.policy.state_dict().items()})
        return cls(
            network, algorithm=algorithm, policy_kwargs=policy_kwargs, layout=layout, **kwargs
        )

    @staticmethod
    def _new_network(
        algorithm: str, policy_kwargs: dict[str, Any], layout: ObservationLayout
    ) -> torch.nn.Module:
        obs_space = gym.spaces.Box(-OBS_BOUND, OBS_BOUND, shape=(layout.dim,), dtype=np.float32)
        act_space = gym.spaces.Discrete(layout.n_actions)
        return policy_class(algorithm)(
            obs_space, act_space, lambda _: 0.0, **sb3_policy_kwargs(policy_kwargs)
        )

    def save(self, directory: str | Path) -> Path:
        """Write ``policy.safetensors``, then ``policy.json`` with the checksums of both (each
        to a temporary name, then renamed)."""
        state = {}
        seen: set[int] = set()
        for k, v in self.network.state_dict().items():
            if v.data_ptr() in seen:  # a shared extractor's aliases: stored once, see _load_state
                continue
            seen.add(v.data_ptr())
            state[k] = v.detach().cpu().contiguous()
        content = {
            "algorithm": self.algorithm,
            "policy_kwargs": self.policy_kwargs,
            "layout": self.layout.to_dict(),
            "space": self.space.to_dict(),
            "reward": self.reward,
            "feature_names": self.feature_names,
            "training_tasks": self.training_tasks,
            "meta": self.meta,
        }
        return _policy_files.write(Path(directory), state, content)

    @classmethod
    def load(cls, directory: str | Path, *, space: SearchSpace | None = None) -> Policy:
        """Read a saved policy. ``directory`` may also be a meta-train output holding ``policy/``.

        Raises:
            PolicyError: missing or edited files, or (with ``space``) a space it was not trained for.
        """
        directory = _policy_files.locate(Path(directory))
        meta = _policy_files.read_meta(directory)
        try:
            layout = ObservationLayout.from_dict(
                SearchSpace.from_dict(meta["space"]), meta["layout"]
            )
            network = cls._new_network(meta["algorithm"], meta["policy_kwargs"], layout)
        except (KeyError, TypeError, ValueError, AttributeError, HporlError) as err:
            if isinstance(err, PolicyError):
                raise
            raise PolicyError(f"{directory / META} is incomplete or edited: {err}") from None
        state = _policy_files.read_weights(directory, meta)
        try:
            _load_state(network, state)
        except RuntimeError as err:
            first = str(err).splitlines()[0]
            raise PolicyError(f"{directory / WEIGHTS} does not match {META}: {first}") from None
        policy = cls(
            network,
            algorithm=meta["algorithm"],
            policy_kwargs=meta["policy_kwargs"],
            layout=layout,
            reward=meta.get("reward", "best_metric"),
            feature_names=meta.get("feature_names"),
            training_tasks=meta.get("training_tasks", []),
            meta={**meta.get("meta", {}), "hporl_version": meta.get("hporl_version")},
        )
        if space is not None:
            policy.check_space(space)
        return policy

    @classmethod
    def default(cls) -> Policy:
        """The policy that ships with hporl (``optimizer`` space), loaded and checked as
        :meth:`load` does. How it was trained: ``hporl/policies/default/TRAINING.json``
        (made by ``scripts/train_default_policy.py``).

        Raises:
            PolicyError: the packaged files are missing or damaged.
        """
        return cls.load(_policy_files.default_policy_dir())

    def check_space(self, space: SearchSpace) -> None:
        """Raise :class:`PolicyError` naming the first difference between ``space`` and the policy's."""
        mine = {p.name: p.to_dict() for p in self.space}
        theirs = {p.name: p.to_dict() for p in space}
        for name in mine:
            if name not in theirs:
                raise PolicyError(
                    f"the policy was trained with parameter {name!r}, which the space lacks"
                )
        for name in theirs:
            if name not in mine:
                raise PolicyError(
                    f"the space has parameter {name!r}, which the policy was not trained for"
                )
        for name, spec in mine.items():
            order = [
                "type",
                "value",
                "choices",
                "low",
                "high",
                "log",
                "off_value",
                "when",
                "default",
            ]
            keys = set(spec) | set(theirs[name])
            for key in [k for k in order if k in keys] + sorted(keys - set(order)):
                if key == "description":
                    continue
                if spec.get(key) != theirs[name].get(key):
                    raise PolicyError(
                        f"parameter {name!r}: the policy was trained with {key}={spec.get(key)!r}, "
                        f"the space has {key}={theirs[name].get(key)!r}"
                    )

    def copy(self) -> Policy:
        return copy.deepcopy(self)

    # -- acting -------------------------------------------------------------------------------
    def task_features(self, task: Any) -> np.ndarray:
        """The task features the policy reads for ``task``.

        A :class:`~hporl.Task` gets them computed by the feature set named by
        :attr:`feature_names` (see :func:`hporl.tasks.register_feature_set`); any other task
        object (the simulated tasks it was trained on) gives its own ``features()``; an array is
        taken as the features themselves.

        Raises:
            PolicyError: the policy's features are no known feature set, or their number differs.
        """
        if isinstance(task, Task) and self.feature_names is not None:
            found = feature_set(self.feature_names)
            if found is None:
                known = ", ".join(repr(s.name) for s in feature_sets())
                raise PolicyError(
                    f"the policy reads task features {self.feature_names}, which no feature set "
                    f"computes for a Task (known: {known}); register them with "
                    "hporl.tasks.register_feature_set, or pass the feature vector instead"
                )
            raw = found.compute(task)
        else:
            raw = task.features() if hasattr(task, "features") else task
        f = np.asarray(raw, dtype=np.float32).reshape(-1)
        if f.shape[0] != self.layout.n_features:
            raise PolicyError(
                f"the policy expects {self.layout.n_features} task features, the task gives {f.shape[0]}"
            )
        return f

    def _trials(self, task: Any, history: History) -> list[tuple[dict[str, Any], float | None]]:
        chance = float(getattr(task, "chance_metric", 0.0))
        return [(dict(c), trial_score(r, chance)) for c, r in history]

    def suggest(
        self,
        task: Any,
        history: History = (),
        *,
        deterministic: bool = True,
        rng: np.random.Generator | int | None = None,
        avoid: set[str] | None = None,
        max_retries: int = 20,
    ) -> dict[str, Any]:
        """The next configuration for ``task`` (a Task, or its feature vector) given ``history``.

        ``deterministic`` takes the most likely bin at every step; otherwise bins are sampled.
        A configuration whose key is in ``avoid`` (see :func:`config_key`) is redrawn by
        sampling, and after ``max_retries`` draws a uniformly random configuration is returned.
        """
        return self.suggest_scored(
            task,
            self._trials(task, history),
            deterministic=deterministic,
            rng=rng,
            avoid=avoid,
            max_retries=max_retries,
        )

    def suggest_scored(
        self,
        task: Any,
        trials: list[tuple[dict[str, Any], float | None]],
        *,
        deterministic: bool = True,
        rng: np.random.Generator | int | None = None,
        avoid: Collection[str] | None = None,
        max_retries: int = 20,
    ) -> dict[str, Any]:
        """:meth:`suggest` from ``trials`` already scored: (config, chance-adjusted score from
        :func:`~hporl.observation.trial_score`, ``None`` for failed), oldest first. For callers
        that keep the scores as trials arrive (:class:`~hporl.PolicySampler`) instead of
        scoring the whole history at every proposal."""
        rng = np.random.default_rng(rng)
        features = self.task_features(task)
        block = self.layout.trials_block(trials)  # once, not per redraw
        for attempt in range(max_retries + 1):
            config, _ = self._act(
                features,
                trials,
                deterministic=deterministic and attempt == 0,
                rng=rng,
                trials_block=block,
            )
            if not avoid or config_key(config) not in avoid:
                return config
        for _ in range(100):
            config = self.space.sample(rng)
            if config_key(config) not in avoid:
                return config
        return config

    def suggest_trial(
        self,
        task: Any,
        history: Sequence[tuple[Mapping[str, Any], TrialResult | float | None, float]] = (),
        *,
        epochs_left: int,
        full_epochs: int,
        resumable: bool = False,
        budget_epochs: int | None = None,
        deterministic: bool = True,
        rng: np.random.Generator | int | None = None,
        avoid: set[str] | None = None,
        max_retries: int = 20,
    ) -> TrialChoice | None:
        """A budget-aware policy's next trial: a new configuration and its fidelity, or a
        trial of ``history`` continued to the next fidelity; ``None`` when nothing fits in
        ``epochs_left``.

        Args:
            history: trials so far, oldest first: (config, result or metric or ``None``,
                fidelity); a continued trial appears once, at its latest fidelity.
            full_epochs: the epochs of a full training on ``task``.
            resumable: a continuation costs only the extra epochs (the backend resumes, see
                :attr:`hporl.backends.Backend.resumable`); else a whole training.
            budget_epochs: the run's epoch budget (for the fraction spent the policy reads;
                default: ``epochs_left`` plus what the history cost).
            avoid: keys of configurations a new trial must not repeat (redrawn by sampling).

        Raises:
            PolicyError: the policy is not budget-aware.
        """
        if not self.budget_aware:
            raise PolicyError(
                "this policy was meta-trained with budgets in trials, not epochs: it does not "
                "choose fidelities (meta-train with budget_unit: epochs)"
            )
        rng = np.random.default_rng(rng)
        chance = float(getattr(task, "chance_metric", 0.0))
        trials = [(dict(c), trial_score(r, chance), float(f)) for c, r, f in history]
        mask = self.layout.decision_mask(trials, epochs_left, full_epochs, resumable=resumable)
        if not mask.any():
            return None
        if budget_epochs is None:
            spent = sum(epochs_at(t[2], full_epochs) for t in trials)
            budget_epochs = spent + epochs_left
        spent_fraction = 1.0 - epochs_left / max(budget_epochs, 1)
        features = self.task_features(task)
        for attempt in range(max_retries + 1):
            config, action = self._act(
                features,
                trials,
                deterministic=deterministic and attempt == 0,
                rng=rng,
                decision_mask=mask,
                spent=spent_fraction,
            )
            kind, level = self.layout.decisions[action]
            if kind == "continue":
                j = self.layout.best_at(trials, level)
                target = self.fidelities[level + 1]
                epochs = epochs_at(target, full_epochs)
                cost = self.layout.decision_cost(trials, action, full_epochs, resumable=resumable)
                return TrialChoice(dict(trials[j][0]), target, epochs, j, int(cost))
            if not avoid or config_key(config) not in avoid or attempt == max_retries:
                epochs = epochs_at(self.fidelities[level], full_epochs)
                return TrialChoice(config, self.fidelities[level], epochs, None, epochs)
        raise AssertionError("unreachable")  # pragma: no cover

    @torch.no_grad()
    def _act(
        self,
        features: np.ndarray,
        trials: list[tuple[Any, ...]],
        *,
        deterministic: bool,
        rng: np.random.Generator,
        decision_mask: np.ndarray | None = None,
        spent: float = 0.0,
        trials_block: np.ndarray | None = None,
    ) -> tuple[dict[str, Any], int | None]:
        """A configuration from the network, one parameter at a time; budget-aware (with
        ``decision_mask``), first the fidelity decision, returned with it (a continuation
        returns no configuration: ``{}``). ``trials_block``: ``trials``'s, when the caller has
        it already."""
        partial: dict[str, Any] = {}
        position = self.layout.advance(partial, 0)
        if decision_mask is not None:
            position = DECIDE
        decision: int | None = None
        feature_block = self.layout.features_block(features)
        if trials_block is None:
            trials_block = self.layout.trials_block(trials, spent)
        extractor = getattr(self.network, "pi_features_extractor", None)
        fast = isinstance(extractor, HistoryExtractor) and self.algorithm != "dqn"
        encoded: Any = None
        while position is not None:
            obs = self.layout.compose(feature_block, position, partial, trials_block)
            batch = torch.from_numpy(obs)[None]
            if fast:  # the trial tokens are encoded once per configuration, not per parameter
                if encoded is None:
                    encoded = extractor.encode_tokens(batch)
                latent = self.network.mlp_extractor.forward_actor(extractor.combine(batch, encoded))
                logits = self.network.action_net(latent)[0].double().numpy()
            else:
                logits = action_logits(self.network, self.algorithm, batch)[0].double().numpy()
            mask = decision_mask if position == DECIDE else self.layout.mask(position)
            logits = np.where(mask, logits, -np.inf)
            if deterministic:
                action = int(np.argmax(logits))
            else:
                p = np.exp(logits - logits.max())
                action = int(rng.choice(len(p), p=p / p.sum()))
            if position == DECIDE:
                decision = action
                if self.layout.decisions[action][0] == "continue":
                    return {}, decision
                position = self.layout.advance(partial, 0)
                continue
            name = self.space.parameters[position].name
            partial[name] = self.layout.value_of(position, action)
            position = self.layout.advance(partial, position + 1)
        return self.space.validate(partial), decision

    def fine_tune(
        self, task: Any, history: History, *, steps: int = 10, lr: float = 1e-3
    ) -> Policy:
        """A copy updated on ``task``'s trials (this one is left as it was).

        Policy gradient on the observed trials only (no new evaluation): each trial's action
        sequence, replayed in the context it was proposed in, is made more likely in proportion
        to its standardised score (failed trials count as the worst).
        """
        tuned = self.copy()
        features = self.task_features(task)
        trials = self._trials(task, history)
        if len(trials) < 2:
            return tuned
        scores = np.array([-1.0 if s is None else s for _, s in trials])
        if scores.std() < 1e-9:
            return tuned
        adv = (scores - scores.mean()) / scores.std()
        obs, masks, actions, weights = [], [], [], []
        feature_block = self.layout.features_block(features)
        for i, (config, _) in enumerate(trials):
            o, m, a = self.layout.replay(
                feature_block, self.layout.trials_block(trials[:i]), config
            )
            obs += o
            masks += m
            actions += a
            weights += [adv[i]] * len(a)
        obs_t = torch.from_numpy(np.stack(obs))
        mask_t = torch.from_numpy(np.stack(masks))
        act_t = torch.tensor(actions)
        w_t = torch.tensor(weights, dtype=torch.float32)
        tuned.network.train()
        opt = torch.optim.Adam(tuned.network.parameters(), lr=lr)
        for _ in range(steps):
            logits = action_logits(tuned.network, tuned.algorithm, obs_t).masked_fill(
                ~mask_t, -math.inf
            )
            logp = torch.log_softmax(logits, dim=1).gather(1, act_t[:, None])[:, 0]
            loss = -(w_t * logp).sum() / len(trials)
            opt.zero_grad()
            loss.backward()
            opt.step()
        tuned.network.eval()
        tuned.meta = {
            **tuned.meta,
            "fine_tuned_on": getattr(task, "name", None),
            "fine_tune_trials": len(trials),
        }
        return tuned

    def __repr__(self) -> str:
        return (
            f"Policy({self.algorithm}, space={self.space.name or 'custom'} ({len(self.space.chosen)} parameters), "
            + (
                f"B={self.budget} full trainings of epochs (budget-aware), "
                if self.budget_aware
                else f"K={self.budget}, "
            )
            + f"reward={self.reward}, trained on {len(self.training_tasks)} tasks)"
        )


def _load_state(network: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """``network.load_state_dict(state)`` where ``state`` stores each shared tensor once (an SB3
    policy's ``features_extractor`` is also its ``pi_``/``vf_features_extractor``): a key left
    out is filled from a stored key that is the same tensor in ``network``."""
    own = network.state_dict()
    by_pointer: dict[int, str] = {}
    for key in state:
        if key in own:
            by_pointer.setdefault(own[key].data_ptr(), key)
    full = dict(state)
    for key, tensor in own.items():
        if key not in full and tensor.data_ptr() in by_pointer:
            full[key] = state[by_pointer[tensor.data_ptr()]]
    network.load_state_dict(full)
