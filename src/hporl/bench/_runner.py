"""The benchmark runner: methods x held-out tasks x seeds, scored by normalised regret."""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import optuna
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from hporl._io import did_you_mean, explain_validation, read_yaml, writable_dir, write_json
from hporl.backends import Backend, TorchBackend, TrialResult
from hporl.backends._base import EpochCallback
from hporl.bench._samplers import (
    METHODS,
    PRUNABLE,
    PRUNED_METHODS,
    TRANSFER,
    TRANSFER_AFTER,
    TRANSFER_THEN,
    Rungs,
    TransferCandidates,
    TransferGPSampler,
    make_sampler,
    split_method,
)
from hporl.evaluation import PRUNERS, Evaluator, make_pruner, pruning_callback
from hporl.exceptions import ConfigError, HporlError
from hporl.rewards import RewardApproach
from hporl.sampler import THEN, Probe, budgeted_choice, handover_after
from hporl.space import SearchSpace, config_key
from hporl.store import TrialStore, storage_url

__all__ = ["BenchConfig", "run"]

logger = logging.getLogger(__name__)

RUN_KEYS = ("then", "after", "pruner", "probe", "rungs")
"""The settings of a bench policy that say how it is run, not how it is made."""


class BenchConfig(BaseModel):
    """A benchmark (the YAML of ``hporl bench``). The first eight keys are a contract."""

    model_config = ConfigDict(extra="forbid")

    benchmark: str = Field(
        description="yahpo/<scenario> (a YAHPO Gym surrogate; lcbench is yahpo/lcbench), or a "
        "built-in suite of real tasks (e.g. tabular, small)"
    )
    train_tasks: list[str] = Field(default_factory=list)
    test_tasks: list[str] = Field(default_factory=list)
    methods: list[str] = Field(
        default_factory=lambda: list(METHODS),
        description=f"{', '.join(METHODS)}, or a name from `fixed`; with budget_unit: epochs "
        f"also a sampler with an optuna pruner: {', '.join(PRUNED_METHODS)} (random, tpe, gp or "
        "cmaes + median, asha or hyperband)",
    )
    budgets: list[int] = Field(default_factory=lambda: [1, 3, 10, 30])
    seeds: int = Field(3, gt=0)
    first_seed: int = Field(
        0,
        ge=0,
        description="the runs' seeds are first_seed .. first_seed + seeds - 1: more seeds of a "
        "bench, run apart and merged (benchmarks/merge_bench.py --methods-apart)",
    )
    policy: dict[str, Any] = Field(default_factory=dict)
    policy_path: str | None = None
    policies: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="more policies as methods, by name: each is meta-trained per fold with its "
        "own settings (the keys of `policy`), or loaded from `path:`; e.g. an older recipe",
    )
    folds: int | None = Field(
        None, ge=2, description="cross-validation over all tasks instead of one split"
    )
    data_dir: str | None = Field(
        None, description="the YAHPO scenario's folder (default: found as yahpo.py says)"
    )
    target: str | None = Field(
        None, description="the YAHPO scenario's output to optimise (default: the scenario's)"
    )
    normalisation_samples: int | None = Field(None, gt=1)
    transfer_candidates: int | None = Field(None, gt=1)
    epochs: int | None = Field(None, gt=0, description="epochs per trial (real-training suites)")
    score: Literal["final", "best"] | None = None
    budget_unit: Literal["trials", "epochs"] = Field(
        "trials",
        description="trials: budgets count full trainings (K); epochs: budgets count epochs "
        "spent over all trials, in full-training equivalents (B x the task's epochs), so that "
        "methods with a pruner (e.g. tpe+asha) stop trials early and spend less per trial",
    )
    storage: str | None = Field(
        None, description="trial store of real-training suites (default OUT/trials.db)"
    )
    parallel: int = Field(1, ge=1, description="trials at once (real-training suites)")
    executor: Literal["local", "ray"] = "local"
    ray_address: str | None = None
    space: str | list[str] | None = Field(
        None,
        description="built-in space name(s) or YAML path(s), composed in order (default: "
        "optimizer for real suites, the scenario's own for a YAHPO surrogate)",
    )
    fixed: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="named configurations of the space, usable as methods (each trial runs it)",
    )
    final_training: bool = Field(
        False,
        description="after each run, train the final model on train+val with the best "
        "configuration for its best epoch count, and report its test metric",
    )

    @classmethod
    def load(cls, source: BenchConfig | Mapping[str, Any] | str | Path) -> BenchConfig:
        if isinstance(source, BenchConfig):
            return source
        name = "bench config"
        if isinstance(source, (str, Path)):
            name = str(source)
            data = read_yaml(source, what="bench", error=ConfigError)
            if not isinstance(data, Mapping):
                raise ConfigError(f"{name}: a bench file must be a mapping of keys")
            source = data
        try:
            config = cls.model_validate(dict(source))
        except ValidationError as err:
            raise ConfigError(f"{name}: {explain_validation(err, cls)}") from None
        try:
            config._check()
        except ConfigError as err:
            raise ConfigError(f"{name}: {err}") from None
        return config

    def _check(self) -> None:
        overlap = sorted(set(self.train_tasks) & set(self.test_tasks))
        if overlap:
            raise ConfigError(
                f"tasks in both train_tasks and test_tasks: {', '.join(overlap)}; a meta-test task must never "
                "reach meta-training"
            )
        if self.folds is None and not self.test_tasks:
            raise ConfigError(
                "test_tasks is empty (or give folds: N for cross-validation over all tasks)"
            )
        for kind, names in (("fixed configuration", self.fixed), ("policy", self.policies)):
            clash = sorted(set(names) & set(METHODS))
            if clash:
                raise ConfigError(f"{kind} {clash[0]!r} has the name of a built-in method")
        for name, settings in (("policy", self.policy), *self.policies.items()):
            self._check_policy_run(name, settings)
        both = sorted(set(self.fixed) & set(self.policies))
        if both:
            raise ConfigError(f"{both[0]!r} is both a fixed configuration and a policy")
        for m in self.methods:
            if m in self.fixed or m in self.policies:
                continue
            if split_method(m)[1] is not None:
                if self.budget_unit != "epochs":
                    raise ConfigError(
                        f"method {m!r} prunes trials: it needs budget_unit: epochs (budgets in "
                        "full-training equivalents of epochs)"
                    )
                if self.parallel > 1:
                    raise ConfigError(
                        f"method {m!r} prunes trials, reading every epoch in this process: "
                        f"parallel must be 1, got {self.parallel}"
                    )
            elif m not in METHODS:
                pruned = PRUNED_METHODS if self.budget_unit == "epochs" else ()
                options = [*METHODS, *pruned, *self.fixed, *self.policies]
                raise ConfigError(
                    f"unknown method {m!r}; methods: {', '.join(options)}."
                    + did_you_mean(m, options)
                )
        scenario = self.scenario
        if self.space is not None and scenario is not None:
            names = [self.space] if isinstance(self.space, str) else self.space
            if names != [scenario]:
                raise ConfigError(
                    f"the {scenario} surrogate knows only the {scenario} space: drop 'space'"
                )
        if self.final_training and scenario is not None:
            raise ConfigError(
                f"final_training needs real training; {self.benchmark} is a surrogate"
            )
        if self.target is not None and scenario is None:
            raise ConfigError(
                f"'target' chooses a YAHPO surrogate's output; {self.benchmark} trains real "
                "models (its metric is each task's own)"
            )
        if any(b < 1 for b in self.budgets) or not self.budgets:
            raise ConfigError(f"budgets must be positive integers, got {self.budgets}")
        transfer = {"policy", *TRANSFER, *self.policies} & set(self.methods)
        if (
            transfer
            and self.folds is None
            and not self.train_tasks
            and not (set(self.methods) & transfer == {"policy"} and self.policy_path)
        ):
            raise ConfigError(f"methods {sorted(transfer)} need train_tasks (meta-training tasks)")

    def _check_policy_run(self, name: str, settings: Mapping[str, Any]) -> None:
        """``then`` / ``after``: the policy proposes ``after`` trials, then ``then`` samples;
        ``pruner``: one of optuna's pruners stops its trials (budgets in epochs); ``probe``:
        how a full-fidelity policy spends a budget in epochs (:class:`~hporl.sampler.Probe`)."""
        where = "policy" if name == "policy" else f"policies.{name}"
        pruner = settings.get("pruner")
        if pruner is not None:
            if pruner not in PRUNERS:
                raise ConfigError(
                    f"{where}.pruner must be one of {', '.join(PRUNERS)}, got {pruner!r}."
                    + did_you_mean(str(pruner), list(PRUNERS))
                )
            if self.budget_unit != "epochs" or self.parallel > 1:
                raise ConfigError(
                    f"{where}.pruner stops trials to save epochs: it needs budget_unit: epochs "
                    "and parallel: 1"
                )
            if settings.get("budget_unit") == "epochs":
                raise ConfigError(
                    f"{where}.pruner: a budget-aware policy chooses how long each trial trains"
                )
        if settings.get("budget_unit") == "epochs" and self.budget_unit != "epochs":
            raise ConfigError(
                f"{where}.budget_unit: epochs (a budget-aware policy) needs the bench's "
                "budget_unit: epochs"
            )
        try:
            Probe.from_setting(settings.get("probe"))
            Rungs.from_setting(settings.get("rungs"))
        except ValueError as err:
            raise ConfigError(f"{where}.{err}") from None
        if settings.get("rungs") not in (None, False):
            if (
                self.budget_unit != "epochs"
                or self.scenario is None
                or not self.transfer_only(name)
            ):
                raise ConfigError(
                    f"{where}.rungs: budget-aware transfer GP (the default where no policy is "
                    "named, on a surrogate with meta-train tasks) stops trials at rungs with "
                    "budget_unit: epochs only"
                )
            if pruner is not None:
                raise ConfigError(f"{where}.rungs and {where}.pruner both stop trials: choose one")
        then, after = self.handover_of(name)
        if after is not None and (
            not isinstance(after, int) or isinstance(after, bool) or after < 0
        ):
            raise ConfigError(f"{where}.after must be a whole number >= 0, got {after!r}")
        if then is None:
            if after is not None:
                raise ConfigError(f"{where}.after needs {where}.then (the sampler handed over to)")
            return
        if then == TRANSFER_THEN:
            self._check_transfer_run(where, name, settings, after)
        elif then not in PRUNABLE:
            choices = [*PRUNABLE, TRANSFER_THEN]
            raise ConfigError(
                f"{where}.then must be one of {', '.join(choices)}, got {then!r}."
                + did_you_mean(str(then), choices)
            )

    def _check_transfer_run(
        self, where: str, name: str, settings: Mapping[str, Any], after: int | None
    ) -> None:
        """A policy method handed over to transfer GP: after a policy's trials (trial budgets
        only), or from the first trial (``after: 0``), where nothing may ask for a policy."""
        if after != 0:
            if self.budget_unit == "epochs":
                raise ConfigError(
                    f"{where}.then: with budget_unit: epochs {TRANSFER_THEN} proposes every "
                    f"trial (after: 0, its default where no policy is named); a policy hands "
                    f"over to one of {', '.join(PRUNABLE)}"
                )
            return
        if self.names_policy(name):
            raise ConfigError(
                f"{where}: after: 0 hands every trial to {TRANSFER_THEN}, so the policy it "
                "names (a path or meta-training settings) would never propose; drop them, "
                "or raise after"
            )
        if settings.get("probe") not in (None, False):
            raise ConfigError(
                f"{where}.probe: {TRANSFER_THEN} trains every trial it proposes fully (or "
                f"under {where}.pruner); probing is for a policy's proposals"
            )

    def handover_of(self, method: str) -> tuple[str | None, int | None]:
        """What a policy method hands over to (``None``: nothing) and after how many of its
        trials (``None``: :func:`~hporl.sampler.handover_after`): its own ``then`` / ``after``.
        By default, on a surrogate with meta-train tasks, a method that names no policy of its
        own (:meth:`names_policy`) is transfer GP from the first trial
        (:data:`TRANSFER_AFTER`), in trials or epochs; one that does, with trial budgets,
        proposes its first trial, then transfer GP; otherwise :data:`~hporl.sampler.THEN`."""
        settings = self.settings_of(method)
        if "then" in settings:
            return settings["then"], settings.get("after")
        meta_train = bool(self.train_tasks) or self.folds is not None
        if self.scenario is not None and meta_train:
            if not self.names_policy(method):
                return TRANSFER_THEN, settings.get("after", TRANSFER_AFTER)
            if self.budget_unit == "trials":
                return TRANSFER_THEN, settings.get("after", 1)
        return THEN, settings.get("after")

    def names_policy(self, method: str) -> bool:
        """Whether a policy method names a policy of its own: a saved one (``policy_path``,
        ``path:``) or settings to meta-train one with (any key but how it is run: ``then``,
        ``after``, ``pruner``, ``probe``, ``rungs``)."""
        settings = self.settings_of(method)
        path = self.policy_path if method == "policy" else settings.get("path")
        return bool(path) or bool(set(settings) - set(RUN_KEYS))

    def transfer_only(self, method: str) -> bool:
        """Whether a policy method is transfer GP from its first trial: its policy would never
        propose, so none is meta-trained or loaded."""
        return self.handover_of(method) == (TRANSFER_THEN, 0)

    def settings_of(self, method: str) -> dict[str, Any]:
        """The settings of a policy method (``policy:``, or its entry in ``policies:``); empty
        for any other method."""
        return dict(self.policy) if method == "policy" else dict(self.policies.get(method, {}))

    @property
    def n_trials(self) -> int:
        return max(self.budgets)

    @property
    def scenario(self) -> str | None:
        """The YAHPO scenario of a surrogate benchmark, ``None`` for real training."""
        return yahpo_scenario(self.benchmark)


