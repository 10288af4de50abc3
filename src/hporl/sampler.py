"""``PolicySampler``: an optuna sampler whose proposals come from a trained :class:`~hporl.Policy`."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optuna
from optuna.samplers import BaseSampler, RandomSampler
from optuna.trial import FrozenTrial, TrialState

from hporl.augment import check_space
from hporl.backends import TrialResult
from hporl.exceptions import HporlError
from hporl.observation import epochs_at, trial_score
from hporl.policy import Policy, TrialChoice
from hporl.space import config_key

__all__ = [
    "HANDOVER",
    "PROBE",
    "SAMPLERS",
    "THEN",
    "HandoverSampler",
    "PolicySampler",
    "Probe",
    "budgeted_choice",
    "handover_after",
    "handover_config",
    "optuna_sampler",
    "probe_choice",
]


@dataclass(frozen=True)
class _Entry:
    config: dict[str, Any]
    value: float | None
    key: str
    score: float | None  # chance-adjusted (what the policy reads)


@dataclass
class _History:
    """One study's finished trials as read so far, by trial number; ``pending``: numbers seen
    unfinished (read again next time), ``seen``: how many trials were looked at. ``storage``:
    the study's, since study ids repeat across storages."""

    storage: Any
    by_number: dict[int, _Entry] = field(default_factory=dict)
    keys: set[str] = field(default_factory=set)
    pending: set[int] = field(default_factory=set)
    retried: set[int] = field(default_factory=set)
    seen: int = 0
    _order: list[int] | None = None
    _scored: list[tuple[dict[str, Any], float | None]] = field(default_factory=list)

    def add(self, number: int, entry: _Entry) -> None:
        self.by_number[number] = entry
        self.keys.add(entry.key)
        if self._order is not None and (not self._order or self._order[-1] < number):
            self._order.append(number)
        else:
            self._order = None  # finished out of order: sort again once

    def forget(self, numbers: set[int]) -> None:
        gone = numbers & self.by_number.keys()
        for number in gone:
            del self.by_number[number]
        if gone:
            self.keys = {e.key for e in self.by_number.values()}
            self._order = None

    def entries(self) -> list[_Entry]:
        if self._order is None:
            self._order = sorted(self.by_number)
            self._scored = [
                (self.by_number[n].config, self.by_number[n].score) for n in self._order
            ]
        return [self.by_number[n] for n in self._order]

    def scored(self) -> list[tuple[dict[str, Any], float | None]]:
        """(config, chance-adjusted score), oldest first; appended to, not rebuilt."""
        if self._order is None:
            self.entries()
        while len(self._scored) < len(self._order):
            e = self.by_number[self._order[len(self._scored)]]
            self._scored.append((e.config, e.score))
        return self._scored


class _Either:
    """Membership in either of two sets, without copying them (the tried keys grow with the
    study; the ones under way are few)."""

    def __init__(self, a: set[str], b: set[str]) -> None:
        self.a, self.b = a, b

    def __contains__(self, key: object) -> bool:
        return key in self.a or key in self.b

    def __len__(self) -> int:
        return len(self.a) + len(self.b)


def _retried(t: FrozenTrial) -> set[int]:
    """The FAIL trials that ``t`` is a retry of (optuna's retry callback marks them)."""
    out = set(t.system_attrs.get("retry_history") or ())
    if t.system_attrs.get("failed_trial") is not None:
        out.add(t.system_attrs["failed_trial"])
    return out


