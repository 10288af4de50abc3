"""The peers, all as optuna samplers behind one runner."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna
from optuna.samplers import BaseSampler, RandomSampler
from optuna.trial import FrozenTrial, TrialState
from scipy.stats import norm

from hporl.pretrain import greedy_portfolio
from hporl.sampler import (
    SAMPLERS,
    HandoverSampler,
    PolicySampler,
    handover_after,
    optuna_sampler,
)
from hporl.space import SearchSpace, config_key

__all__ = [
    "METHODS",
    "PRUNABLE",
    "PRUNED_METHODS",
    "RUNGS",
    "FixedSequenceSampler",
    "Rungs",
    "TransferCandidates",
    "TransferGPSampler",
    "make_sampler",
    "split_method",
]

METHODS = ("policy", "random", "tpe", "gp", "cmaes", "best_average", "portfolio", "transfer_gp")
TRANSFER = ("best_average", "portfolio", "transfer_gp")
"""Methods that read the meta-train tasks' scores of :class:`TransferCandidates`."""
TRANSFER_THEN = "transfer_gp"
"""What a bench policy can hand over to besides optuna's samplers (``then: transfer_gp``); its
default on a surrogate benchmark with meta-train tasks (:meth:`BenchConfig.handover_of`)."""
TRANSFER_AFTER = 0
"""The policy's trials before transfer GP takes over by default: none. The policy's first trial
is the portfolio's first (its warm start clones it); transfer GP's first is that refined by
local search on the meta-train tasks, which did better on held-out LCBench and rbv2_rpart
tasks (README, "Refined proposals"). ``after: 1`` in ``policy:`` gives the policy its first."""
PRUNABLE = SAMPLERS
"""Methods that can run with a pruner, as ``<method>+<pruner>`` (budgets in epochs only)."""
PRUNED_METHODS = ("random+hyperband", "random+asha", "tpe+hyperband", "tpe+asha")
"""The pruned peers of epoch budgets (DESIGN.md); any of :data:`PRUNABLE` with any pruner of
:data:`hporl.evaluation.PRUNERS` works (e.g. ``tpe+median``)."""


def split_method(method: str) -> tuple[str, str | None]:
    """``("tpe", "asha")`` for ``"tpe+asha"``, ``(method, None)`` for a method without a pruner;
    ``None`` as the pruner when ``method`` is not of that form."""
    from hporl.evaluation import PRUNERS

    base, plus, pruner = method.partition("+")
    if plus and base in PRUNABLE and pruner in PRUNERS:
        return base, pruner
    return method, None


class FixedSequenceSampler(BaseSampler):
    """Proposes a fixed list of configurations in order, then random ones (transfer baselines)."""

    def __init__(
        self, space: SearchSpace, configs: Sequence[Mapping[str, Any]], *, seed: int | None = None
    ) -> None:
        self.space = space
        self.configs = [dict(c) for c in configs]
        self._random = RandomSampler(seed=seed)

    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, Any]:
        return self.space.to_optuna()

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, Any]
    ) -> dict[str, Any]:
        index = trial.number
        if index >= len(self.configs):
            return {}
        params = self.space.optuna_params(self.configs[index])
        return {k: v for k, v in params.items() if k in search_space}

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, name: str, dist: Any
    ) -> Any:
        return self._random.sample_independent(study, trial, name, dist)


class TransferCandidates:
    """A fixed random sample of the space evaluated on the meta-train tasks only.

    ``regret[t, c]`` is candidate ``c``'s normalised regret on meta-train task ``t``;
    ``values[t, c]`` its score there (the backend's, higher is better; a failure at the task's
    y_min), when known. ``meta(configs, epoch=None)``: the meta-train tasks' scores ``[t, i]``
    of any configurations (a surrogate's), after ``epoch`` epochs (default: all of each task's),
    when it can be had cheaply.
    """

    def __init__(
        self,
        configs: list[dict[str, Any]],
        regret: np.ndarray,
        values: np.ndarray | None = None,
        meta: Callable[..., np.ndarray] | None = None,
    ) -> None:
        self.configs = configs
        self.regret = regret
        self.values = values
        self.meta = meta
        self._encoded: tuple[SearchSpace, np.ndarray, dict[str, int]] | None = None

    def encoded(self, space: SearchSpace) -> tuple[np.ndarray, dict[str, int]]:
        """The candidates encoded in ``space`` ``[c, d]`` and their index by
        :func:`~hporl.space.config_key`; computed once, not once per run."""
        if self._encoded is None or self._encoded[0] is not space:
            x = np.array([space.encode(c) for c in self.configs], dtype=np.float64)
            self._encoded = (space, x, {config_key(c): i for i, c in enumerate(self.configs)})
        return self._encoded[1], self._encoded[2]

    def best_average(self, n: int) -> list[dict[str, Any]]:
        """Candidates by increasing mean regret: the first is the single best-average config."""
        order = np.argsort(self.regret.mean(axis=0), kind="stable")
        return [self.configs[i] for i in order[:n]]

    def portfolio(self, n: int) -> list[dict[str, Any]]:
        """Greedy portfolio: each next candidate minimises the mean regret of the best so far."""
        return [self.configs[i] for i in greedy_portfolio(-self.regret, n)]


def _fraction(p: Any) -> bool:
    """Whether ``p`` is a number strictly between 0 and 1."""
    return isinstance(p, (int, float)) and not isinstance(p, bool) and 0 < p < 1