def yahpo_scenario(benchmark: str) -> str | None:
    """``"rbv2_rpart"`` for ``"yahpo/rbv2_rpart"``, ``"lcbench"`` for ``"lcbench"`` (an alias of
    ``yahpo/lcbench``), ``None`` for a suite of real tasks."""
    if benchmark == "lcbench":
        return "lcbench"
    prefix, _, scenario = benchmark.partition("/")
    return scenario if prefix == "yahpo" and scenario else None


# -- the benchmark's parts ------------------------------------------------------------------------
class _Bench:
    """Backend, space, tasks, scoring and normalisation of one benchmark."""

    def __init__(self, config: BenchConfig, out: Path, storage: str | Path | None = None) -> None:
        self.config = config
        self.out = out
        self.store: TrialStore | None = None
        self.surrogate = config.scenario is not None
        if config.scenario is not None:
            from hporl.backends.yahpo import YahpoBackend

            surrogate = YahpoBackend(
                config.scenario, data_dir=config.data_dir, target=config.target
            )
            self.backend: Backend = surrogate
            self.space: SearchSpace = surrogate.space
            self.all_tasks = list(surrogate.task_ids)
            self.score_kind = config.score or "final"
            self.n_norm = config.normalisation_samples or 10_000
            self.n_transfer = config.transfer_candidates or 10_000
        else:
            from hporl.tasks import builtin, suites

            if config.benchmark not in suites():
                raise ConfigError(
                    f"unknown benchmark {config.benchmark!r}: yahpo/<scenario> (a YAHPO Gym "
                    f"surrogate, e.g. yahpo/lcbench, yahpo/rbv2_rpart) or a suite of real tasks "
                    f"({', '.join(suites())})"
                )
            from hporl.experiment import resolve_space

            self.space = resolve_space(config.space or "optimizer")
            # Real training: every evaluation in the trial store (one study per task).
            self.store = TrialStore(storage_url(storage or config.storage, out))
            # Budgets in epochs: a budget-aware policy's shortened trials are the start of the
            # full training and its continuations train the extra epochs only (TorchBackend's
            # resume; full trials, pruned or not, are the same either way).
            self.backend = TorchBackend(num_threads=1, resume=config.budget_unit == "epochs")
            self.all_tasks = list(suites()[config.benchmark])
            self.score_kind = config.score or "best"
            self.n_norm = config.normalisation_samples or 20
            self.n_transfer = config.transfer_candidates or 16
            self._builtin = builtin
        self.fixed: dict[str, dict[str, Any]] = {}
        for method, fixed in config.fixed.items():
            try:
                self.fixed[method] = self.space.validate(fixed)
            except HporlError as err:
                raise ConfigError(f"fixed configuration {method!r}: {err}") from None
        self.evaluator = Evaluator(
            self.backend,
            store=self.store,
            run="bench",
            space=self.space,
            executor=config.executor,
            n_workers=config.parallel,
            ray_address=config.ray_address,
        )
        # Pruned trials on a surrogate: one at a time, nothing kept (thousands per run).
        self.stepwise = Evaluator(self.backend, memory=False) if self.surrogate else self.evaluator
        unknown = sorted(set(config.train_tasks + config.test_tasks) - set(self.all_tasks))
        if unknown and self.surrogate:
            raise ConfigError(
                f"unknown {config.benchmark} task ids: {', '.join(unknown)}"
                + did_you_mean(unknown[0], self.all_tasks)
            )
        self._tasks: dict[str, Any] = {}
        self._norms: dict[str, tuple[float, float]] = {}
        self.last_results: dict[tuple[str, str, int, int], TrialResult] = {}

    def task(self, name: str) -> Any:
        if name not in self._tasks:
            if self.surrogate:
                self._tasks[name] = self.backend.task(name)  # type: ignore[attr-defined]
            else:
                task = self._builtin(name, epochs=self.config.epochs)
                self.backend.check_space(self.space, task)  # what training would misread
                self._tasks[name] = task
        return self._tasks[name]

    def score(self, result: TrialResult) -> float | None:
        """A trial's score to maximise (its final or best metric, as ``score_kind`` says);
        ``None`` when it failed or its metric is not finite."""
        if result.status != "ok":
            return None
        y = result.final_metric if self.score_kind == "final" else result.best_metric
        return y if y is not None and math.isfinite(y) else None

    def evaluate_many(
        self, task: Any, configs: list[dict[str, Any]], seed: int
    ) -> list[TrialResult]:
        """Trials of ``configs`` through the evaluator: real trainings at once on its workers
        and kept, so the normalisation sample, the transfer candidates and the warm start's
        candidates (the same seed-0 draws) are trained once; a YAHPO surrogate answers them in
        one call, and has one seed."""
        seed = 0 if self.surrogate else seed
        return self.evaluator.evaluate_many(task, configs, seed=seed)

    def evaluate(
        self,
        task: Any,
        config: dict[str, Any],
        seed: int,
        on_epoch: EpochCallback | None = None,
        *,
        epochs: int | None = None,
    ) -> TrialResult:
        """One trial (for ``epochs``, default the task's) that reports every epoch to
        ``on_epoch`` (a pruner) as it is trained."""
        seed = 0 if self.surrogate else seed
        return self.stepwise.evaluate(task, config, seed=seed, epochs=epochs, on_epoch=on_epoch)

    def close(self) -> None:
        self.evaluator.close()
        self.stepwise.close()

    def scores(
        self, task: Any, configs: list[dict[str, Any]], epoch: int | None = None
    ) -> np.ndarray:
        """Scores (seed 0) of many configurations (after ``epoch`` epochs, a surrogate's with
        ``final_scores_on``; default all), NaN where a trial failed."""
        return self.scores_on([task], configs, epoch)[0]

    def scores_on(
        self, tasks: list[Any], configs: list[dict[str, Any]], epoch: int | None = None
    ) -> np.ndarray:
        """:meth:`scores` on many tasks, ``[t, i]``: one batched call for all when the backend
        is a surrogate with ``final_scores_on``."""
        if self.score_kind == "final" and hasattr(self.backend, "final_scores_on"):
            scores = self.backend.final_scores_on(tasks, configs, epoch=epoch)
            return np.asarray(scores, dtype=float)
        if epoch is not None:
            raise ValueError("scores after some epochs need a surrogate with final_scores_on")
        rows = []
        for task in tasks:
            ys = [self.score(r) for r in self.evaluate_many(task, configs, 0)]
            rows.append([np.nan if y is None else y for y in ys])
        return np.array(rows, dtype=float).reshape(len(tasks), len(configs))

    def normalisation(self, name: str) -> tuple[float, float]:
        """y_min, y_max of a fixed random sample of the task (seed 0), cached on disk."""
        if name in self._norms:
            return self._norms[name]
        task = self.task(name)
        if self.surrogate:
            norm = self.backend.normalisation(task, n=self.n_norm, seed=0)  # type: ignore[attr-defined]
        else:
            cache = self.out / "normalisation.json"
            data = json.loads(cache.read_text()) if cache.exists() else {}
            key = f"{name}|{self.n_norm}|{self.config.epochs}|{self.score_kind}"
            if key not in data:
                rng = np.random.default_rng(0)
                ys = self.scores(task, [self.space.sample(rng) for _ in range(self.n_norm)])
                ys = ys[np.isfinite(ys)]
                data[key] = [float(ys.min()), float(ys.max())] if len(ys) else [0.0, 1.0]
                write_json(cache, data)
            norm = tuple(data[key])
        self._norms[name] = (float(norm[0]), float(norm[1]))
        return self._norms[name]

    def transfer_candidates(self, train: list[str]) -> TransferCandidates:
        rng = np.random.default_rng(0)
        configs = [self.space.sample(rng) for _ in range(self.n_transfer)]

        def meta(more: list[dict[str, Any]], epoch: int | None = None) -> np.ndarray:
            """The meta-train tasks' scores ``[t, i]`` of ``more`` (after ``epoch`` epochs, a
            surrogate's; default all); a failure scores y_min."""
            scores = self.scores_on([self.task(name) for name in train], more, epoch)
            lo = np.array([self.normalisation(name)[0] for name in train])[:, None]
            return np.where(np.isnan(scores), lo, scores)

        values = meta(configs)
        lo, hi = np.array([self.normalisation(name) for name in train]).T[:, :, None]
        regret = (hi - values) / np.maximum(hi - lo, 1e-12)
        # a surrogate's scores are cheap: transfer GP may score configurations beyond these
        return TransferCandidates(configs, regret, values, meta if self.surrogate else None)