def _all_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Every trial of ``study``, by number, from its storage: optuna's Hyperband shows a sampler
    a view of the study holding only the asked trial's bracket, while the policy reads the
    whole history (and finds a trial at its number's place)."""
    return study._storage.get_all_trials(study._study_id, deepcopy=False)


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
        self._chance = float(getattr(task, "chance_metric", 0.0))
        self._read_by_study: dict[int, _History] = {}

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
        read = self._read(study, _all_trials(study))
        return [(e.config, e.value) for e in read.entries()]

    def _read(self, study: optuna.Study, trials: list[FrozenTrial]) -> _History:
        """The study's history, brought up to date with ``trials`` (all of them, by number):
        only trials not seen finished before are parsed, so a proposal's cost stays flat as
        trials pile up (a finished trial never changes)."""
        read = self._read_by_study.get(study._study_id)
        if read is None or read.storage is not study._storage:  # ids repeat across storages
            read = self._read_by_study[study._study_id] = _History(study._storage)
        sign = -1.0 if study.direction == optuna.study.StudyDirection.MINIMIZE else 1.0
        fresh = [trials[n] for n in sorted(read.pending) if n < len(trials)]
        fresh += trials[read.seen :]
        read.seen = max(read.seen, len(trials))
        for t in fresh:
            read.pending.discard(t.number)
            read.retried.update(_retried(t))
            if not t.state.is_finished():
                read.pending.add(t.number)
                continue
            if t.state == TrialState.FAIL and (
                t.number in read.retried or t.user_attrs.get("hporl_stale") is True
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
            read.add(
                t.number,
                _Entry(config, value, config_key(config), trial_score(value, self._chance)),
            )
        read.forget(read.retried)
        return read

    def propose(
        self,
        study: optuna.Study,
        *,
        exclude: int | None = None,
        trials: list[FrozenTrial] | None = None,
    ) -> dict[str, Any]:
        """The policy's next configuration for ``study``, given its :meth:`history`: never one
        tried already or under way (RUNNING or WAITING, trial number ``exclude`` aside).
        ``trials``: the study's trials, when the caller has just read them."""
        if trials is None:
            trials = _all_trials(study)
        read = self._read(study, trials)
        under_way = set()
        for number in read.pending:
            t = trials[number]
            if number != exclude and t.params:
                with contextlib.suppress(HporlError):
                    under_way.add(config_key(self.policy.space.from_optuna_params(t.params)))
        return self.policy.suggest_scored(
            self.task,
            read.scored(),
            deterministic=self.deterministic,
            rng=self._rng,
            avoid=_Either(read.keys, under_way),
        )

    def waiting(self, study: optuna.Study, trials: list[FrozenTrial]) -> bool:
        """Whether ``study`` (whose trials are ``trials``) has a queued trial (a retry)."""
        read = self._read(study, trials)
        return any(trials[n].state == TrialState.WAITING for n in read.pending)

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


SAMPLERS = ("random", "tpe", "gp", "cmaes")
"""optuna's samplers by name: what a policy can hand over to (:class:`HandoverSampler`)."""

THEN = "gp"
"""The sampler a policy hands over to by default (``tune_model``, ``hporl bench``): measured
best of those tried after 10 policy trials, on LCBench and on real training (README)."""

HANDOVER = 10
"""The most trials a policy proposes by default before :data:`THEN` takes over (fewer when it
was meta-trained for fewer: :func:`handover_after`)."""


def handover_after(policy: Policy, after: int | None = None) -> int:
    """``after``, or by default the trials ``policy`` was meta-trained for, at most
    :data:`HANDOVER`."""
    return int(after) if after is not None else min(policy.budget, HANDOVER)


def optuna_sampler(
    name: str, *, seed: int | None = None, parallel: bool = False, startup: int | None = None
) -> BaseSampler:
    """One of :data:`SAMPLERS`, seeded (TPE with its constant liar when trials run in
    parallel). ``startup``: the trials TPE and GP sample at random before their model (optuna's
    ``n_startup_trials``, default 10); a handover sets it to the policy's trials, so that the
    model starts with them."""
    kwargs = {} if startup is None else {"n_startup_trials": startup}
    if name == "random":
        return RandomSampler(seed=seed)
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, constant_liar=parallel, **kwargs)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, warn_independent_sampling=False, **kwargs)
    if name == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    raise ValueError(f"unknown sampler {name!r}; one of {', '.join(SAMPLERS)}")


def _position_seed(seed: int | None, position: int) -> int | None:
    """The seed of the sampler made fresh for the trial at ``position`` of a run seeded ``seed``
    (so that a resumed run proposes what an uninterrupted one would)."""
    if seed is None:
        return None
    return int(np.random.SeedSequence([seed, position]).generate_state(1)[0])