@dataclass(frozen=True)
class Rungs:
    """How budget-aware transfer GP spends a budget in epochs: its first ``after`` trials train
    for all the epochs; every later one stops at the first of the rungs ``at`` (fractions of
    the task's epochs) where the chance that it would beat the best complete trial if trained
    to the end (:meth:`TransferGPSampler.improvement_chance`, given its score there) is below
    ``chance``, and otherwise trains on to the end. A trial that goes on costs no more than a
    full training (the backend resumes it), so stopping early only saves epochs; what it risks
    is stopping a trial that would have been the best. The default (stop at half or three
    quarters of the epochs below a chance of 0.3, after 2 full trials) was chosen among four
    rules on inner splits of LCBench's meta-train tasks, never on held-out ones; a rung at a
    quarter of the epochs, or a third full trial, did not beat it on the held-out tasks
    (README, "Budget-aware transfer GP").

    With ``resume`` (freeze-thaw, off by default), a trial stopped at a rung may later be
    trained on to the end instead of a new proposal (:meth:`resumed`). It made no difference
    on the inner splits and, on the held-out tasks, lowered the regret at 10 full trainings'
    epochs a little and raised it at 5 more (README, "Freeze-thaw").

    ``chance`` may be a list, one threshold per trial from trial ``after + 1`` on, the last for
    every later one (:meth:`threshold`): the chance overstates a later trial's (README, "How
    well the chance is calibrated"), yet a threshold raised for later trials did not lower the
    regret, on the leave-one-out splits nor on the held-out tasks.

    With ``per_cost`` (off by default), transfer GP chooses, once trials can stop, by expected
    improvement per expected cost (:meth:`cost`): a proposal unlikely to beat the best is
    likely to stop at the first rung, so it costs less. It gained at 3 to 6 full trainings'
    epochs on the inner splits, and was within noise of the default on the held-out tasks
    (README, "Expected improvement per expected epochs").

    With ``fits`` (the default), a trial stops only when the epochs left in the budget after
    stopping it fit another complete trial (:meth:`stop_at`'s ``left``): otherwise the epochs
    it saves could not train anything to the end within the budget, and training it on can
    only raise the best found. A run that knows its budget then never loses to full trainings
    by stopping its last trials (README, "Knowing where the budget ends")."""

    at: tuple[float, ...] = (0.5, 0.75)
    chance: float | tuple[float, ...] = 0.3
    after: int = 2
    resume: bool = False
    per_cost: bool = False
    fits: bool = True

    def __post_init__(self) -> None:
        at = self.at
        if (
            not isinstance(at, (tuple, list))
            or not at
            or not all(map(_fraction, at))
            or list(at) != sorted(set(at))
        ):
            raise ValueError(f"rungs at must be increasing fractions in (0, 1), got {at!r}")
        object.__setattr__(self, "at", tuple(float(f) for f in at))
        c = self.chance
        several = isinstance(c, (tuple, list))
        valid = bool(c) and all(map(_fraction, c)) if several else _fraction(c)
        if not valid:
            raise ValueError(
                f"rungs chance must be in (0, 1), or a list of such per trial, got {c!r}"
            )
        if several:
            object.__setattr__(self, "chance", tuple(float(p) for p in c))
        a = self.after
        if not isinstance(a, int) or isinstance(a, bool) or a < 0:
            raise ValueError(f"rungs after must be a whole number >= 0, got {a!r}")
        for flag in ("resume", "per_cost", "fits"):
            if not isinstance(getattr(self, flag), bool):
                raise ValueError(f"rungs {flag} must be true or false, got {getattr(self, flag)!r}")

    @classmethod
    def from_setting(cls, value: Any) -> Rungs | None:
        """A bench setting ``rungs``: ``true`` or absent (the default, :data:`RUNGS`),
        ``false`` (full trainings only), or ``{at: [F, ...], chance: P or [P, ...], after: N,
        resume: B, per_cost: B, fits: B}`` (each key optional: the default's value)."""
        if value is None or value is True:
            return RUNGS
        if value is False:
            return None
        keys = {"at", "chance", "after", "resume", "per_cost", "fits"}
        if isinstance(value, Mapping) and set(value) <= keys:
            return cls(**value)
        raise ValueError(
            "rungs must be true, false or a mapping of at (fractions of the epochs), chance, "
            f"after, resume, per_cost and fits; got {value!r}"
        )

    def cost(self, trials: Sequence[tuple[Any, ...]]) -> Callable[[np.ndarray], np.ndarray] | None:
        """With ``per_cost``, what the next proposal after ``trials`` is expected to cost
        (:meth:`TransferGPSampler.next_config`'s ``cost``): ``None`` without it, or while
        trials train to the end (``after``)."""
        if not self.per_cost or len(trials) < self.after:
            return None
        return self.expected_cost

    def expected_cost(self, chance: np.ndarray) -> np.ndarray:
        """A new trial's expected epochs, in full trainings, given its chance to beat the best
        complete trial: a trial that would beat it trains to the end, one that would not stops
        at the first rung (as the rungs would decide, knowing its final score)."""
        first = self.at[0]
        return first + (1.0 - first) * np.asarray(chance)

    def threshold(self, before: int) -> float:
        """The chance below which the trial after ``before`` trials stops: ``chance``, or its
        item for that trial (the first for trial ``after + 1``, the last for every later one)."""
        if isinstance(self.chance, tuple):
            return self.chance[min(max(before - self.after, 0), len(self.chance) - 1)]
        return self.chance

    def epochs(self, full: int) -> list[int]:
        """The epochs of the rungs for a task of ``full`` epochs (those below ``full``)."""
        return sorted({e for f in self.at if (e := max(1, round(f * full))) < full})

    def stop_at(
        self,
        sampler: TransferGPSampler,
        trials: Sequence[tuple[Any, ...]],
        config: Mapping[str, Any],
        score_at: Callable[[int], float | None],
        full: int,
        left: int | None = None,
    ) -> int | None:
        """The rung (epochs) at which the trial of ``config`` after ``trials`` stops, ``None``
        when it trains to the end; ``score_at(e)`` trains it to ``e`` epochs and gives its
        score there (``None`` or NaN when it failed: the full training then says how).
        ``left``: the epochs left in the budget as the trial starts (``None``: no end); with
        ``fits``, it goes on from any rung after which fewer than ``full`` would be left."""
        if len(trials) < self.after:
            return None
        for epochs in self.epochs(full):
            if self.fits and left is not None and left - epochs < full:
                return None  # what stopping saves would train nothing to the end
            value = score_at(epochs)
            if value is None or not math.isfinite(value):
                return None
            chance = sampler.improvement_chance([*trials, (config, value, epochs)], config)
            if chance < self.threshold(len(trials)):
                return epochs
        return None

    def resumed(
        self,
        sampler: TransferGPSampler,
        trials: Sequence[tuple[Any, ...]],
        config: Mapping[str, Any],
        full: int,
    ) -> int | None:
        """Freeze-thaw: the index in ``trials`` of a trial stopped at a rung to train on to the
        end instead of starting ``config`` (the next proposal), ``None`` to start it (or when
        ``resume`` is off). A stopped trial is resumed when its expected improvement over the
        best complete trial (:meth:`TransferGPSampler.expected_improvements`, given its early
        score) per epoch left to train is above that of ``config`` per full training: as the
        best rises and the proposals' expected gains shrink, a trial stopped when its chance
        was low may become the best use of the next epochs."""
        if not self.resume:
            return None
        stopped = [
            i
            for i, t in enumerate(trials)
            if len(t) > 2 and t[2] is not None and t[1] is not None and math.isfinite(t[1])
        ]
        if not stopped or all(e is not None for _, _, e in _seen(trials)):
            return None
        configs = [trials[i][0] for i in stopped]
        gains = sampler.expected_improvements(trials, [*configs, config])
        left = np.array([full - int(trials[i][2]) for i in stopped], dtype=np.float64)
        rates = gains[:-1] / np.maximum(left, 1.0)
        best = int(np.argmax(rates))
        return stopped[best] if rates[best] > gains[-1] / full else None