# -- the run --------------------------------------------------------------------------------------
def run(
    config: BenchConfig | Mapping[str, Any] | str | Path,
    *,
    out: str | Path = "runs/bench",
    progress: Callable[[str], None] | None = None,
    progress_bar: bool = False,
    storage: str | Path | None = None,
    parallel: int | None = None,
    executor: str | None = None,
    ray_address: str | None = None,
) -> dict[str, Any]:
    """Run a benchmark; write ``results.json``, ``summary.json``, ``report.md`` and ``plots/``.

    Returns the summary. Each fold meta-trains the policy on its train tasks only. With
    ``parallel`` > 1, each method proposes that many configurations at a time (optuna's
    ask/tell; TPE with its constant liar, the policy never proposing a running one) and they
    train at once on the ``executor``.
    """

    config = BenchConfig.load(config)
    overrides = {"parallel": parallel, "executor": executor, "ray_address": ray_address}
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if overrides:
        config = BenchConfig.load(config.model_dump() | overrides)
    if config.parallel > 1 and config.scenario is not None:
        raise ConfigError(
            f"parallel: trials at once are for real-training suites, not {config.benchmark}"
        )
    out = writable_dir(out)
    bench = _Bench(config, out, storage)
    try:
        return _run(bench, config, out, progress, progress_bar)
    finally:
        bench.close()