def handover_config(
    then: str,
    space: Any,
    trials: Sequence[tuple[Mapping[str, Any], float | None]],
    *,
    seed: int | None,
    position: int,
    startup: int,
) -> dict[str, Any]:
    """The configuration that optuna's sampler ``then`` (one of :data:`SAMPLERS`) proposes after
    ``trials`` (configuration, value to maximise or ``None`` for a failure), made fresh for the
    trial at ``position`` of the run: what a budget-aware policy hands over to once its own
    epochs are spent, given only its trials trained for the full epochs (a score after fewer
    epochs would mislead the model). ``startup``: the trials before the model (see
    :func:`optuna_sampler`)."""
    sampler = optuna_sampler(then, seed=_position_seed(seed, position), startup=max(startup, 1))
    storage = optuna.storages.InMemoryStorage()
    quiet = logging.getLogger(type(storage).__module__)  # it logs every study it creates
    level = quiet.level
    quiet.setLevel(logging.WARNING)
    try:
        storage.create_new_study([optuna.study.StudyDirection.MAXIMIZE], study_name="handover")
    finally:
        quiet.setLevel(level)
    study = optuna.Study(study_name="handover", storage=storage, sampler=sampler)
    distributions = space.to_optuna()
    for config, value in trials:
        params = space.optuna_params(config)
        failed = value is None or not np.isfinite(value)
        study.add_trial(
            optuna.trial.create_trial(
                params=params,
                distributions={k: distributions[k] for k in params},
                value=None if failed else float(value),
                state=TrialState.FAIL if failed else TrialState.COMPLETE,
            )
        )
    return space.suggest(study.ask())


@dataclass(frozen=True)
class Probe:
    """How a full-fidelity (K-trial) policy spends a budget in epochs (:func:`probe_choice`):
    its first proposal trains fully; every later one is a probe of ``fidelity`` of the epochs,
    and after every ``rounds`` probes the best one not yet continued is continued to the full
    epochs (successive halving at rate ``rounds``, from the policy's proposals). Once fewer than
    a full training's epochs are left, no new probe is started: the best open one is continued
    if that fits, else the run ends."""

    fidelity: float = 1 / 3
    rounds: int = 2

    def __post_init__(self) -> None:
        number = isinstance(self.fidelity, (int, float)) and not isinstance(self.fidelity, bool)
        if not number or not 0 < self.fidelity < 1:
            raise ValueError(f"probe fidelity must be in (0, 1), got {self.fidelity!r}")
        if not isinstance(self.rounds, int) or isinstance(self.rounds, bool) or self.rounds < 1:
            raise ValueError(f"probe rounds must be a positive integer, got {self.rounds!r}")

    @classmethod
    def from_setting(cls, value: Any) -> Probe | None:
        """A bench policy's ``probe`` setting: ``true`` or absent (the default, :data:`PROBE`),
        ``false`` (full trainings only), or ``{fidelity: F, rounds: R}``."""
        if value is None or value is True:
            return PROBE
        if value is False:
            return None
        if isinstance(value, Mapping) and set(value) <= {"fidelity", "rounds"}:
            return cls(**value)
        raise ValueError(f"probe must be true, false or {{fidelity: F, rounds: R}}, got {value!r}")


PROBE = Probe()
"""The default: probes of a third of the epochs, the better of every two continued to full.
Offline on the 4-fold LCBench bench's training tasks (``benchmarks/policy_probes.py --split
train``) it is within noise of the best schedule tried (1/9, rounds of 3); on real tasks of 4-10
epochs a ninth is one epoch, whose scores misled the policy (README, "Probing a full-fidelity
policy's proposals")."""


