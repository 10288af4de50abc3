"""The peers, all as optuna samplers behind one runner."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
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
    "FixedSequenceSampler",
    "TransferCandidates",
    "TransferGPSampler",
    "make_sampler",
    "split_method",
]

METHODS = ("policy", "random", "tpe", "gp", "cmaes", "best_average", "portfolio", "transfer_gp")
TRANSFER = ("best_average", "portfolio", "transfer_gp")
"""Methods that read the meta-train tasks' scores of :class:`TransferCandidates`."""
TRANSFER_THEN = "transfer_gp"
"""What a bench policy can hand over to besides optuna's samplers (``then: transfer_gp``)."""
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
    y_min), when known. ``meta(configs)``: the meta-train tasks' scores ``[t, i]`` of any
    configurations (a surrogate's), when it can be had cheaply.
    """

    def __init__(
        self,
        configs: list[dict[str, Any]],
        regret: np.ndarray,
        values: np.ndarray | None = None,
        meta: Callable[[list[dict[str, Any]]], np.ndarray] | None = None,
    ) -> None:
        self.configs = configs
        self.regret = regret
        self.values = values
        self.meta = meta

    def best_average(self, n: int) -> list[dict[str, Any]]:
        """Candidates by increasing mean regret: the first is the single best-average config."""
        order = np.argsort(self.regret.mean(axis=0), kind="stable")
        return [self.configs[i] for i in order[:n]]

    def portfolio(self, n: int) -> list[dict[str, Any]]:
        """Greedy portfolio: each next candidate minimises the mean regret of the best so far."""
        return [self.configs[i] for i in greedy_portfolio(-self.regret, n)]


class TransferGPSampler(BaseSampler):
    """Transfer Bayesian optimisation over :class:`TransferCandidates`: a Gaussian process whose
    prior mean and covariance over configurations are the meta-train tasks' mean and covariance
    of scores (plus a small RBF term on the encoded configuration, for what the tasks do not
    share), conditioned on the study's finished trials; the next configuration is the untried
    one of highest expected improvement (the first, with nothing seen, the candidate of highest
    prior mean).

    It chooses among the candidates and, when ``transfer.meta`` scores any configuration on the
    meta-train tasks (a surrogate), also among ``local`` configurations drawn around the best
    trials so far (Gaussian steps in the encoded space, some snapped to a bound): a sample of the
    space has no configuration near the bounds where a task's best often lies. A trial of a
    configuration outside the candidates (a policy's, before a handover) counts with its
    meta-train scores from ``meta``, or those of its nearest candidate.

    Scores are the backend's own (LCBench's accuracy, for example), not normalised: the test
    task's y_min / y_max are unknown to a tuner. A failed trial is never proposed again and adds
    no observation. ``benchmarks/transfer_bounds.py`` measures the rule offline.
    """

    def __init__(
        self,
        space: SearchSpace,
        transfer: TransferCandidates,
        *,
        seed: int | None = None,
        rbf: float = 0.04,
        length: float = 0.3,
        noise: float = 0.002,
        local: int = 1000,
    ) -> None:
        if transfer.values is None:
            raise ValueError("transfer_gp needs the candidates' scores on the meta-train tasks")
        self.space, self.transfer, self.seed, self.local = space, transfer, seed, local
        values = np.asarray(transfer.values, dtype=np.float64)
        self._mean = values.mean(0)
        self._dev = values - self._mean
        scale = float((self._dev**2).mean()) or 1.0
        self._rbf, self._noise, self._length = rbf * scale, noise * scale, length
        self._x = np.array([space.encode(c) for c in transfer.configs], dtype=np.float64)
        self._index = {config_key(c): i for i, c in enumerate(transfer.configs)}
        self._seen: dict[str, tuple[np.ndarray, float]] = {}  # key: (scores' deviations, mean)
        self._random = RandomSampler(seed=seed)

    def reseed_rng(self) -> None:
        self._random.reseed_rng()

    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, Any]:
        return self.space.to_optuna()

    def _prior(self, configs: Sequence[Mapping[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
        """Configurations' deviations from their prior mean on the meta-train tasks ``[t, i]``
        and their prior means ``[i]``."""
        new = {
            key: dict(c)
            for c in configs
            if (key := config_key(c)) not in self._index and key not in self._seen
        }
        if new and self.transfer.meta is not None:
            scores = np.asarray(self.transfer.meta(list(new.values())), dtype=np.float64)
            for j, key in enumerate(new):
                self._seen[key] = (
                    scores[:, j] - scores[:, j].mean(),
                    scores[:, j].mean(),
                )
        elif new:  # the nearest candidate's scores
            for key, c in new.items():
                nearest = int(np.argmin(((self._x - self.space.encode(c)) ** 2).sum(1)))
                self._seen[key] = (self._dev[:, nearest], float(self._mean[nearest]))
        dev, mean = [], []
        for c in configs:
            key = config_key(c)
            if key in self._index:
                dev.append(self._dev[:, self._index[key]])
                mean.append(self._mean[self._index[key]])
            else:
                dev.append(self._seen[key][0])
                mean.append(self._seen[key][1])
        return np.stack(dev, axis=1), np.array(mean)

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
        self, trials: Sequence[tuple[Mapping[str, Any], float | None]]
    ) -> dict[str, Any] | None:
        """The configuration to try after ``trials`` (configuration, score to maximise, or
        ``None`` for a failure or a trial under way); ``None`` when every one it can choose
        among was tried (the trial is then sampled at random)."""
        tried = {config_key(c) for c, _ in trials}
        seen = [(c, y) for c, y in trials if y is not None and np.isfinite(y)]
        if not seen:
            acquisition = self._mean.copy()
            acquisition[[self._index[k] for k in tried if k in self._index]] = -np.inf
            return _argmax(self.transfer.configs, acquisition)
        configs: list[Any] = list(self.transfer.configs)
        dev, mean, x = self._dev, self._mean, self._x
        if self.transfer.meta is not None and self.local > 0:
            rng = np.random.default_rng([self.seed or 0, len(trials)])
            best = [c for c, _ in sorted(seen, key=lambda s: -s[1])[:3]]
            more = [c for c in self._around(best, rng) if config_key(c) not in tried]
            if more:
                dev_m, mean_m = self._prior(more)
                configs += more
                dev = np.concatenate([dev, dev_m], axis=1)
                mean = np.concatenate([mean, mean_m])
                x = np.concatenate([x, [self.space.encode(c) for c in more]])
        dev_o, mean_o = self._prior([c for c, _ in seen])
        x_o = np.array([self.space.encode(c) for c, _ in seen])
        y = np.array([y for _, y in seen], dtype=np.float64)
        n = len(self._dev)
        k_oo = dev_o.T @ dev_o / n + self._rbf * self._kernel(x_o, x_o)
        k_co = dev.T @ dev_o / n + self._rbf * self._kernel(x, x_o)
        chol = np.linalg.cholesky(k_oo + self._noise * np.eye(len(y)))
        alpha = np.linalg.solve(chol.T, np.linalg.solve(chol, y - mean_o))
        mu = mean + k_co @ alpha
        w = np.linalg.solve(chol, k_co.T)
        sd = np.sqrt(np.maximum((dev**2).mean(0) + self._rbf - (w**2).sum(0), 1e-12))
        z = (mu - y.max()) / sd
        acquisition = (mu - y.max()) * norm.cdf(z) + sd * norm.pdf(z)
        acquisition[[self._index[k] for k in tried if k in self._index]] = -np.inf
        return _argmax(configs, acquisition)

    def _kernel(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        d2 = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
        return np.exp(-d2 / (2 * self._length**2))

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, Any]
    ) -> dict[str, Any]:
        sign = 1.0 if study.direction == optuna.study.StudyDirection.MAXIMIZE else -1.0
        trials = [  # failed, pruned or under way: tried, nothing observed
            (
                self.space.from_optuna_params(t.params),
                sign * t.value if t.state == TrialState.COMPLETE else None,
            )
            for t in study.get_trials(deepcopy=False)
            if t.number != trial.number and t.params
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