def _run(
    bench: _Bench,
    config: BenchConfig,
    out: Path,
    progress: Callable[[str], None] | None,
    progress_bar: bool = False,
) -> dict[str, Any]:
    from hporl.bench._report import summarise, summarise_finals, write_report

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    say = progress or (lambda msg: logger.info(msg))
    folds = _folds(config, bench.all_tasks)
    if not bench.surrogate:  # bad tasks (or a space that cannot apply) before training
        names = dict.fromkeys(name for train, test in folds for name in [*train, *test])
        bench.evaluator.start(*(bench.task(name) for name in names))  # shipped to workers once
    records: list[dict[str, Any]] = []
    finals: list[dict[str, Any]] = []
    timings: dict[str, float] = {}
    for f, (train, test) in enumerate(folds):
        if set(train) & set(test):  # pragma: no cover - _folds guarantees it
            raise ConfigError("a meta-test task reached meta-training")
        transfer = None
        if set(TRANSFER) & set(config.methods) or any(
            config.handover_of(m)[0] == TRANSFER_THEN
            for m in config.methods
            if m == "policy" or m in config.policies
        ):
            t0 = time.perf_counter()
            transfer = bench.transfer_candidates(train)
            timings[f"transfer_fold{f}"] = time.perf_counter() - t0
        policies: dict[str, Any] = {}
        for method in [m for m in config.methods if m == "policy" or m in config.policies]:
            if config.transfer_only(method):
                say(f"fold {f + 1}/{len(folds)}: {method} is transfer GP from its first trial")
                continue  # nothing of a policy is used: none is meta-trained or loaded
            t0 = time.perf_counter()
            settings = config.settings_of(method)
            path = config.policy_path if method == "policy" else settings.pop("path", None)
            for key in RUN_KEYS:  # how it is run, not how it is made
                settings.pop(key, None)
            suffix = "" if method == "policy" else f"_{method}"
            say(
                f"fold {f + 1}/{len(folds)}: meta-training {method} on {len(train)} tasks "
                f"(logs in {out / f'policy{suffix}_fold{f}' / 'logs'})"
            )
            policies[method] = _policy(
                config,
                bench,
                train,
                out / f"policy{suffix}_fold{f}",
                settings,
                path,
                progress_bar=progress_bar,
            )
            key = f"meta_train{suffix}_fold{f}"
            timings[key] = time.perf_counter() - t0
            say(f"fold {f + 1}/{len(folds)}: {method} ready in {timings[key]:.0f} s")
        for name in test:
            task = bench.task(name)
            for method in config.methods:
                for seed in range(config.first_seed, config.first_seed + config.seeds):
                    rows = _one_run(
                        bench, method, task, name, seed, transfer, policies.get(method), f
                    )
                    records += rows
                    if config.final_training:
                        finals.append(_final_record(bench, task, rows, seed))
            say(f"fold {f + 1}/{len(folds)}: task {name} done")
    # y_max raised to any better value any method found; regret from the final normalisation.
    for name in {r["task"] for r in records}:
        lo, hi = bench.normalisation(name)
        found = max(
            (r["score"] for r in records if r["task"] == name and r["score"] is not None),
            default=hi,
        )
        bench._norms[name] = (lo, max(hi, found))
    for r in records:
        lo, hi = bench._norms[r["task"]]
        r["regret"] = (
            None if r["best_so_far"] is None else (hi - r["best_so_far"]) / max(hi - lo, 1e-12)
        )
    all_train = sorted({t for tr, _ in folds for t in tr})
    all_test = sorted({t for _, te in folds for t in te})
    summary = summarise(records, config, train_tasks=all_train, test_tasks=all_test)
    summary["timings_seconds"] = timings
    summary["folds"] = [{"train_tasks": tr, "test_tasks": te} for tr, te in folds]
    if config.final_training:
        summary["final_test"] = summarise_finals(finals, config)
        write_json(out / "finals.json", finals)
    write_json(out / "results.json", records)
    write_json(out / "summary.json", summary)
    write_report(records, summary, config, out, finals)
    return summary


