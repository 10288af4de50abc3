"""``HPOEnv``: hyperparameter choice as a gymnasium environment, one parameter per step.

An episode is up to ``budget`` (K) trials on one task drawn at ``reset``. Each step chooses one
hyperparameter (a bin of it); when a configuration is complete the backend evaluates it. The
reward is the improvement of the best reward-approach value so far on this task, so that an
episode's return is the best value it found (the first trial's value counts whole, a diverged or
failed trial gets the approach's floor).

With ``fidelities`` (budget-aware, budgets in epochs), an episode spends ``budget`` full-training
equivalents of epochs (B x the task's epochs) and each trial starts with a fidelity decision: a
new configuration trained for a fraction of the full epochs, or the best trial of a lower
fidelity continued to the next (freeze-thaw). A continuation costs only the extra epochs when
the backend's curves are prefixes of longer ones (``Backend.resumable``: a surrogate that
predicts every epoch), else a whole new training. The episode ends when no decision fits in the
epochs left. Only full-fidelity trials count as found (as in ``hporl bench`` with
``budget_unit: epochs``): the reward of a trial that spends ``c`` epochs is
``c / (B x epochs)`` times the best full-fidelity value so far (the approach's floor before the
first), and the epochs left at the end count at the last best, so an episode's return is the
mean over its epoch budget of the best full-fidelity value found: anytime, in epochs.

The observation (see :class:`~hporl.observation.ObservationLayout`) shows only what a user would have on a new
task: its meta-features and the trials run on it so far, their scores chance-adjusted
(``(metric - chance) / (1 - chance)``, see :mod:`hporl.rewards`). Per-task normalisation
constants of benchmarks never reach it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import gymnasium as gym
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from hporl import rewards as _rewards
from hporl.backends import Backend, TrialResult
from hporl.evaluation import Evaluation, Evaluator
from hporl.exceptions import ConfigError
from hporl.observation import DECIDE, OBS_BOUND, ObservationLayout, epochs_at, trial_score
from hporl.space import SearchSpace

__all__ = ["FIDELITY_DECISION", "HPOEnv", "TaskAugmentation", "TaskLike"]

FIDELITY_DECISION = "<fidelity>"
"""What :attr:`HPOEnv.choosing` says before a budget-aware trial (no parameter has that name)."""

logger = logging.getLogger(__name__)


class TaskLike(Protocol):
    """What the environment needs of a task (``hporl.Task`` and synthetic tasks have it)."""

    name: str
    epochs: int

    def features(self) -> np.ndarray: ...


class TaskAugmentation(BaseModel):
    """Random changes to the training task, drawn per episode, so that a few dozen training
    tasks cannot be memorised and the policy has to read what its trials show.

    - ``shift``: each numeric parameter's landscape moves by up to this fraction of its range
      (the configuration the policy chose is evaluated at the moved point, so the task's best
      values move while the policy still sees what it chose);
    - ``warp``: observed scores go through a random monotone power warp, ``s -> sign(s) |s|^a``
      with ``log a`` uniform in ``[-warp, warp]``;
    - ``noise``: Gaussian noise of this standard deviation on each observed score.

    The reward is computed from the evaluation itself (only the moved point), not from the
    warped or noisy score.
    """

    model_config = ConfigDict(extra="forbid")
    shift: float = Field(0.1, ge=0, le=0.5)
    warp: float = Field(0.3, ge=0, le=3)
    noise: float = Field(0.01, ge=0, le=1)


class HPOEnv(gym.Env):
    """Choose hyperparameters one step at a time over up to ``budget`` trials on a drawn task.

    Args:
        space: the search space (``chosen`` parameters are the actions; fixed ones are filled).
        evaluator: what evaluates complete configurations: an :class:`~hporl.evaluation.Evaluator`
            (several envs sharing one share its cache, executor and store), or a backend (this
            env then gets an evaluator of its own, in process).
        tasks: a list of tasks drawn uniformly at ``reset``, or a callable ``sampler(rng)``.
        reward: a reward approach name (:mod:`hporl.rewards`) or instance.
        budget: K, the trials per episode (1: pure zero-shot transfer).
        n_bins: bins per numeric parameter (categorical ones use their choices).
        history: trial slots in the observation (default: the budget, the whole history).
        epochs: epochs per trial (default: each task's own).
        trial_seed: the training seed of every trial (fixed, so evaluations can be cached).
        cache: with a backend, keep results in memory so a configuration revisited on a task
            is not re-run.
        feature_norm: (mean, scale) applied to task features in observations (see
            :meth:`ObservationLayout.normalisation`).
        extra_bins: more action values per numeric parameter (see :attr:`ObservationLayout.bins`).
        augment: task augmentation drawn per episode (see :class:`TaskAugmentation`).
        layout_version: 2 (the whole history as tokens), or 1 (the last ``history`` trials in
            a flat block, as policies made before version 2 read it).
        fidelities: budget-aware episodes (see the module docstring): the fractions of the full
            epochs a trial may train for, increasing, the last 1 (e.g.
            :data:`~hporl.observation.FIDELITIES`); ``budget`` then counts full-training
            equivalents of epochs. ``None``: K trials at full fidelity.

    ``reset(options={"task": t})`` runs an episode on a given task. ``info`` of the step that
    finishes a trial holds ``config``, ``result`` (the TrialResult), ``value`` (the reward
    approach's value), ``trial`` (its 0-based index) and ``task`` (the task's name); budget-aware,
    also ``fidelity``, ``epochs`` (what it cost), ``epochs_spent`` and ``continued``.
    Agents that ignore ``action_masks()`` are served too: out-of-range actions wrap around.
    """

    metadata: dict[str, Any] = {"render_modes": []}  # noqa: RUF012 - gymnasium's convention

    def __init__(
        self,
        space: SearchSpace,
        evaluator: Evaluator | Backend,
        tasks: Sequence[TaskLike] | Callable[[np.random.Generator], TaskLike],
        *,
        reward: str | _rewards.RewardApproach = "best_metric",
        budget: int = 3,
        n_bins: int = 64,
        history: int | None = None,
        epochs: int | None = None,
        trial_seed: int = 0,
        cache: bool = True,
        n_features: int | None = None,
        feature_norm: tuple[Sequence[float], Sequence[float]] | None = None,
        extra_bins: tuple[tuple[str, tuple[Any, ...]], ...] = (),
        augment: TaskAugmentation | None = None,
        layout_version: int = 2,
        fidelities: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(budget, int) or budget < 1:
            raise ConfigError(
                f"budget (trials per episode) must be a positive integer, got {budget!r}"
            )
        if not space.chosen:
            raise ConfigError("the search space has no parameter to choose")
        if callable(tasks) and not isinstance(tasks, Sequence):
            self._sampler = tasks
            self.tasks: list[TaskLike] = []
        else:
            self.tasks = list(tasks)
            if not self.tasks:
                raise ConfigError("HPOEnv needs at least one training task")
            self._sampler = None
        if n_features is None:
            probe = self.tasks[0] if self.tasks else self._sampler(np.random.default_rng(0))
            n_features = len(np.asarray(probe.features()).reshape(-1))
        self.space = space
        if not isinstance(evaluator, Evaluator):
            evaluator = Evaluator(evaluator, memory=cache)
        self.evaluator = evaluator
        self.reward_approach = _rewards.get(reward)
        mean, scale = (None, None)
        if feature_norm is not None:
            mean, scale = tuple(map(float, feature_norm[0])), tuple(map(float, feature_norm[1]))
        self.layout = ObservationLayout(
            space,
            n_features,
            budget,
            n_bins,
            budget if history is None else history,
            mean,
            scale,
            tuple(extra_bins),
            layout_version,
            tuple(float(f) for f in fidelities or ()),
        )
        self.epochs = epochs
        self.trial_seed = trial_seed
        self.observation_space = gym.spaces.Box(
            -OBS_BOUND, OBS_BOUND, shape=(self.layout.dim,), dtype=np.float32
        )
        self.action_space = gym.spaces.Discrete(self.layout.n_actions)
        self._features: dict[int, np.ndarray] = {}
        self.task: TaskLike | None = None
        self._partial: dict[str, Any] = {}
        self._position: int | None = None
        self._pending: dict[str, Any] | None = None  # chosen, its result not yet in
        self._evaluations: list[Evaluation] = []  # the pending configuration's (and reference)
        self._trials: list[tuple[Any, ...]] = []
        self._trials_block = self.layout.trials_block([])
        self._best_value: float | None = None
        self.augment = augment
        self._shift: dict[str, float] = {}
        self._warp = 1.0
        self._augmented = False
        # Budget-aware episodes: epochs spent, the trial's fidelity, the trial it continues.
        self.resumable = bool(getattr(self.evaluator.backend, "resumable", False))
        self._spent = 0
        self._fidelity = 1.0
        self._continuing: int | None = None
        self._best_full: float | None = None

    @property
    def backend(self) -> Backend:
        return self.evaluator.backend

    # -- gymnasium API ------------------------------------------------------------------------
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        options = options or {}
        if "task" in options:
            self.task = options["task"]
        elif self._sampler is not None:
            self.task = self._sampler(self.np_random)
        else:
            self.task = self.tasks[int(self.np_random.integers(len(self.tasks)))]
        self._trials = []
        self._trials_block = self.layout.trials_block([])
        self._best_value = None
        self._best_full = None
        self._spent = 0
        self._continuing = None
        self._pending = None
        self._augmented = self.augment is not None and "task" not in options
        if self._augmented:
            rng, a = self.np_random, self.augment
            self._shift = {
                p.name: float(rng.uniform(-a.shift, a.shift))
                for p in self.space.chosen
                if p.is_numeric and a.shift > 0
            }
            self._warp = float(np.exp(rng.uniform(-a.warp, a.warp)))
        else:
            self._shift, self._warp = {}, 1.0
        self._evaluations = []
        self._new_config()
        return self.observe(), {"task": self.task.name}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        if self.propose(action) is None:
            return self.observe(), 0.0, False, False, {}
        self.evaluator.wait(self.submit())
        return self.finish()

    # The three parts of ``step``, for a vectorised env that runs the trainings of several envs
    # at once (:class:`hporl.vec_env.FanOutVecEnv`): ``propose`` every env, ``submit`` the
    # evaluations of those that have chosen, wait for them, then ``finish`` each.
    def propose(self, action: Any) -> dict[str, Any] | None:
        """Take ``action``: the configuration it completes (the env then waits for
        :meth:`finish`, which gives the step's outcome), or ``None`` when more parameters are
        to be chosen (the step's outcome is then ``observe()``, reward 0, not done)."""
        if self.task is None:
            raise RuntimeError("call reset() before step()")
        if self._position is None:
            raise RuntimeError("the episode is over; call reset()")
        if self._pending is not None:
            raise RuntimeError("the configuration is chosen; call finish() with its result")
        if self._position == DECIDE:
            return self._decide(int(action))
        p = self.space.parameters[self._position]
        self._partial[p.name] = self.layout.value_of(self._position, int(action))
        self._position = self.layout.advance(self._partial, self._position + 1)
        if self._position is not None:
            return None
        self._pending = self.space.validate(self._partial)
        return self._pending

    def submit(self) -> list[Evaluation]:
        """Start the evaluations the chosen configuration needs on the evaluator: its own, and
        the reward's reference (the space's default) when the reward approach compares with one."""
        if self.task is None or self._pending is None:
            raise RuntimeError("no configuration is chosen")
        if not self._evaluations:
            wanted = [self._moved(self._pending)]
            if self.reward_approach.needs_reference:
                wanted.append(self.space.default())
            epochs = self.epochs
            if self.layout.budget_aware:
                epochs = epochs_at(self._fidelity, self.full_epochs)
            self._evaluations = [
                self.evaluator.submit(self.task, c, seed=self.trial_seed, epochs=epochs)
                for c in wanted
            ]
        return self._evaluations

    def finish(self) -> tuple[np.ndarray, float, bool, bool, dict]:
        """The outcome of the step whose :meth:`propose` chose a configuration, once the
        evaluations of :meth:`submit` are done."""
        evaluations = self.submit()
        if not all(e.done() for e in evaluations):
            raise RuntimeError("the configuration's evaluations are not done; wait for them")
        config, self._pending, self._evaluations = self._pending, None, []
        result = evaluations[0].result
        reference = evaluations[1].result if len(evaluations) > 1 else None
        value = float(self.reward_approach(result, reference=reference, task=self.task))
        if self.layout.budget_aware:
            return self._finish_budgeted(config, result, value)
        reward = value if self._best_value is None else max(0.0, value - self._best_value)
        self._best_value = value if self._best_value is None else max(self._best_value, value)
        self._trials.append((config, self._observed(trial_score(result))))
        self._trials_block = self.layout.trials_block(self._trials)
        info = {
            "config": config,
            "result": result,
            "value": value,
            "trial": len(self._trials) - 1,
            "task": self.task.name,
        }
        terminated = len(self._trials) >= self.layout.budget
        if terminated:
            self._partial = {}
            self._position = None
        else:
            self._new_config()
        return self.observe(), reward, terminated, False, info

    def observe(self) -> np.ndarray:
        """The current observation."""
        return self.layout.compose(
            self._features_block(self.task), self._position, self._partial, self._trials_block
        )

    def evaluate(self, task: TaskLike, config: Mapping[str, Any]) -> TrialResult:
        """``config`` evaluated on ``task`` as this env's trials are (its seed and epochs)."""
        return self.evaluator.evaluate(task, config, seed=self.trial_seed, epochs=self.epochs)

    def reference(self, task: TaskLike) -> TrialResult | None:
        """The reward approach's reference on ``task`` (the space's default), if it needs one."""
        if not self.reward_approach.needs_reference:
            return None
        return self.evaluate(task, self.space.default())

    def action_masks(self) -> np.ndarray:
        """Allowed actions: the bins of the parameter being chosen (sb3-contrib's convention),
        or the fidelity decisions that fit in the epochs left; while a chosen configuration
        waits for its result, only action 0 (which does nothing)."""
        if self._pending is not None:
            mask = np.zeros(self.layout.n_actions, dtype=bool)
            mask[0] = True
            return mask
        if self._position == DECIDE:
            return self._decision_mask()
        return self.layout.mask(self._position)

    @property
    def full_epochs(self) -> int:
        """The epochs of a full-fidelity trial on the current task."""
        if self.task is None:
            raise RuntimeError("call reset() first")
        return int(self.epochs or self.task.epochs)

    @property
    def budget_epochs(self) -> int:
        """A budget-aware episode's epochs: ``budget`` full trainings of the current task."""
        return self.layout.budget * self.full_epochs

    @property
    def epochs_spent(self) -> int:
        return self._spent

    @property
    def choosing(self) -> str | None:
        """What the next action chooses: the name of a parameter, :data:`FIDELITY_DECISION` for
        a budget-aware episode's decision before a trial, ``None`` while a configuration waits
        for its result."""
        if self._pending is not None:
            return None
        if self._position == DECIDE:
            return FIDELITY_DECISION
        return self.space.parameters[self._position].name

    @property
    def waiting(self) -> bool:
        """A configuration is chosen and waits for :meth:`finish`."""
        return self._pending is not None

    # -- internals ----------------------------------------------------------------------------
    def _moved(self, config: dict[str, Any]) -> dict[str, Any]:
        """Where ``config`` is evaluated: moved by this episode's shifts (task augmentation)."""
        if not self._shift:
            return config
        moved = dict(config)
        for name, delta in self._shift.items():
            p = self.space[name]
            if name not in moved or (p.has_off and moved[name] == p.off):
                continue
            moved[name] = p._from_unit(p._to_unit(float(moved[name])) + delta)
        return self.space.validate(moved)

    def _observed(self, score: float | None) -> float | None:
        """A trial's score as the policy sees it (warped and noisy under augmentation)."""
        if score is None or not self._augmented:
            return score
        warped = float(np.sign(score) * abs(score) ** self._warp)
        return warped + float(self.np_random.normal(0.0, self.augment.noise))

    def _new_config(self) -> None:
        self._partial = {}
        if self.layout.budget_aware:
            self._position = DECIDE
            self._continuing = None
            return
        self._position = self.layout.advance(self._partial, 0)

    def _decision_mask(self) -> np.ndarray:
        return self.layout.decision_mask(
            self._trials,
            self.budget_epochs - self._spent,
            self.full_epochs,
            resumable=self.resumable,
        )

    def _decide(self, action: int) -> dict[str, Any] | None:
        """The fidelity decision: a new configuration (its parameters come next), or a trial
        continued (its configuration, evaluated at once). A masked action (from an agent that
        ignores masks) takes the first allowed one."""
        allowed = np.flatnonzero(self._decision_mask())
        if action not in allowed:
            action = int(allowed[0])
        kind, level = self.layout.decisions[action]
        if kind == "new":
            self._fidelity = self.layout.fidelities[level]
            self._position = self.layout.advance(self._partial, 0)
            return None
        self._continuing = self.layout.best_at(self._trials, level)
        self._fidelity = self.layout.fidelities[level + 1]
        self._pending = dict(self._trials[self._continuing][0])
        return self._pending

    def _finish_budgeted(
        self, config: dict[str, Any], result: TrialResult, value: float
    ) -> tuple[np.ndarray, float, bool, bool, dict]:
        full = self.full_epochs
        epochs = epochs_at(self._fidelity, full)
        continued = self._continuing
        if continued is not None and self.resumable:
            cost = epochs - epochs_at(self._trials[continued][2], full)
        else:
            cost = epochs
        self._spent += cost
        observed = (config, self._observed(trial_score(result)), self._fidelity)
        if continued is None:
            self._trials.append(observed)
            index = len(self._trials) - 1
        else:
            self._trials[continued] = observed
            index = continued
        if self._fidelity == self.layout.fidelities[-1] and result.ok:
            self._best_full = value if self._best_full is None else max(self._best_full, value)
        current = self.reward_approach.floor if self._best_full is None else self._best_full
        reward = cost / self.budget_epochs * current
        self._trials_block = self.layout.trials_block(
            self._trials, self._spent / self.budget_epochs
        )
        info = {
            "config": config,
            "result": result,
            "value": value,
            "trial": index,
            "task": self.task.name,
            "fidelity": self._fidelity,
            "epochs": cost,
            "epochs_spent": self._spent,
            "continued": continued is not None,
        }
        self._new_config()
        terminated = not self._decision_mask().any()
        if terminated:  # the epochs left count at the best found
            reward += (self.budget_epochs - self._spent) / self.budget_epochs * current
            self._partial = {}
            self._position = None
        return self.observe(), float(reward), terminated, False, info

    def _features_block(self, task: TaskLike) -> np.ndarray:
        """The task's normalised features, computed once per task."""
        key = id(task)
        if key not in self._features:
            self._features[key] = self.layout.features_block(task.features())
        return self._features[key]