def probe_choice(
    policy: Policy,
    task: Any,
    history: Sequence[tuple[Mapping[str, Any], TrialResult, float]],
    *,
    epochs_left: int,
    resumable: bool,
    probe: Probe | None = PROBE,
    rng: np.random.Generator,
    avoid: set[str],
    deterministic: bool = True,
) -> TrialChoice | None:
    """A full-fidelity policy's next trial in a budget in epochs (``None`` when nothing fits
    in ``epochs_left``, or nothing that fits could be trained to the end): see :class:`Probe`.
    Once fewer than a full training's epochs are left, a new probe could never be continued
    within the budget, and only a full training counts as found: the best open probe is
    continued if that fits, else the run ends there. The policy reads every trial at the probes'
    epochs (a full training's curve cut there), so that it ranks like with like. Without
    ``probe``, or when the backend cannot resume (a continuation would train again from the
    start), or when a probe would be the full training, every trial trains fully.
    ``history``: (config, result, fidelity), a continued trial once, at its latest fidelity."""
    full = int(task.epochs)
    short = epochs_at(probe.fidelity, full) if probe is not None else full
    probing = probe is not None and resumable and short < full

    def new(fidelity: float, epochs: int) -> TrialChoice | None:
        if epochs > epochs_left:
            return None
        seen = [(dict(c), _score_at(r, short)) for c, r, _ in history]
        config = policy.suggest_scored(
            task, seen, deterministic=deterministic, rng=rng, avoid=avoid
        )
        return TrialChoice(config, fidelity, epochs, None, epochs)

    if not probing or not history:
        return new(1.0, full)
    assert probe is not None
    open_probes = [(i, r) for i, (_, r, f) in enumerate(history) if f < 1.0 and r.ok and r.curve]
    done = sum(1 for _, _, f in history if f >= 1.0) - 1  # continued so far (the first: not)
    probes = sum(1 for _, _, f in history if f < 1.0) + done
    cost = full - short

    def carry_on() -> TrialChoice | None:
        if not open_probes or cost > epochs_left:
            return None
        j, _ = max(open_probes, key=lambda e: (max(e[1].curve), -e[0]))
        return TrialChoice(dict(history[j][0]), 1.0, full, j, cost)

    if full > epochs_left:  # a probe now could not be continued within the budget
        return carry_on()
    if probes // probe.rounds > done and (choice := carry_on()) is not None:
        return choice
    return new(probe.fidelity, short) or carry_on()


def _score_at(result: TrialResult, epochs: int) -> float | None:
    """``result``'s chance-adjusted score (:func:`trial_score`) after its first ``epochs``."""
    if not result.ok or not result.curve:
        return None
    return trial_score(float(max(result.curve[:epochs])), result.chance_metric)


def budgeted_choice(
    policy: Policy,
    task: Any,
    history: Sequence[tuple[Mapping[str, Any], TrialResult, float]],
    *,
    spent: int,
    budget_epochs: int,
    resumable: bool,
    then: str | None,
    after: int,
    space: Any,
    score: Callable[[TrialResult], float | None],
    seed: int | None,
    position: int,
    rng: np.random.Generator,
    avoid: set[str],
    deterministic: bool = True,
    probe: Probe | None = PROBE,
) -> TrialChoice | None:
    """The next trial of a run in a budget of epochs (``tune_model(budget_epochs=)``, the
    bench): the policy's choice (:meth:`Policy.suggest_trial` for a budget-aware policy, else
    its proposals probed as ``probe`` says, :func:`probe_choice`) until ``after`` full
    trainings' epochs are spent, then, with ``then``, a full training that sampler proposes
    from the trials of ``history`` trained for all the epochs, valued by ``score`` (:func:`handover_config`);
    ``None`` when nothing fits in the epochs left. ``history``: (config, result, fidelity),
    a continued trial once, at its latest fidelity; ``position``: the trials so far."""
    full = int(task.epochs)
    if then is None or spent < after * full:
        common = {"resumable": resumable, "rng": rng, "avoid": avoid}
        common |= {"epochs_left": budget_epochs - spent, "deterministic": deterministic}
        if not policy.budget_aware:
            return probe_choice(policy, task, history, probe=probe, **common)
        return policy.suggest_trial(
            task, history, full_epochs=full, budget_epochs=budget_epochs, **common
        )
    if spent + full > budget_epochs:
        return None
    trained = [(c, score(r)) for c, r, fidelity in history if fidelity >= 1.0]
    config = handover_config(then, space, trained, seed=seed, position=position, startup=after)
    return TrialChoice(config, 1.0, full, None, full)