def _folds(config: BenchConfig, all_tasks: list[str]) -> list[tuple[list[str], list[str]]]:
    if config.folds is None:
        return [(list(config.train_tasks), list(config.test_tasks))]
    tasks = list(config.test_tasks or all_tasks)
    extra_train = [t for t in config.train_tasks if t not in tasks]
    k = min(config.folds, len(tasks))
    parts = [tasks[i::k] for i in range(k)]
    return [([t for t in tasks if t not in part] + extra_train, part) for part in parts]


def _one_run(
    bench: _Bench,
    method: str,
    task: Any,
    name: str,
    seed: int,
    transfer: Any,
    policy: Any,
    fold: int,
) -> list[dict[str, Any]]:
    """One run of ``method`` on a task: ``n_trials`` trials, or with ``budget_unit: epochs``
    trials until ``max(budgets)`` full trainings' epochs are spent (a trial costs the epochs it
    trained, at least one). A trial stopped by the method's pruner scores nothing: what a run
    has found is the best final value of its fully trained trials, as optuna's ``best_trial``
    (its last reported value is kept as ``value``)."""
    config = bench.config
    sampler_name, pruner_name = (
        (method, None)
        if method in bench.fixed or method in config.policies
        else split_method(method)
    )
    full = int(task.epochs)
    settings = config.settings_of(method)
    policy_method = method == "policy" or method in config.policies
    then, after = config.handover_of(method) if policy_method else (None, None)
    resumable = bool(getattr(bench.backend, "resumable", False))
    if policy_method:
        pruner_name = settings.get("pruner")
        if config.transfer_only(method):  # its policy would never propose: none was made
            sampler_name, then, after = TRANSFER_THEN, None, None
            rungs = Rungs.from_setting(settings.get("rungs"))
            if (
                config.budget_unit == "epochs"
                and pruner_name is None
                and rungs is not None
                and resumable
                and transfer.meta is not None
                and bench.score_kind == "final"  # a rung's score is the curve's there
            ):
                return _rung_run(bench, method, task, name, seed, transfer, fold, rungs)
    if config.budget_unit == "epochs" and policy is not None and pruner_name is None:
        # a budget-aware policy chooses fidelities; any other probes its proposals (Probe)
        probe = Probe.from_setting(settings.get("probe"))
        if policy.budget_aware or (probe is not None and resumable):
            after = handover_after(policy, after)
            return _budgeted_run(bench, method, task, name, seed, policy, fold, then, after, probe)
    total = config.n_trials * full if config.budget_unit == "epochs" else None
    n = config.n_trials if total is None else total
    sampler = make_sampler(
        sampler_name,
        space=bench.space,
        seed=seed,
        n_trials=config.n_trials,
        transfer=transfer,
        policy=policy,
        task=task,
        fixed=bench.fixed,
        parallel=config.parallel > 1,
        then=then,
        after=after,
    )
    pruner = make_pruner(pruner_name, max_epochs=full)
    # Named: optuna's Hyperband assigns a trial's bracket from a hash of the study's name, and
    # an unnamed study gets a random one (runs of the same bench then differed).
    study = optuna.create_study(
        direction="maximize",
        sampler=sampler,
        pruner=pruner,
        study_name=f"{method}/{name}/seed{seed}",
    )
    rows: list[dict[str, Any]] = []
    best: float | None = None
    spent = 0
    batch = 1 if pruner is not None else config.parallel
    while len(rows) < n and (total is None or spent < total):
        asked = []
        for _ in range(min(batch, n - len(rows))):
            t0 = time.perf_counter()
            trial = study.ask()
            asked.append((trial, bench.space.suggest(trial), time.perf_counter() - t0))
        stops: list[int | None] = [None] * len(asked)
        if pruner is None:
            results = bench.evaluate_many(task, [c for _, c, _ in asked], seed)
        else:
            ((trial, trial_config, _),) = asked
            stopped: list[int] = []
            result = bench.evaluate(task, trial_config, seed, pruning_callback(trial, stopped))
            results = [result]
            if stopped and result.stopped_early:
                stops = [stopped[-1]]
        for (trial, trial_config, propose), result, pruned in zip(
            asked, results, stops, strict=True
        ):
            y = None if pruned is not None else bench.score(result)
            if pruned is not None:
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            elif y is None:
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
            else:
                study.tell(trial, y)
                best = y if best is None else max(best, y)
            cost = max(result.epochs_done, 1)
            spent += cost
            status = "pruned" if pruned is not None else result.status
            row = (method, name, seed, fold, trial_config, result, status, y, best, propose)
            _add_epoch_row(bench, rows, *row, cost=cost, spent=spent, full=full)
    return rows


