"""``Policy``: a meta-trained policy network and everything needed to use it on a new task.

Saved as ``policy.safetensors`` (weights) and ``policy.json`` (network description, search space,
observation layout, reward, training tasks, versions). Loading rebuilds the network from JSON and
reads the weights with safetensors: nothing is unpickled.

``policy.json`` holds the sha256 of the weights file (``checksums``) and of its own content
(``meta_sha256``: the canonical JSON, ``sort_keys=True``, of every other key), so a truncated,
altered or hand-edited policy is refused before anything is built from it.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import optuna
import torch
from optuna.samplers import BaseSampler, RandomSampler
from optuna.trial import FrozenTrial, TrialState

from hporl._io import atomic_write, sha256_file, write_json
from hporl.agents import ALGORITHMS, policy_class, sb3_policy_kwargs
from hporl.augment import check_space
from hporl.backends import TrialResult
from hporl.exceptions import HporlError, PolicyError
from hporl.observation import OBS_BOUND, ObservationLayout, trial_score
from hporl.space import SearchSpace, config_key

__all__ = ["Policy", "PolicySampler"]

FORMAT_VERSION = 2
"""Version of the saved layout; 2 added the checksums. A policy of another version is refused."""
WEIGHTS = "policy.safetensors"
META = "policy.json"

History = Sequence[tuple[Mapping[str, Any], "TrialResult | float | None"]]
"""Trials on a task so far, oldest first: (config, TrialResult, or raw metric value (higher is
better), or ``None`` for a failed trial)."""


class Policy:
    """A trained policy: ``suggest(task, history)`` proposes the next configuration."""

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
        from safetensors.torch import save_file

        from hporl import __version__

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.network.state_dict().items()}
        meta = {
            "format_version": FORMAT_VERSION,
            "hporl_version": __version__,
            "torch_version": torch.__version__,
            "algorithm": self.algorithm,
            "policy_kwargs": self.policy_kwargs,
            "layout": self.layout.to_dict(),
            "space": self.space.to_dict(),
            "reward": self.reward,
            "feature_names": self.feature_names,
            "training_tasks": self.training_tasks,
            "meta": self.meta,
            "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        atomic_write(
            directory / WEIGHTS, lambda p: save_file(state, str(p), metadata={"format": "pt"})
        )
        meta["checksums"] = {WEIGHTS: sha256_file(directory / WEIGHTS)}
        meta = json.loads(json.dumps(meta, default=str))  # exactly what load will read back
        meta["meta_sha256"] = _meta_sha256(meta)
        write_json(directory / META, meta)
        return directory

    @classmethod
    def load(cls, directory: str | Path, *, space: SearchSpace | None = None) -> Policy:
        """Read a saved policy. ``directory`` may also be a meta-train output holding ``policy/``.

        Raises:
            PolicyError: missing or edited files, or (with ``space``) a space it was not trained for.
        """
        directory = Path(directory)
        if not (directory / META).exists() and (directory / "policy" / META).exists():
            directory = directory / "policy"
        for name in (META, WEIGHTS):
            if not (directory / name).is_file():
                raise PolicyError(f"{directory} is not a policy directory: {name} is missing")
        meta = _read_meta(directory)
        try:
            layout = ObservationLayout.from_dict(
                SearchSpace.from_dict(meta["space"]), meta["layout"]
            )
            network = cls._new_network(meta["algorithm"], meta["policy_kwargs"], layout)
        except (KeyError, TypeError, ValueError, AttributeError, HporlError) as err:
            if isinstance(err, PolicyError):
                raise
            raise PolicyError(f"{directory / META} is incomplete or edited: {err}") from None
        state = _read_weights(directory, meta)
        try:
            network.load_state_dict(state)
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
        return cls.load(default_policy_dir())

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
    def _features(self, task: Any) -> np.ndarray:
        from hporl.backends.lcbench import SIZE_FEATURE_NAMES, task_size_features

        if self.feature_names == SIZE_FEATURE_NAMES and hasattr(task, "X_train"):
            return task_size_features(task)  # an LCBench policy on a real task (sim-to-real)
        f = np.asarray(
            task.features() if hasattr(task, "features") else task, dtype=np.float32
        ).reshape(-1)
        if f.shape[0] != self.layout.n_features:
            raise PolicyError(
                f"the policy expects {self.layout.n_features} task features, the task gives {f.shape[0]}"
            )
        return f

    def _trials(self, task: Any, history: History) -> list[tuple[dict[str, Any], float | None]]:
        chance = float(getattr(task, "chance_metric", 0.0))
        return [(dict(c), trial_score(r, chance)) for c, r in history]

    def _logits(self, obs: torch.Tensor) -> torch.Tensor:
        if self.algorithm == "dqn":
            return self.network.q_net(obs)
        return self.network.get_distribution(obs).distribution.logits

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
        rng = np.random.default_rng(rng)
        features = self._features(task)
        trials = self._trials(task, history)
        for attempt in range(max_retries + 1):
            config = self._act(
                features, trials, deterministic=deterministic and attempt == 0, rng=rng
            )
            if not avoid or config_key(config) not in avoid:
                return config
        for _ in range(100):
            config = self.space.sample(rng)
            if config_key(config) not in avoid:
                return config
        return config

    @torch.no_grad()
    def _act(
        self,
        features: np.ndarray,
        trials: list[tuple[dict[str, Any], float | None]],
        *,
        deterministic: bool,
        rng: np.random.Generator,
    ) -> dict[str, Any]:
        partial: dict[str, Any] = {}
        position = self.layout.advance(partial, 0)
        feature_block = self.layout.features_block(features)
        trials_block = self.layout.trials_block(trials)
        while position is not None:
            obs = self.layout.compose(feature_block, position, partial, trials_block)
            logits = self._logits(torch.from_numpy(obs)[None])[0].double().numpy()
            mask = self.layout.mask(position)
            logits = np.where(mask, logits, -np.inf)
            if deterministic:
                action = int(np.argmax(logits))
            else:
                p = np.exp(logits - logits.max())
                action = int(rng.choice(len(p), p=p / p.sum()))
            name = self.space.parameters[position].name
            partial[name] = self.layout.value_of(position, action)
            position = self.layout.advance(partial, position + 1)
        return self.space.validate(partial)

    def fine_tune(
        self, task: Any, history: History, *, steps: int = 10, lr: float = 1e-3
    ) -> Policy:
        """A copy updated on ``task``'s trials (this one is left as it was).

        Policy gradient on the observed trials only (no new evaluation): each trial's action
        sequence, replayed in the context it was proposed in, is made more likely in proportion
        to its standardised score (failed trials count as the worst).
        """
        tuned = self.copy()
        features = self._features(task)
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
            logits = tuned._logits(obs_t).masked_fill(~mask_t, -math.inf)
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
            f"K={self.budget}, reward={self.reward}, trained on {len(self.training_tasks)} tasks)"
        )


def default_policy_dir() -> Path:
    """Where the packaged default policy lies (package data of ``hporl``)."""
    return Path(__file__).resolve().parent / "policies" / "default"


def _meta_sha256(meta: Mapping[str, Any]) -> str:
    """The sha256 of ``policy.json``'s canonical JSON without the ``meta_sha256`` key itself."""
    body = {k: v for k, v in meta.items() if k != "meta_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _read_meta(directory: Path) -> dict[str, Any]:
    """``policy.json``, checked: valid JSON, this format version, its own checksum, and a
    checksum for the weights (compared by :func:`_read_weights`).

    Raises:
        PolicyError: naming the file and what to do.
    """
    path = directory / META
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise PolicyError(f"{path} is not valid JSON: {err}") from None
    except OSError as err:
        raise PolicyError(f"cannot read {path}: {err.strerror}") from None
    if not isinstance(meta, dict):
        raise PolicyError(f"{path} is not a policy description: expected a JSON object")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise PolicyError(
            f"{path}: the policy was saved in format_version {version!r} and this hporl reads "
            f"format {FORMAT_VERSION}; re-run `hporl meta-train` to make a new policy"
        )
    stored = meta.get("meta_sha256")
    if stored != _meta_sha256(meta):
        what = "it has no meta_sha256" if stored is None else "meta_sha256 differs from its content"
        raise PolicyError(
            f"{path} was edited by hand: its checksum does not match ({what}); "
            "restore the saved file or re-run `hporl meta-train`"
        )
    checksums = meta.get("checksums")
    if not isinstance(checksums, dict) or not isinstance(checksums.get(WEIGHTS), str):
        raise PolicyError(f"{path} is incomplete: it holds no checksum for {WEIGHTS}")
    return meta


def _read_weights(directory: Path, meta: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The weights, read once: the bytes whose sha256 is checked are the bytes loaded."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    path = directory / WEIGHTS
    try:
        data = path.read_bytes()
    except OSError as err:
        raise PolicyError(f"cannot read {path}: {err.strerror}") from None
    if hashlib.sha256(data).hexdigest() != meta["checksums"][WEIGHTS]:
        raise PolicyError(f"{path} is corrupted or was changed: its sha256 does not match {META}")
    try:
        return load(data)
    except SafetensorError as err:
        raise PolicyError(f"{path} cannot be read: {err}") from None


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
        sign = -1.0 if study.direction == optuna.study.StudyDirection.MINIMIZE else 1.0
        out: list[tuple[dict[str, Any], float | None]] = []
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
            try:
                config = self.policy.space.from_optuna_params(t.params)
            except HporlError:
                continue  # the objective asked other parameters: not a trial of this space
            if t.state == TrialState.COMPLETE and t.value is not None:
                value: float | None = sign * t.value
            elif t.state == TrialState.PRUNED and t.intermediate_values:
                value = sign * t.intermediate_values[max(t.intermediate_values)]
            else:
                value = None
            out.append((config, value))
        return out

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, Any]
    ) -> dict[str, Any]:
        if not search_space:
            return {}
        history = self.history(study)
        avoid = {config_key(c) for c, _ in history}
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING))
        for t in running:
            if t.number != trial.number and t.params:
                with contextlib.suppress(HporlError):
                    avoid.add(config_key(self.policy.space.from_optuna_params(t.params)))
        config = self.policy.suggest(
            self.task, history, deterministic=self.deterministic, rng=self._rng, avoid=avoid
        )
        params = self.policy.space.optuna_params(config)
        return {k: v for k, v in params.items() if k in search_space}

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: Any
    ) -> Any:
        return self._independent.sample_independent(study, trial, param_name, param_distribution)