RUNGS = Rungs()
"""Budget-aware transfer GP's default rungs."""


class TransferGPSampler(BaseSampler):
    """Transfer Bayesian optimisation over :class:`TransferCandidates`, free of the tasks' score
    scales.

    Each meta-train task's scores are standardised (its own mean and standard deviation over
    the candidates), so that no task weighs by its spread. The test task's score is modelled as
    ``y(c) = a + s * g(c)``: ``g`` a Gaussian process whose prior mean and covariance over
    configurations are the standardised tasks' mean and covariance (plus a small RBF term on the
    encoded configuration, for what the tasks do not share), ``a`` the task's level (a normal
    prior: the meta-train tasks' means) and ``s`` its scale (a log-normal prior: their standard
    deviations). Given the study's finished trials, the next configuration is the untried one of
    highest expected improvement, averaged over the posterior of ``s`` on a grid.

    Trials come in three stages:

    - the first ``start`` follow the greedy portfolio (each the candidate that best complements
      those tried, in each task's min-max units): with one score seen, a GP's second choice is
      a neighbour of the first where a portfolio's is a hedge. With ``hedge="posterior"`` (the
      default) each task counts as likely as the scores so far make it (the mixture's
      posterior, :meth:`_task_posterior`), not alike (``"uniform"``);
    - up to trial ``mixture``, expected improvement if the test task is one of the meta-train
      tasks, affinely (:meth:`_mixture_improvement`): a few scores tell which task it looks
      like, and that task's best is played;
    - then the GP's, which refines around the best trials. Once ``patience`` trials in a row
      scored the best without raising it (by ``tol`` of the scores' range), expected
      improvement is taken over the best plus ``xi`` times the task's scale until a trial
      raises the best: on a plateau (a decision tree's score is flat in its parameters over
      wide ranges) plain expected improvement proposes near-copies of its best for good
      (:meth:`_stalled`; ``patience=0``: never).

    Each stage was chosen by measuring it on LCBench and rbv2_rpart (README, "Transfer GP,
    version 2").

    It chooses among the candidates and, when ``transfer.meta`` scores any configuration on the
    meta-train tasks (a surrogate), also among ``local`` configurations drawn around the best
    trials so far (Gaussian steps in the encoded space, some snapped to a bound): a sample of the
    space has no configuration near the bounds where a task's best often lies. In the portfolio
    and mixture stages it searches ``rounds`` more times around the best choices
    (:meth:`_refine`). A trial of a
    configuration outside the candidates (a policy's, before a handover) counts with its
    meta-train scores from ``meta``, or those of its nearest candidate.

    Scores are the backend's own: the test task's y_min / y_max are unknown to a tuner. A failed
    trial is never proposed again and adds no observation. A trial a pruner stopped counts with
    the final score the best complete trial's curve would have given it (its last value plus
    that trial's gain from the same epoch on): read as nothing, transfer GP under a pruner kept
    proposing near what was pruned (README, "Transfer GP under a pruner").

    A trial trained for fewer epochs than the task's (``(config, score, epochs)`` in
    :meth:`next_config`) is read for what it is when ``transfer.meta`` scores configurations
    at any epoch (a surrogate that predicts every epoch): the score after ``epochs`` of the
    configuration on each meta-train task takes the place of its final one, so the tasks'
    covariance between early and final scores says how much the early score tells about the
    final one, and on which configurations. Such a trial never counts as the best found (the
    improvement is over the best complete trial). :meth:`improvement_chance` says how likely a
    trial stopped so far is to beat the best complete one if trained to the end: the bench's
    budget-aware transfer GP (:class:`Rungs`) continues a trial only while it is likely enough.

    ``rbf`` may be a list: the RBF term's weight is then weighed by the evidence, beside the
    scale. Measured for less optimistic late proposals, it did not help and is off (README,
    "Two priors for less optimistic late proposals").
    """

    SCALES = np.linspace(-2.5, 2.5, 11)
    """Where the scale's posterior is evaluated: prior standard deviations of ``log s``."""

    def __init__(
        self,
        space: SearchSpace,
        transfer: TransferCandidates,
        *,
        seed: int | None = None,
        rbf: float | Sequence[float] = 0.04,
        length: float = 0.3,
        noise: float = 0.002,
        local: int = 300,
        rounds: int = 5,
        start: int = 2,
        mixture: int = 5,
        tau: float = 0.3,
        patience: int = 5,
        xi: float = 0.1,
        tol: float = 0.003,
        hedge: str = "posterior",
    ) -> None:
        if transfer.values is None:
            raise ValueError("transfer_gp needs the candidates' scores on the meta-train tasks")
        self.space, self.transfer, self.seed = space, transfer, seed
        self.local, self.rounds, self.start = local, rounds, start
        self.mixture, self.tau = mixture, tau
        if hedge not in ("posterior", "uniform"):
            raise ValueError(f"hedge must be 'posterior' or 'uniform', got {hedge!r}")
        self.patience, self.xi, self.tol, self.hedge = patience, xi, tol, hedge
        rbfs = np.atleast_1d(np.asarray(rbf, dtype=np.float64))
        if rbfs.ndim != 1 or not len(rbfs) or not np.all(np.isfinite(rbfs) & (rbfs >= 0)):
            raise ValueError(f"rbf must be a weight >= 0 or a list of such, got {rbf!r}")
        self._rbfs, self._noise, self._length = rbfs, noise, length
        values = np.asarray(transfer.values, dtype=np.float64)
        std = values.std(1)
        spread = std > 0  # a task that scores every candidate alike has no shape
        self._level, self._scale = values.mean(1), np.where(spread, std, 1.0)
        self._z = self._standardise(values)  # [task, candidate]
        self._z_lo, self._z_range = self._z.min(1), np.maximum(np.ptp(self._z, 1), 1e-12)
        log_scales = np.log(std[spread]) if spread.any() else np.zeros(1)
        self._log_scale = (float(log_scales.mean()), max(float(log_scales.std()), 0.1))
        self._level_prior = (float(self._level.mean()), max(float(self._level.var()), 1e-12))
        self._x, self._index = transfer.encoded(space)
        self._seen: dict[str, np.ndarray] = {}  # key: standardised scores on the tasks
        self._seen_at: dict[tuple[str, int], np.ndarray] = {}  # the same after some epochs
        self._random = RandomSampler(seed=seed)

    def reseed_rng(self) -> None:
        self._random.reseed_rng()

    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, Any]:
        return self.space.to_optuna()

    def _standardise(self, values: np.ndarray) -> np.ndarray:
        return (values - self._level[:, None]) / self._scale[:, None]

    def _prior(self, configs: Sequence[Mapping[str, Any]], keep: bool = True) -> np.ndarray:
        """Configurations' standardised scores on the meta-train tasks ``[t, i]``; those of
        configurations outside the candidates are kept for later calls when ``keep`` (trials:
        they are read at every proposal), not for the ones drawn to choose among."""
        if not keep and self.transfer.meta is not None:  # a candidate scores its own values
            scores = self.transfer.meta([dict(c) for c in configs])
            return self._standardise(np.asarray(scores, dtype=np.float64))
        new = {
            key: dict(c)
            for c in configs
            if (key := config_key(c)) not in self._index and key not in self._seen
        }
        if new and self.transfer.meta is not None:
            scores = np.asarray(self.transfer.meta(list(new.values())), dtype=np.float64)
            for key, z in zip(new, self._standardise(scores).T, strict=True):
                self._seen[key] = z
        elif new:  # the nearest candidate's scores
            for key, c in new.items():
                nearest = int(np.argmin(((self._x - self.space.encode(c)) ** 2).sum(1)))
                self._seen[key] = self._z[:, nearest]
        return np.stack(
            [
                self._z[:, i]
                if (i := self._index.get(key := config_key(c))) is not None
                else self._seen[key]
                for c in configs
            ],
            axis=1,
        )

    def _observed_prior(self, seen: Sequence[_Seen]) -> np.ndarray:
        """The standardised meta-train scores ``[t, i]`` of what was observed: a complete
        trial's final ones, a trial read after ``e`` epochs those after ``e`` epochs."""
        if all(e is None for _, _, e in seen):
            return self._prior([c for c, _, _ in seen])
        if self.transfer.meta is None:
            raise ValueError(
                "transfer_gp reads a trial trained for fewer epochs only with the meta-train "
                "tasks' scores at any epoch (transfer.meta: a surrogate)"
            )
        complete = [c for c, _, e in seen if e is None]
        finals = iter(self._prior(complete).T) if complete else iter(())
        columns = []
        for c, _, e in seen:
            if e is None:
                columns.append(next(finals))
                continue
            key = (config_key(c), int(e))
            if key not in self._seen_at:
                scores = self.transfer.meta([dict(c)], epoch=int(e))
                self._seen_at[key] = self._standardise(np.asarray(scores, dtype=np.float64))[:, 0]
            columns.append(self._seen_at[key])
        return np.stack(columns, axis=1)

    def _around(self, best: Sequence[Mapping[str, Any]], rng: np.random.Generator) -> list[Any]:
        """``local`` configurations near ``best``: Gaussian steps of 0.05 or 0.15 in the encoded
        space, each coordinate snapped to 0 or 1 with probability 0.1."""
        x = np.array([self.space.encode(c) for c in best])
        x = x[rng.integers(len(x), size=self.local)]
        step = rng.choice([0.05, 0.15], size=(self.local, 1))
        x = x + rng.normal(size=x.shape) * step
        snap = rng.random(x.shape) < 0.1
        x = np.where(snap, np.round(rng.random(x.shape)), x)
        return [self.space.decode(v) for v in np.clip(x, 0.0, 1.0)]

    def next_config(
        self,
        trials: Sequence[tuple[Any, ...]],
        cost: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> dict[str, Any] | None:
        """The configuration to try after ``trials`` (configuration, score to maximise, NaN
        for a failure, or ``None`` for a trial under way; a third item, when not ``None``, the
        epochs the score was read after, for a trial stopped before the task's epochs);
        ``None`` when every one it can choose among was tried (the trial is then sampled at
        random). With ``cost`` (each choice's chance to beat the best complete trial to its
        expected cost, in full trainings: :meth:`Rungs.expected_cost`), the mixture's and the
        GP's expected improvement is taken per expected cost: a choice likely to be stopped
        early costs less."""
        tried = {config_key(t[0]) for t in trials}
        seen = _seen(trials)
        rng = np.random.default_rng([self.seed or 0, len(trials)])
        stage: Callable[[np.ndarray, np.ndarray], np.ndarray]
        if len(trials) < self.start or not seen:
            # what the tried ones cover: a failure (NaN) covers nothing, a trial under way will
            so_far = self._so_far([t[0] for t in trials if t[1] is None or np.isfinite(t[1])])
            weights = self._task_posterior(seen) if seen and self.hedge == "posterior" else None
            z, x, more = self._z, self._x, []
            stage = lambda z, x: self._complement(z, so_far, weights)  # noqa: E731
        else:
            z, x, more = self._choices(seen, tried, rng)
            if len(trials) < self.mixture:
                stage = lambda z, x: self._mixture_improvement(seen, z, cost)  # noqa: E731
            else:
                xi = self.xi if self._stalled([y for _, y, e in seen if e is None]) else 0.0
                stage = lambda z, x: self._expected_improvement(seen, z, x, xi, cost)  # noqa: E731
        acquisition = stage(z, x)
        acquisition[[self._index[k] for k in tried if k in self._index]] = -np.inf
        if len(trials) < self.mixture:
            more, acquisition = self._refine(stage, more, acquisition, tried, rng)
        return _argmax([*self.transfer.configs, *more], acquisition)

    def _refine(
        self,
        stage: Callable[[np.ndarray, np.ndarray], np.ndarray],
        more: list[dict[str, Any]],
        acquisition: np.ndarray,
        tried: set[str],
        rng: np.random.Generator,
    ) -> tuple[list[dict[str, Any]], np.ndarray]:
        """``rounds`` of local search on the acquisition (the portfolio and mixture stages'):
        each draws ``local`` configurations around the 3 best choices so far and adds them to
        the choices. A random sample of the space is thin where the best configurations lie (at
        bounds, in narrow ridges); on LCBench and rbv2_rpart the refined portfolio's first
        trials beat the best of 10,000 candidates on held-out tasks (README, "Refined
        proposals"). The GP stage, proposing 25 of 30 trials, searches one round around the
        best trials (:meth:`_choices`): more rounds there cost 3 x the time, and changed K = 10
        within noise on the 6 held-out tasks they were tried on."""
        if self.transfer.meta is None or self.local <= 0:
            return more, acquisition
        n_candidates = len(self.transfer.configs)
        known = tried | {config_key(c) for c in more}
        for _ in range(self.rounds):
            top = np.argsort(-acquisition)[:3]
            top = top[np.isfinite(acquisition[top])]
            if not len(top):
                break
            best = [
                self.transfer.configs[i] if i < n_candidates else more[i - n_candidates]
                for i in top
            ]
            new = []
            for c in self._around(best, rng):
                if (key := config_key(c)) not in known and key not in self._index:
                    known.add(key)
                    new.append(c)
            if not new:
                continue
            x_new = np.array([self.space.encode(c) for c in new])
            acquisition = np.concatenate([acquisition, stage(self._prior(new, keep=False), x_new)])
            more = [*more, *new]
        return more, acquisition

    def _so_far(self, tried: Sequence[Mapping[str, Any]]) -> np.ndarray | None:
        """Each task's best min-max score among ``tried`` (``None`` with nothing tried)."""
        if not tried:
            return None
        return ((self._prior(tried) - self._z_lo[:, None]) / self._z_range[:, None]).max(1)

    def _complement(
        self, z: np.ndarray, so_far: np.ndarray | None, weights: np.ndarray | None = None
    ) -> np.ndarray:
        """Each choice's (``z``: its standardised scores ``[t, c]``) mean over the tasks
        (weighted by ``weights``, default alike) of the best min-max score of the tried ones
        (``so_far``) and it: the greedy portfolio's next step (with nothing tried, the
        best-average one)."""
        scores = (z - self._z_lo[:, None]) / self._z_range[:, None]
        if so_far is not None:
            scores = np.maximum(scores, so_far[:, None])
        return scores.mean(0) if weights is None else weights @ scores

    def _choices(
        self,
        seen: Sequence[_Seen],
        tried: set[str],
        rng: np.random.Generator,
    ) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
        """Standardised scores on the tasks ``[t, c]`` and encodings ``[c, d]`` of what it
        chooses among: the candidates, then the untried local configurations it drew around the
        3 best trials (the third item)."""
        z, x = self._z, self._x
        more: list[dict[str, Any]] = []
        if self.transfer.meta is not None and self.local > 0:
            best = [c for c, _, _ in sorted(seen, key=lambda s: -s[1])[:3]]
            more = [c for c in self._around(best, rng) if config_key(c) not in tried]
            if more:
                z = np.concatenate([z, self._prior(more, keep=False)], axis=1)
                x = np.concatenate([x, [self.space.encode(c) for c in more]])
        return z, x, more

    def _mixture_fits(
        self, seen: Sequence[_Seen]
    ) -> tuple[list[tuple[float, np.ndarray, float]], np.ndarray]:
        """The mixture's fit of the scores so far (:meth:`_mixture_improvement`): per scale
        ``s`` on the grid, each task's level estimate ``a`` and the predictive variance; and
        the posterior weights ``[scale, task]``."""
        z_o = self._observed_prior(seen)
        y = np.array([y for _, y, _ in seen], dtype=np.float64)
        n = len(y)
        level, level_var = self._level_prior
        log_mean, log_sd = self._log_scale
        grid = np.linspace(-2.0, 2.0, 7)
        fits, log_post = [], []
        for g, s in zip(grid, np.exp(log_mean + log_sd * grid), strict=True):
            noise = (self.tau * s) ** 2
            r = y[None, :] - s * z_o  # [t, n]: the level plus noise, if it is task t
            precision = 1 / level_var + n / noise
            a = (level / level_var + r.sum(1) / noise) / precision
            d = r - level
            quad = (d**2).sum(1) / noise - (d.sum(1) / noise) ** 2 / precision
            log_det = n * np.log(noise) + np.log(1 + n * level_var / noise)
            fits.append((float(s), a, 1 / precision + noise))
            log_post.append(-0.5 * (quad + log_det + g * g))
        weights = np.exp(np.array(log_post) - np.max(log_post))
        return fits, weights / weights.sum()

    def _task_posterior(self, seen: Sequence[_Seen]) -> np.ndarray:
        """How likely each meta-train task is to be the test task, given the scores so far
        (the mixture's posterior, summed over the scale)."""
        return self._mixture_fits(seen)[1].sum(0)

    def _mixture_improvement(
        self,
        seen: Sequence[_Seen],
        z: np.ndarray,
        cost: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> np.ndarray:
        """Expected improvement if the test task is one of the meta-train tasks, affinely:
        ``y(c) = a + s * z_t(c) + e``, ``e`` of standard deviation ``tau * s``, ``a`` and ``s``
        with the GP's priors (``s`` on a grid, ``a`` integrated out), averaged over the
        posterior of ``(t, s)``: which task the scores so far look like. Per expected cost
        with ``cost`` (:meth:`next_config`)."""
        fits, weights = self._mixture_fits(seen)
        best = _best(seen)
        acquisition, chance = np.zeros(z.shape[1]), np.zeros(z.shape[1])
        for (s, a, var), w in zip(fits, weights, strict=True):
            keep = w > 1e-4 * weights.max()  # tasks the scores rule out cost nothing
            if keep.any():
                mean = a[keep, None] + s * z[keep]
                acquisition += w[keep] @ _improvement(mean, var, best)
                if cost is not None:
                    chance += w[keep] @ _chance(mean, var, best)
        return acquisition if cost is None else acquisition / cost(chance)

    def _stalled(self, ys: Sequence[float]) -> bool:
        """Whether the GP is stuck on a plateau (``ys``: the scores in trial order): at some
        point the last ``patience`` trials all scored the best (within ``tol`` of the scores'
        range) without raising it, and no trial since has raised the best by more than that."""
        if self.patience <= 0:
            return False
        y = np.asarray(ys, dtype=np.float64)
        p, stuck_at = self.patience, None
        top = np.maximum.accumulate(y)  # the best after each trial
        tol = self.tol * np.maximum(top - np.minimum.accumulate(y), 1e-12)
        for m in range(p, len(y)):  # after trial m + 1
            if stuck_at is not None and top[m] > stuck_at + tol[m]:
                stuck_at = None
            last = y[m - p + 1 : m + 1]
            if (
                stuck_at is None
                and np.all(top[m] - last <= tol[m])
                and top[m] <= top[m - p] + tol[m]
            ):
                stuck_at = top[m]
        return stuck_at is not None

    def _expected_improvement(
        self,
        seen: Sequence[_Seen],
        z: np.ndarray,
        x: np.ndarray,
        xi: float = 0.0,
        cost: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> np.ndarray:
        """The GP's expected improvement of each choice (``z``, ``x``: :meth:`_choices`) over
        the best score plus ``xi`` times the task's scale; per expected cost with ``cost``
        (:meth:`next_config`)."""
        best = _best(seen)
        weights, scales, mu, var = self._posterior(seen, z, x)
        improvement = [
            _improvement(m, v, best + xi * s) for s, m, v in zip(scales, mu, var, strict=True)
        ]
        acquisition = weights @ np.array(improvement)
        if cost is None:
            return acquisition
        return acquisition / cost(weights @ _chance(mu, var, best))

    def improvement_chance(
        self, trials: Sequence[tuple[Any, ...]], config: Mapping[str, Any]
    ) -> float:
        """How likely ``config``, trained for all the epochs, is to score above the best
        complete trial of ``trials`` (as in :meth:`next_config`; among them, typically,
        ``config`` itself read after the epochs it has had so far), under the GP's posterior
        (1 with no complete trial)."""
        seen = _seen(trials)
        if not any(e is None for _, _, e in seen):
            return 1.0
        weights, _, mu, var = self._posterior(seen, *self._final_choices([config]))
        return float(weights @ _chance(mu[:, 0], var[:, 0], _best(seen)))

    def expected_improvements(
        self, trials: Sequence[tuple[Any, ...]], configs: Sequence[Mapping[str, Any]]
    ) -> np.ndarray:
        """Each of ``configs``' expected improvement over the best complete trial of ``trials``
        if trained for all the epochs, under the GP's posterior given ``trials`` (among them,
        for a trial stopped early, its own early score)."""
        seen = _seen(trials)
        if not seen:
            raise ValueError("expected_improvements needs at least one observed trial")
        return self._expected_improvement(seen, *self._final_choices(configs))

    def _final_choices(self, configs: Sequence[Mapping[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
        """``configs`` as choices of :meth:`_posterior`: their standardised final scores on the
        meta-train tasks ``[t, c]`` (kept: they are asked again at each rung and proposal) and
        their encodings ``[c, d]``."""
        return self._prior(configs), np.array([self.space.encode(c) for c in configs])

    def _posterior(
        self, seen: Sequence[_Seen], z: np.ndarray, x: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The GP's posterior of each choice's score (``z``, ``x``: :meth:`_choices`) given
        ``seen``, per scale ``s`` of the grid and RBF weight (``rbf``, one or a grid): its
        weights ``[h]``, the scales ``[h]``, the means and the variances ``[h, c]``, ``h`` over
        the pairs (scale, RBF weight)."""
        z_o = self._observed_prior(seen)
        x_o = np.array([self.space.encode(c) for c, _, _ in seen])
        y = np.array([y for _, y, _ in seen], dtype=np.float64)
        # g's covariance among the trials, with the candidates, and each candidate's variance:
        # what the tasks share, plus an RBF term of each weight for what they do not
        z_mean, mean_o = z.mean(0), z_o.mean(0)
        z_dev, dev_o = z - z_mean, z_o - mean_o
        t_oo, t_co = dev_o.T @ dev_o / len(z), z_dev.T @ dev_o / len(z)
        t_cc = (z_dev**2).mean(0)
        noise = self._noise * np.eye(len(y))
        r_oo, r_co = self._kernel(x_o, x_o), self._kernel(x, x_o)
        level, level_var = self._level_prior
        log_mean, log_sd = self._log_scale
        scales = np.exp(log_mean + log_sd * self.SCALES)
        log_post, means, variances, pairs = [], [], [], []
        for rbf in self._rbfs:
            k_oo, k_co, k_cc = t_oo + rbf * r_oo + noise, t_co + rbf * r_co, t_cc + rbf
            for s in scales:
                chol = np.linalg.cholesky(s * s * k_oo + level_var)
                r = np.linalg.solve(chol, y - level - s * mean_o)
                prior = -0.5 * ((np.log(s) - log_mean) / log_sd) ** 2
                log_post.append(prior - 0.5 * r @ r - np.log(np.diag(chol)).sum())
                cross = s * s * k_co + level_var
                means.append(level + s * z_mean + cross @ np.linalg.solve(chol.T, r))
                w = np.linalg.solve(chol, cross.T)
                variances.append(np.maximum(s * s * k_cc + level_var - (w**2).sum(0), 1e-12))
                pairs.append(s)
        weights = np.exp(np.array(log_post) - max(log_post))
        return weights / weights.sum(), np.array(pairs), np.array(means), np.array(variances)

    def _kernel(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        d2 = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
        return np.exp(-d2 / (2 * self._length**2))

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, Any]
    ) -> dict[str, Any]:
        sign = 1.0 if study.direction == optuna.study.StudyDirection.MAXIMIZE else -1.0
        history = [t for t in study.get_trials(deepcopy=False) if t.number != trial.number]
        complete = [t for t in history if t.state == TrialState.COMPLETE and t.value is not None]
        best = max(complete, key=lambda t: sign * t.value) if complete else None
        trials = [  # failed (NaN), under way (None): tried, nothing observed
            (self.space.from_optuna_params(t.params), _observed(t, sign, best))
            for t in history
            if t.params
        ]
        config = self.next_config(trials)
        if config is None:
            return {}
        params = self.space.optuna_params(config)
        return {k: v for k, v in params.items() if k in search_space}

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, name: str, dist: Any
    ) -> Any:
        return self._random.sample_independent(study, trial, name, dist)


_Seen = tuple[Mapping[str, Any], float, "int | None"]
"""An observed trial: configuration, score, and the epochs it was read after (``None``:
complete)."""


def _seen(trials: Sequence[tuple[Any, ...]]) -> list[_Seen]:
    """The observed ones of ``trials`` (configuration, score, optional epochs): failures (NaN)
    and trials under way (``None``) left out."""
    return [
        (t[0], float(t[1]), t[2] if len(t) > 2 else None)
        for t in trials
        if t[1] is not None and np.isfinite(t[1])
    ]


def _best(seen: Sequence[_Seen]) -> float:
    """The best complete trial's score (of any trial, when none is complete)."""
    complete = [y for _, y, e in seen if e is None]
    return max(complete or [y for _, y, _ in seen])


def _observed(trial: FrozenTrial, sign: float, best: FrozenTrial | None = None) -> float | None:
    """A trial's score to maximise; NaN when it failed, ``None`` when under way. A pruned trial
    scores its last reported value plus what ``best`` (the best complete trial) gained from that
    epoch to its end: a pruner stops a trial that lies below the others there, so this says how
    far below the best it would have ended. ``None`` when ``best`` did not report that epoch
    (nothing observed, as for a trial under way)."""
    if trial.state == TrialState.COMPLETE:
        return sign * trial.value
    if trial.state == TrialState.FAIL:
        return math.nan
    if trial.state != TrialState.PRUNED or not trial.intermediate_values or best is None:
        return None
    step = max(trial.intermediate_values)
    value = sign * trial.intermediate_values[step]
    if step not in best.intermediate_values or not math.isfinite(value):
        return None
    return value + sign * (best.value - best.intermediate_values[step])


def _improvement(mean: np.ndarray, var: Any, best: float) -> np.ndarray:
    """Expected improvement over ``best`` of normal beliefs."""
    sd = np.sqrt(var)
    u = (mean - best) / sd
    return (mean - best) * norm.cdf(u) + sd * norm.pdf(u)


def _chance(mean: np.ndarray, var: Any, best: float) -> np.ndarray:
    """Probability of scoring above ``best`` of normal beliefs."""
    return norm.sf((best - mean) / np.sqrt(var))


def _argmax(configs: Sequence[Any], acquisition: np.ndarray) -> dict[str, Any] | None:
    """The configuration of highest acquisition; ``None`` when all are ruled out (-inf)."""
    best = int(np.argmax(acquisition))
    return None if acquisition[best] == -np.inf else dict(configs[best])


def make_sampler(
    method: str,
    *,
    space: SearchSpace,
    seed: int,
    n_trials: int,
    transfer: TransferCandidates | None = None,
    policy: Any = None,
    task: Any = None,
    fixed: Mapping[str, Mapping[str, Any]] | None = None,
    parallel: bool = False,
    then: str | None = None,
    after: int | None = None,
) -> BaseSampler:
    """The optuna sampler of a benchmark method; a name in ``fixed`` proposes that
    configuration at every trial. A policy with ``then`` (one of :data:`PRUNABLE`) proposes
    the first ``after`` trials (default :func:`~hporl.sampler.handover_after`), and that sampler
    the rest (:meth:`~hporl.sampler.HandoverSampler.after_policy`)."""
    if fixed and method in fixed:
        return FixedSequenceSampler(space, [fixed[method]] * n_trials, seed=seed)
    if method in PRUNABLE:
        return optuna_sampler(method, seed=seed, parallel=parallel)
    if method == "transfer_gp":
        assert transfer is not None
        return TransferGPSampler(space, transfer, seed=seed)
    if method in ("best_average", "portfolio"):
        assert transfer is not None
        configs = (
            transfer.best_average(n_trials)
            if method == "best_average"
            else transfer.portfolio(n_trials)
        )
        return FixedSequenceSampler(space, configs, seed=seed)
    if policy is not None:  # "policy", or a named one of the bench's ``policies``
        sampler = PolicySampler(policy, task=task, seed=seed)
        if then is None:
            return sampler
        if then == TRANSFER_THEN:  # the policy's first trials, then transfer GP
            assert transfer is not None
            return HandoverSampler(
                sampler,
                TransferGPSampler(space, transfer, seed=seed),
                after=handover_after(policy, after),
            )
        return HandoverSampler.after_policy(
            sampler, then, after=after, seed=seed, parallel=parallel
        )
    raise ValueError(f"unknown method {method!r}")