def _add_epoch_row(
    bench: _Bench,
    rows: list[dict[str, Any]],
    method: str,
    name: str,
    seed: int,
    fold: int,
    config: dict[str, Any],
    result: TrialResult,
    status: str,
    score: float | None,
    best: float | None,
    propose: float,
    *,
    cost: int,
    spent: int,
    full: int,
    **extra: Any,
) -> None:
    """One trial of a run in epoch budgets, as a row of ``results.json`` (its result kept in
    ``bench.last_results``)."""
    trial = len(rows) + 1
    bench.last_results[(method, name, seed, trial)] = result
    rows.append(
        {
            "method": method,
            "task": name,
            "seed": seed,
            "trial": trial,
            "score": score,
            "best_so_far": best,
            "regret": None,
            "propose_seconds": propose,
            "config": config,
            "fold": fold,
            "status": status,
            "value": result.curve[-1] if result.curve else None,
            "epochs": cost,
            "epochs_spent": spent,
            "full_epochs": full,
            "seconds": round(result.wall_time, 4),  # training time (a cached result's own)
            **extra,  # may say otherwise (a continuation: its extra epochs' seconds)
        }
    )


def _budgeted_run(
    bench: _Bench,
    method: str,
    task: Any,
    name: str,
    seed: int,
    policy: Any,
    fold: int,
    then: str | None = None,
    after: int = 0,
    probe: Probe | None = None,
) -> list[dict[str, Any]]:
    """A policy's run with ``budget_unit: epochs``: each trial at the fidelity a budget-aware
    policy chooses (any other: as ``probe`` says, :func:`~hporl.sampler.probe_choice`), or a
    trial continued to a higher fidelity (costing the extra epochs when
    the backend resumes, see :attr:`~hporl.backends.Backend.resumable`), until ``max(budgets)``
    full trainings' epochs are spent or no choice fits. As for a pruned trial, only a trial
    trained for the full epochs scores (a run finds what it trained fully); the others are
    ``partial``. With ``then``, once ``after`` full trainings' epochs are spent, optuna's
    sampler ``then`` proposes full trainings from the policy's full ones
    (:func:`~hporl.sampler.budgeted_choice`)."""
    full = int(task.epochs)
    total = bench.config.n_trials * full
    resumable = bool(getattr(bench.backend, "resumable", False))
    history: list[tuple[dict[str, Any], TrialResult, float]] = []
    row_of: list[int] = []  # the row (1-based trial) behind each history entry
    tried: set[str] = set()
    rng = np.random.default_rng(seed)
    rows: list[dict[str, Any]] = []
    best: float | None = None
    spent = 0
    while spent < total:
        t0 = time.perf_counter()
        choice = budgeted_choice(
            policy,
            task,
            history,
            spent=spent,
            budget_epochs=total,
            resumable=resumable,
            then=then,
            after=after,
            space=bench.space,
            score=bench.score,
            seed=seed,
            position=len(rows),
            rng=rng,
            avoid=tried,
            probe=probe,
        )
        propose = time.perf_counter() - t0
        if choice is None:
            break
        result = bench.evaluate(task, choice.config, seed, epochs=choice.epochs)
        seconds = result.wall_time  # a resumed training's is the whole training's: less before
        if choice.continues is not None and resumable:
            seconds = max(seconds - history[choice.continues][1].wall_time, 0.0)
        continues = None if choice.continues is None else row_of[choice.continues]
        if choice.continues is None:
            history.append((choice.config, result, choice.fidelity))
            row_of.append(len(rows) + 1)
            tried.add(config_key(choice.config))
        else:
            history[choice.continues] = (choice.config, result, choice.fidelity)
            row_of[choice.continues] = len(rows) + 1
        complete = choice.epochs >= full
        y = bench.score(result) if complete else None
        if y is not None:
            best = y if best is None else max(best, y)
        spent += choice.cost
        status = result.status if complete or not result.ok else "partial"
        row = (method, name, seed, fold, choice.config, result, status, y, best, propose)
        _add_epoch_row(
            bench, rows, *row, cost=choice.cost, spent=spent, full=full,
            fidelity=choice.fidelity, continues=continues, seconds=round(seconds, 4),
        )  # fmt: skip
    return rows


