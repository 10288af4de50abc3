"""The peers, all as optuna samplers behind one runner."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import optuna
from optuna.samplers import BaseSampler, RandomSampler
from optuna.trial import FrozenTrial

from hporl.pretrain import greedy_portfolio
from hporl.sampler import SAMPLERS, HandoverSampler, PolicySampler, optuna_sampler
from hporl.space import SearchSpace

__all__ = [
    "METHODS",
    "PRUNABLE",
    "PRUNED_METHODS",
    "FixedSequenceSampler",
    "TransferCandidates",
    "make_sampler",
    "split_method",
]

METHODS = ("policy", "random", "tpe", "gp", "cmaes", "best_average", "portfolio")
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

    ``regret[t, c]`` is candidate ``c``'s normalised regret on meta-train task ``t``.
    """

    def __init__(self, configs: list[dict[str, Any]], regret: np.ndarray) -> None:
        self.configs = configs
        self.regret = regret

    def best_average(self, n: int) -> list[dict[str, Any]]:
        """Candidates by increasing mean regret: the first is the single best-average config."""
        order = np.argsort(self.regret.mean(axis=0), kind="stable")
        return [self.configs[i] for i in order[:n]]

    def portfolio(self, n: int) -> list[dict[str, Any]]:
        """Greedy portfolio: each next candidate minimises the mean regret of the best so far."""
        return [self.configs[i] for i in greedy_portfolio(-self.regret, n)]


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
        return HandoverSampler.after_policy(
            sampler, then, after=after, seed=seed, parallel=parallel
        )
    raise ValueError(f"unknown method {method!r}")