class HandoverSampler(BaseSampler):
    """The first ``after`` trials from ``first``, the rest from ``then``: for example a
    :class:`PolicySampler` for the first trials, then optuna's GP, which fits its model on every
    finished trial of the study, the policy's included (a warm-started Bayesian optimisation;
    :meth:`after_policy` builds that).

    A trial's position is the number of trials before it that did not fail: a failed trial's
    retry takes its place, so a run interrupted and resumed hands over where an uninterrupted
    one does. ``then`` is a sampler, or a function of the position that makes a fresh one for
    that trial (:meth:`after_policy` seeds it from the run's seed and the position, so that a
    resumed run proposes what an uninterrupted one would). Both samplers see the whole study.
    """

    @classmethod
    def after_policy(
        cls,
        first: PolicySampler,
        then: str = THEN,
        *,
        after: int | None = None,
        seed: int | None = None,
        parallel: bool = False,
    ) -> HandoverSampler:
        """``first``'s policy for :func:`handover_after` trials, then the sampler named ``then``
        (one of :data:`SAMPLERS`), its model started at once on the policy's trials."""
        after = handover_after(first.policy, after)
        if then not in SAMPLERS:  # here, not at the handover
            raise ValueError(f"unknown sampler {then!r}; one of {', '.join(SAMPLERS)}")

        def make(position: int) -> BaseSampler:
            own = _position_seed(seed, position)
            return optuna_sampler(then, seed=own, parallel=parallel, startup=max(after, 1))

        return cls(first, make, after=after)

    def __init__(
        self,
        first: BaseSampler,
        then: BaseSampler | Callable[[int], BaseSampler],
        *,
        after: int,
    ) -> None:
        if after < 0:
            raise ValueError(f"after must be >= 0, got {after}")
        self.first, self.after = first, int(after)
        self._then = then
        self._turn: dict[int, BaseSampler] = {}  # by trial number, until the trial is over

    def sampler_at(self, position: int) -> BaseSampler:
        """The sampler of the trial at ``position`` (trials before it that did not fail)."""
        if position < self.after:
            return self.first
        return self._then if isinstance(self._then, BaseSampler) else self._then(position)

    def sampler_of(self, trials: list[FrozenTrial], number: int) -> BaseSampler:
        """The sampler of trial ``number`` of a study whose trials are ``trials``."""
        got = self._turn.get(number)
        if got is None:
            position = sum(1 for t in trials[:number] if t.state != TrialState.FAIL)
            got = self._turn[number] = self.sampler_at(position)
        return got

    def _of(self, study: optuna.Study, trial: FrozenTrial) -> BaseSampler:
        got = self._turn.get(trial.number)
        if got is None:
            got = self.sampler_of(_all_trials(study), trial.number)
        return got

    def reseed_rng(self) -> None:
        self.first.reseed_rng()
        if isinstance(self._then, BaseSampler):
            self._then.reseed_rng()

    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, Any]:
        return self._of(study, trial).infer_relative_search_space(study, trial)

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, Any]
    ) -> dict[str, Any]:
        sampler = self._of(study, trial)
        try:
            return sampler.sample_relative(study, trial, search_space)
        except KeyError:
            if sampler is self.first:
                raise
        # optuna's GP inferred ``search_space`` from the trials its storage had cached and
        # read them afresh to sample: a trial another process finished in between lacks one of
        # those parameters (a conditional one). Sample the parameters every finished trial has;
        # the others go to the independent sampler.
        done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        shared = {k: d for k, d in search_space.items() if all(k in t.params for t in done)}
        try:
            return sampler.sample_relative(study, trial, shared)
        except KeyError:  # finished again in between: this trial samples independently
            return {}

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: Any
    ) -> Any:
        sampler = self._of(study, trial)
        return sampler.sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._of(study, trial).before_trial(study, trial)

    def after_trial(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Any,
    ) -> None:
        self._of(study, trial).after_trial(study, trial, state, values)
        self._turn.pop(trial.number, None)