def _rung_run(
    bench: _Bench,
    method: str,
    task: Any,
    name: str,
    seed: int,
    transfer: TransferCandidates,
    fold: int,
    rungs: Rungs,
) -> list[dict[str, Any]]:
    """Budget-aware transfer GP's run with ``budget_unit: epochs`` (:class:`Rungs`): each
    proposal trains to the first rung, then on, rung by rung, while it is likely enough to beat
    the best complete trial, until ``max(budgets)`` full trainings' epochs are spent. A trial
    stopped at a rung is ``partial`` (no score, as a pruned one), and transfer GP reads its
    score there for what it is (:meth:`TransferGPSampler.next_config`). With ``rungs.resume``
    a stopped trial may later be trained on to the end instead of a new proposal
    (:meth:`Rungs.resumed`): its row ``continues`` the stopped one's and costs the epochs
    left."""
    full = int(task.epochs)
    total = bench.config.n_trials * full
    sampler = TransferGPSampler(bench.space, transfer, seed=seed)
    rng = np.random.default_rng(seed)
    trials: list[tuple[dict[str, Any], float | None, int | None]] = []
    stopped: dict[int, tuple[int, TrialResult]] = {}  # trial index: its row, its result
    rows: list[dict[str, Any]] = []
    best: float | None = None
    spent = 0
    while spent < total:
        t0 = time.perf_counter()
        # None when every one it can choose among was tried: a random configuration
        config = sampler.next_config(trials, rungs.cost(trials)) or bench.space.sample(rng)
        thaw = rungs.resumed(sampler, trials, config, full)
        results: dict[int, TrialResult] = {}  # the rungs' evaluations (a surrogate's: ms)
        if thaw is None:
            score_at = _scorer(bench, task, config, seed, results)
            left = total - spent
            epochs = rungs.stop_at(sampler, trials, config, score_at, full, left) or full
        else:
            config, epochs = trials[thaw][0], full
        propose = time.perf_counter() - t0
        result = results[epochs] if epochs in results else bench.evaluate(task, config, seed)
        cost, seconds, continues = max(result.epochs_done, 1), result.wall_time, None
        if thaw is not None:  # the backend resumes it: the epochs and seconds left
            continues, before = stopped.pop(thaw)
            cost = max(result.epochs_done - before.epochs_done, 1)
            seconds = max(seconds - before.wall_time, 0.0)
        y = bench.score(result)
        if y is None:  # failed or diverged: tried, nothing observed
            observed: tuple[dict[str, Any], float | None, int | None] = (config, math.nan, None)
        elif epochs < full:
            observed, y = (config, y, epochs), None
            stopped[len(trials)] = (len(rows) + 1, result)
        else:
            observed = (config, y, None)
            best = y if best is None else max(best, y)
        if thaw is None:
            trials.append(observed)
        else:
            trials[thaw] = observed
        spent += cost
        status = "partial" if result.ok and epochs < full else result.status
        row = (method, name, seed, fold, config, result, status, y, best, propose)
        _add_epoch_row(
            bench, rows, *row, cost=cost, spent=spent, full=full, fidelity=epochs / full,
            continues=continues, seconds=round(seconds, 4),
        )  # fmt: skip
    return rows


def _scorer(
    bench: _Bench, task: Any, config: dict[str, Any], seed: int, results: dict[int, TrialResult]
) -> Callable[[int], float | None]:
    """``score_at(e)`` of :meth:`Rungs.stop_at`: trains ``config`` for ``e`` epochs (kept in
    ``results``) and gives its score."""

    def score_at(epochs: int) -> float | None:
        results[epochs] = bench.evaluate(task, config, seed, epochs=epochs)
        return bench.score(results[epochs])

    return score_at


def _final_record(
    bench: _Bench, task: Any, rows: list[dict[str, Any]], seed: int
) -> dict[str, Any]:
    """The final training after one run: the best trial's configuration (highest score, earliest
    on ties), trained on train+val; ``test_metric`` is ``None`` when every trial failed."""
    scored = [r for r in rows if r["score"] is not None]
    record = {"method": rows[0]["method"], "task": rows[0]["task"], "seed": seed}
    if not scored:
        return record | {"config": None, "test_metric": None, "final_epochs": None}
    best = max(scored, key=lambda r: (r["score"], -r["trial"]))
    result = bench.last_results[(best["method"], best["task"], seed, best["trial"])]
    final = bench.evaluator.final_fit(task, best["config"], result, seed=seed)
    return record | {
        "config": best["config"],
        "trial": best["trial"],
        "val_score": best["score"],
        "final_epochs": final.epochs,
        "status": final.result.status,
        "final_fit": final.status,
        "final_fit_reason": final.reason,
        "test_metric": final.result.test_metric if final.result.ok else None,
    }


def _policy(
    config: BenchConfig,
    bench: _Bench,
    train: list[str],
    run_dir: Path,
    settings: Mapping[str, Any] | None = None,
    path: str | None = None,
    *,
    progress_bar: bool = False,
) -> Any:
    """A policy for a fold: loaded from ``path``, or meta-trained on ``train`` with
    ``settings`` (default: the bench's ``policy``); keys left out take :mod:`hporl.recipes`."""
    from hporl.agents import AgentConfig
    from hporl.env import TaskAugmentation
    from hporl.experiment import meta_train
    from hporl.observation import FIDELITIES
    from hporl.policy import Policy
    from hporl.pretrain import PretrainConfig
    from hporl.recipes import REAL_AGENT, SURROGATE_AGENT, SURROGATE_AUGMENT, SURROGATE_PRETRAIN

    if settings is None:
        settings, path = dict(config.policy), config.policy_path
    if path:
        return Policy.load(path, space=bench.space)
    settings = dict(settings)
    allowed = {
        "agent",
        "pretrain",
        "budget",
        "n_bins",
        "history",
        "epochs",
        "augment",
        "layout_version",
        "budget_unit",
        "fidelities",
    }
    unknown = sorted(set(settings) - allowed)
    if unknown:
        raise ConfigError(
            f"unknown key 'policy.{unknown[0]}'." + did_you_mean(unknown[0], sorted(allowed))
        )
    tasks = [bench.task(n) for n in train]
    norms = {n: bench.normalisation(n) for n in train}
    reward = _TaskNormalised(norms, bench.score)
    surrogate = bench.store is None  # cheap steps: the recipe for a surrogate benchmark
    agent_defaults = dict(SURROGATE_AGENT if surrogate else REAL_AGENT)
    given = settings.get("agent", {})
    agent = AgentConfig.model_validate(
        {
            **agent_defaults,
            **given,
            "params": {**agent_defaults.get("params", {}), **given.get("params", {})},
        }
    )
    pretrain_defaults = (
        {**SURROGATE_PRETRAIN, "candidates": bench.n_transfer} if surrogate else {"candidates": 256}
    )
    pretrain_cfg = settings.get("pretrain", {})
    if pretrain_cfg is not None:  # keys left out take the recipe's (null: no warm start)
        pretrain_cfg = {**pretrain_defaults, **pretrain_cfg}
    pretrain = PretrainConfig.model_validate(pretrain_cfg) if pretrain_cfg is not None else None
    augment_cfg = settings.get("augment", SURROGATE_AUGMENT if surrogate else None)
    augment = TaskAugmentation.model_validate(augment_cfg) if augment_cfg is not None else None
    unit = settings.get("budget_unit", "trials")
    if unit not in ("trials", "epochs"):
        raise ConfigError(f"policy.budget_unit must be trials or epochs, got {unit!r}")
    fidelities = None
    if unit == "epochs":
        fidelities = [float(f) for f in settings.get("fidelities") or FIDELITIES]
    return meta_train(
        bench.space,
        bench.evaluator,
        tasks,
        agent=agent,
        pretrain=pretrain,
        run_dir=run_dir,
        reward=reward,
        budget=int(settings.get("budget", min(config.n_trials, 30))),
        n_bins=int(settings.get("n_bins", 64)),
        history=settings.get("history"),
        augment=augment,
        layout_version=int(settings.get("layout_version", 2)),
        epochs=settings.get("epochs"),
        feature_names=_feature_names(config.benchmark),
        meta={"benchmark": config.benchmark},
        progress_bar=progress_bar,
        candidate_values=lambda task, configs: reward.normalise(
            task.name, bench.scores(task, configs)
        ),
        fidelities=fidelities,
    )


def _feature_names(benchmark: str) -> list[str]:
    """What a task's ``features()`` holds: a YAHPO scenario's (LCBench's size features, none
    for the others), or hporl's meta-features."""
    scenario = yahpo_scenario(benchmark)
    if scenario is not None:
        from hporl.backends.yahpo import feature_names

        return feature_names(scenario)
    from hporl.tasks import FEATURE_NAMES

    return list(FEATURE_NAMES)


class _TaskNormalised(RewardApproach):
    """``(y - y_min) / (y_max - y_min)`` on the training task the result came from."""

    name = "task_normalised_score"
    floor = -0.5

    def __init__(
        self, norms: Mapping[str, tuple[float, float]], score: Callable[[TrialResult], float | None]
    ) -> None:
        self.norms = dict(norms)
        self.score_of = score

    def __call__(
        self, result: TrialResult, *, reference: TrialResult | None = None, task: Any = None
    ) -> float:
        y = self.score_of(result)
        return float(self.normalise(task.name, np.array([np.nan if y is None else y]))[0])

    def normalise(self, name: str, ys: np.ndarray) -> np.ndarray:
        """Normalised values of raw scores on training task ``name`` (NaN: a failure, the floor)."""
        lo, hi = self.norms[name]
        return np.nan_to_num(
            np.maximum((ys - lo) / max(hi - lo, 1e-12), self.floor), nan=self.floor
        )

    def score(
        self, result: TrialResult, reference: TrialResult | None
    ) -> float:  # pragma: no cover
        raise NotImplementedError("needs the task: call the approach with task=")
