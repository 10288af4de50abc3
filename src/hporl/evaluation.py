"""The one owner of running evaluations: cache, de-duplication, dispatch, retry, final fit.

Everything that trains (or asks a surrogate) goes through an :class:`Evaluator`: the env and the
vectorised env of meta-training, the warm start, ``tune_model`` and ``hporl bench``. It owns

- the **cache**: results in memory, and with a :class:`~hporl.store.TrialStore` the store (the
  same task fingerprint, configuration, seed and epochs are never trained twice, across runs);
- **de-duplication**: an evaluation already under way is not started again, every caller that
  asks for it gets the same :class:`Evaluation`;
- **dispatch** to an :class:`~hporl.executors.Executor` (in this process, a local process pool,
  or Ray); the calling process stays the store's only writer;
- **one retry** of an evaluation whose worker died (its second result counts, whatever it is);
- **budgets in epochs**: an evaluation can be stopped after any epoch by an ``on_epoch``
  callback, e.g. an optuna pruner (:func:`make_pruner`, :func:`pruning_callback`); such a
  partial result is no evaluation of the full budget, so it is never cached;
- the **final fit** on train + validation, checked like a trial: a training that diverges, whose
  loss explodes, or whose validation metric falls far below the chosen trial's is not shipped;
  the best trial's own weights are (:meth:`Evaluator.final_fit`).

It decides nothing about search: it evaluates what it is asked to.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import optuna

from hporl.backends._base import Backend, EpochCallback, TrialResult, aggregate, stop_epoch
from hporl.exceptions import ConfigError, HporlError
from hporl.executors import Executor, make_executor, worker_died
from hporl.rewards import normalized_score
from hporl.space import SearchSpace, config_key
from hporl.store import TrialStore

__all__ = [
    "PRUNERS",
    "Evaluation",
    "Evaluator",
    "FinalFit",
    "final_fit_problem",
    "make_pruner",
    "pruning_callback",
]

logger = logging.getLogger(__name__)

FIRST_COMPLETED = cf.FIRST_COMPLETED
ALL_COMPLETED = cf.ALL_COMPLETED

LOSS_EXPLOSION = 10.0
"""A final training whose highest training loss exceeds this many times the chosen trial's
highest has exploded."""
SCORE_DROP = 0.25
"""A final training whose chance-adjusted validation score falls below the trial's by more than
this fraction of the trial's (and at least 0.1) has collapsed (see :func:`final_fit_problem`)."""
PRUNERS = ("median", "asha", "hyperband")
"""The pruners known by name (:func:`make_pruner`)."""


def make_pruner(
    pruner: str | optuna.pruners.BasePruner | None, *, max_epochs: int
) -> optuna.pruners.BasePruner | None:
    """An optuna pruner by name, for trials of up to ``max_epochs`` epochs (one step per epoch).

    ``"median"``: ``MedianPruner()`` (optuna's defaults: a trial below the median of the
    earlier trials at the same epoch stops, after 5 trials); ``"asha"``:
    ``SuccessiveHalvingPruner(min_resource=1)`` (rungs at 1, 4, 16... epochs, the top quarter
    goes on); ``"hyperband"``: ``HyperbandPruner(min_resource=1, max_resource=max_epochs)``
    (reduction factor 3). A pruner instance is used as it is; ``None`` prunes nothing.

    Raises:
        ConfigError: an unknown name.
    """
    if pruner is None or isinstance(pruner, optuna.pruners.BasePruner):
        return pruner
    if pruner == "median":
        return optuna.pruners.MedianPruner()
    if pruner == "asha":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1)
    if pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(int(max_epochs), 1))
    raise ConfigError(
        f"pruner must be one of {', '.join(PRUNERS)}, None or an optuna BasePruner, got {pruner!r}"
    )


def pruning_callback(trial: optuna.Trial, stopped: list[int] | None = None) -> EpochCallback:
    """An ``on_epoch`` callback that reports each epoch's validation value to ``trial``
    (``trial.report(value, epoch)``) and stops the evaluation when its study's pruner says so
    (``trial.should_prune()``); the epoch it stopped at is appended to ``stopped``."""

    def on_epoch(epoch: int, value: float) -> bool:
        trial.report(float(value), epoch)
        if trial.should_prune():
            if stopped is not None:
                stopped.append(epoch)
            return True
        return False

    return on_epoch


def _replayed(result: TrialResult, on_epoch: EpochCallback) -> TrialResult:
    """``result`` as if ``on_epoch`` had watched it being trained: each epoch's value reported;
    where it says stop, the curves cut there (``stopped_early``; the test metric kept only if
    its best epoch is before the cut), the wall time in proportion."""
    epoch = stop_epoch(result.curve, on_epoch)
    if epoch is None:
        return result
    if result.per_model:
        return aggregate([_cut(r, epoch) for r in result.per_model])
    return _cut(result, epoch)


def _cut(result: TrialResult, epochs: int) -> TrialResult:
    kept = result.best_epoch is not None and result.best_epoch <= epochs
    share = epochs / max(len(result.curve), 1)
    return TrialResult.from_curves(
        metric_name=result.metric_name,
        curve=result.curve[:epochs],
        loss_curve=result.loss_curve[:epochs],
        train_loss_curve=result.train_loss_curve[:epochs],
        test_metric=result.test_metric if kept else None,
        status=result.status,
        reason=result.reason,
        chance_metric=result.chance_metric,
        epochs=result.epochs,
        wall_time=result.wall_time * share,
        stopped_early=True,
        seed=result.seed,
        config=result.config,
        cached=result.cached,
    )


@dataclass(eq=False)
class Evaluation:
    """One evaluation of ``config`` on ``task``, under way or done; every caller that asked for
    the same evaluation holds this same object.

    ``source`` says where the result came from: ``"memory"`` or ``"store"`` (cached) or
    ``"trained"`` (run by the backend, here or on a worker). ``retried_after`` holds the reason
    of a first attempt whose worker died.
    """

    key: tuple
    task: Any
    config: dict[str, Any]
    seed: int
    epochs: int | None
    time_limit: float | None = None
    record: bool = True
    on_epoch: EpochCallback | None = field(default=None, repr=False)
    source: str = "trained"
    result: TrialResult | None = None
    retried_after: str | None = None
    future: cf.Future | None = field(default=None, repr=False)

    def done(self) -> bool:
        return self.result is not None


@dataclass
class FinalFit:
    """The final training of a chosen configuration (see :meth:`Evaluator.final_fit`).

    Attributes:
        models: the trained model(s) to ship.
        result: their result (``test_metric`` is the figure to report).
        epochs: epochs trained.
        status: ``"ok"`` (trained on train + validation), ``"fallback"`` (that training failed
            the check; the shipped weights are the chosen trial's own, trained on the training
            split) or ``"failed"`` (both failed the check; what was trained on train +
            validation is shipped, and ``reason`` says what is wrong with it).
        reason: why the training on train + validation was not shipped (``None`` when it was).
    """

    config: dict[str, Any]
    models: list[Any]
    result: TrialResult
    epochs: int
    status: str = "ok"
    reason: str | None = None

    def report(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "reason": self.reason,
            "epochs": self.epochs,
            "train_loss_curve": self.result.train_loss_curve,
            "val_metric": self.result.final_metric,
            "test_metric": self.result.test_metric,
        }


def final_fit_problem(trial: TrialResult, final: TrialResult) -> str | None:
    """What is wrong with ``final``, a training on train + validation of the configuration of
    ``trial``, or ``None`` when it can be shipped.

    It is checked like a trial: not ``ok`` (diverged, failed); a training loss that exploded
    (its highest above ``LOSS_EXPLOSION`` times the trial's highest); or a validation metric far
    below the trial's best, although the validation rows were now part of training (its
    chance-adjusted score below the trial's by more than ``SCORE_DROP`` of it, at least 0.1).
    """
    if not final.ok:
        return f"the final training {final.status}: {final.reason}"
    if trial.train_loss_curve and final.train_loss_curve:
        worst = max(final.train_loss_curve)
        limit = LOSS_EXPLOSION * max(max(trial.train_loss_curve), 1e-6)
        if worst > limit:
            epoch = final.train_loss_curve.index(worst) + 1
            return (
                f"the final training's loss exploded: {worst:.4g} in epoch {epoch}, "
                f"the trial's highest was {max(trial.train_loss_curve):.4g}"
            )
    if trial.best_metric is not None and final.final_metric is not None:
        chance = trial.chance_metric
        before = normalized_score(trial.best_metric, chance)
        after = normalized_score(final.final_metric, chance)
        if after < before - max(0.1, SCORE_DROP * abs(before)):
            return (
                f"validation {final.metric_name} {final.final_metric:.4f} after the final "
                f"training (validation rows included), far below the trial's {trial.best_metric:.4f}"
            )
    return None


class Evaluator:
    """Runs evaluations for everything that needs them (see the module docstring).

    Args:
        backend: what evaluates a configuration (real training or a surrogate).
        store: the trial store to look results up in and, with ``record``, to keep them in
            (one study per task, ``<run>/<task>``); ``None``: memory only.
        run: the run name of the studies this evaluator records into.
        space: the search space (so stored trials carry optuna distributions).
        executor: ``"local"`` (in this process for one worker, else a pool of spawned
            processes), ``"ray"``, or an :class:`~hporl.executors.Executor`.
        n_workers: evaluations at once (for an executor named here).
        ray_address: the Ray cluster to join (default ``RAY_ADDRESS``, else a local Ray).
        memory: keep results in memory (a configuration revisited is served from there).

    Counts: ``n_trained`` (evaluations the backend ran), ``n_store_hits``, ``n_memory_hits``,
    ``n_shared`` (asked for while already under way), ``n_retried`` (run again after their
    worker died).
    """

    def __init__(
        self,
        backend: Backend,
        *,
        store: TrialStore | None = None,
        run: str = "evaluations",
        space: SearchSpace | None = None,
        executor: str | Executor = "local",
        n_workers: int = 1,
        ray_address: str | None = None,
        memory: bool = True,
    ) -> None:
        if isinstance(backend, Evaluator):
            raise ConfigError("an Evaluator evaluates with a Backend, not another Evaluator")
        self.backend = backend
        self.store = store
        self.run = run
        self.space = space
        self.memory = memory
        self._executor_spec = executor
        self.n_workers = executor.n_workers if isinstance(executor, Executor) else n_workers
        self._ray_address = ray_address
        self._executor: Executor | None = None
        self._shipped: list[Any] = []
        self._cache: dict[tuple, TrialResult] = {}
        self._finals: dict[tuple, FinalFit] = {}
        self._inflight: dict[tuple, Evaluation] = {}
        self._studies: dict[str, optuna.Study] = {}
        self._alive: dict[int, Any] = {}  # tasks keyed by id() stay alive while cached
        self.n_trained = 0
        self.n_store_hits = 0
        self.n_memory_hits = 0
        self.n_shared = 0
        self.n_retried = 0

    # -- the executor ---------------------------------------------------------------------
    def start(self, *tasks: Any) -> None:
        """Name the tasks to ship to the workers once, when they start (others travel with
        their evaluations). Call before the first evaluation; later calls add nothing to a
        running executor."""
        for task in tasks:
            if all(task is not t for t in self._shipped):
                self._shipped.append(task)

    @property
    def executor(self) -> Executor:
        """The executor, started on first use with the backend and the tasks named so far (one
        the caller started already is used as it is)."""
        if self._executor is None:
            executor = make_executor(
                self._executor_spec, self.n_workers, ray_address=self._ray_address
            )
            try:
                if not executor.started:
                    executor.start(self.backend, *self._shipped)
            except BaseException:
                executor.close()
                raise
            self._executor = executor
        return self._executor

    def close(self) -> None:
        """Stop the executor's workers (evaluations under way are lost)."""
        if self._executor is not None:
            self._executor.close()
            self._executor = None
        self._inflight.clear()

    def __enter__(self) -> Evaluator:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- the cache ------------------------------------------------------------------------
    def _key(self, task: Any, config: Mapping[str, Any], *, seed: int, epochs: int | None) -> tuple:
        """What identifies an evaluation: the task (its fingerprint, else the object), the
        configuration, the seed, the epochs (``None``: the task's own) and the backend's
        :meth:`~hporl.backends.Backend.horizon` for them."""
        fingerprint = getattr(task, "fingerprint", None)
        if isinstance(fingerprint, str):
            token: Any = fingerprint
        else:
            token = ("object", id(task))
            self._alive[id(task)] = task
        epochs = int(epochs or task.epochs)
        return (
            token,
            config_key(config),
            int(seed),
            epochs,
            horizon_of(self.backend, task, epochs),
        )

    def _lookup(
        self, key: tuple, task: Any, config: Mapping[str, Any], seed: int, epochs: int | None
    ) -> tuple[TrialResult | None, str]:
        if key in self._cache:
            self.n_memory_hits += 1
            return dataclasses.replace(self._cache[key], cached=True), "memory"
        if self.store is not None and isinstance(getattr(task, "fingerprint", None), str):
            hit = self.store.lookup(task, config, seed=seed, epochs=epochs, horizon=key[-1])
            if hit is not None:
                self.n_store_hits += 1
                if self.memory:
                    self._cache[key] = hit
                return hit, "store"
        return None, ""

    # -- running --------------------------------------------------------------------------
    def submit(
        self,
        task: Any,
        config: Mapping[str, Any],
        *,
        seed: int = 0,
        epochs: int | None = None,
        time_limit: float | None = None,
        record: bool = True,
        on_epoch: EpochCallback | None = None,
    ) -> Evaluation:
        """Start evaluating ``config`` on ``task`` unless its result is cached or under way.

        ``record``: keep a trained result in the store as a trial of its own (``False`` for a
        caller that writes it into a trial of its own, as ``tune_model`` does).
        ``on_epoch(epoch, value)``: called after each epoch as it is trained; ``True`` stops the
        evaluation there (a pruner, see :func:`pruning_callback`). A result it stopped is
        neither cached nor recorded; a cached result is returned without calling it.

        Raises:
            ConfigError: ``on_epoch`` with an executor that runs evaluations in other
                processes (a pool of several workers, Ray).
        """
        if on_epoch is not None and not self.in_process:
            raise ConfigError(
                "pruning reads every epoch as it is trained, in this process: it cannot be "
                f"combined with {self.n_workers} workers or the ray executor"
            )
        key = self._key(task, config, seed=seed, epochs=epochs)
        if key in self._inflight:
            self.n_shared += 1
            return self._inflight[key]
        ev = Evaluation(key, task, dict(config), int(seed), epochs, time_limit, record, on_epoch)
        hit, ev.source = self._lookup(key, task, config, seed, epochs)
        if hit is not None:
            # The pruner reads the stored curve as it would the training's (same task, config,
            # seed and epochs: the same curve), so a cached trial is pruned where a trained one
            # would be, and costs the epochs up to there.
            ev.result = hit if on_epoch is None else _replayed(hit, on_epoch)
            return ev
        ev.source = "trained"
        ev.future = self._dispatch(ev)
        self._inflight[key] = ev
        if ev.future.done():  # evaluated in this process: taken in at once
            self.poll()
        return ev

    def _dispatch(self, ev: Evaluation) -> cf.Future:
        extra = {} if ev.on_epoch is None else {"on_epoch": ev.on_epoch}
        return self.executor.submit(
            ev.config,
            seed=ev.seed,
            epochs=ev.epochs,
            time_limit=ev.time_limit,
            task=ev.task,
            **extra,
        )

    @property
    def in_process(self) -> bool:
        """Whether evaluations run in this process (so they take an ``on_epoch`` callback),
        known before the executor starts."""
        spec = self._executor or self._executor_spec
        if isinstance(spec, Executor):
            return spec.in_process
        return spec == "local" and self.n_workers == 1

    def wait(
        self,
        evaluations: Iterable[Evaluation],
        *,
        timeout: float | None = None,
        return_when: str = ALL_COMPLETED,
    ) -> tuple[list[Evaluation], list[Evaluation]]:
        """Wait for ``evaluations`` (all, or with ``FIRST_COMPLETED`` the first); returns the
        (done, not done) ones. Every evaluation that finished meanwhile, listed or not, is taken
        in: retried once if its worker died, else recorded and cached."""
        evaluations = list(evaluations)
        deadline = None if timeout is None else time.monotonic() + timeout
        lost = [e for e in evaluations if not e.done() and self._inflight.get(e.key) is not e]
        if lost:
            raise RuntimeError(f"{len(lost)} evaluations were dropped when the evaluator closed")
        while True:
            self.poll()
            done = [e for e in evaluations if e.done()]
            pending = [e for e in evaluations if not e.done()]
            if not pending or (return_when == FIRST_COMPLETED and done):
                return done, pending
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return done, pending
            cf.wait(
                [e.future for e in pending if e.future is not None],
                timeout=left,
                return_when=FIRST_COMPLETED,
            )

    def poll(self) -> None:
        """Take in every evaluation that has finished, without waiting: one whose worker died
        goes again (once), the others are recorded and cached."""
        for key, ev in list(self._inflight.items()):
            if ev.future is None or not ev.future.done():
                continue
            result: TrialResult = ev.future.result()
            if worker_died(result) and ev.retried_after is None:
                logger.warning(
                    "%s; evaluating %s on %s again", result.reason, ev.config, ev.task.name
                )
                self.n_retried += 1
                ev.retried_after = result.reason or "worker died"
                ev.future = self._dispatch(ev)
                continue
            del self._inflight[key]
            self.n_trained += 1
            ev.result = result
            if ev.on_epoch is not None and result.stopped_early:
                continue  # a partial evaluation: no result of the full budget to keep
            if self.memory:
                self._cache[key] = result
            if ev.record:
                self._record(ev)

    def _record(self, ev: Evaluation) -> None:
        task = ev.task
        if self.store is None or not isinstance(getattr(task, "fingerprint", None), str):
            return
        study = self._studies.get(task.name)
        if study is None:
            study = self._studies[task.name] = self.store.study(self.run, task)
        self.store.record(
            study,
            task,
            ev.config,
            ev.result,
            seed=ev.seed,
            epochs=ev.epochs,
            space=self.space,
            horizon=ev.key[4],
        )

    def evaluate(
        self,
        task: Any,
        config: Mapping[str, Any],
        *,
        seed: int = 0,
        epochs: int | None = None,
        time_limit: float | None = None,
        record: bool = True,
        on_epoch: EpochCallback | None = None,
    ) -> TrialResult:
        """:meth:`submit` and wait for the result."""
        ev = self.submit(
            task,
            config,
            seed=seed,
            epochs=epochs,
            time_limit=time_limit,
            record=record,
            on_epoch=on_epoch,
        )
        self.wait([ev])
        assert ev.result is not None
        return ev.result

    def evaluate_many(
        self,
        task: Any,
        configs: Sequence[Mapping[str, Any]],
        *,
        seed: int = 0,
        epochs: int | None = None,
    ) -> list[TrialResult]:
        """Several configurations at once: on the executor's workers together, or in one call
        to a backend that evaluates many at once (a surrogate's ``evaluate_many``; those
        results are not kept in memory: asking again costs less than keeping thousands)."""
        batched = getattr(self.backend, "evaluate_many", None)
        if batched is not None and self.store is None:
            results = list(batched(task, list(configs), epochs=epochs))
            self.n_trained += len(results)
            return results
        evaluations = [self.submit(task, c, seed=seed, epochs=epochs) for c in configs]
        self.wait(evaluations)
        return [e.result for e in evaluations]  # type: ignore[misc]

    # -- the final fit --------------------------------------------------------------------
    def final_fit(
        self, task: Any, config: Mapping[str, Any], trial: TrialResult, *, seed: int = 0
    ) -> FinalFit:
        """Train ``config`` on train + validation for the trial's best epoch count, checked
        with :func:`final_fit_problem`; when the check fails, the trial's own weights are
        shipped instead (the same training as the trial, on the training split, keeping its
        best epoch). Results are kept: the same final fit is trained once.

        Raises:
            ConfigError: the backend cannot train a model to keep (it has no ``fit``).
        """
        fit = getattr(self.backend, "fit", None)
        if fit is None:
            raise ConfigError(
                f"backend {self.backend.name!r} trains no model to keep: a final training needs "
                "real training (TorchBackend)"
            )
        epochs = max(int(trial.best_epoch or task.epochs), 1)
        key = (*self._key(task, config, seed=seed, epochs=epochs), "final")
        if key in self._finals:
            return self._finals[key]
        models, result = fit(task.with_validation_in_training(epochs), config, seed=seed)
        problem = final_fit_problem(trial, result)
        final = FinalFit(dict(config), models, result, epochs)
        if problem is not None:
            logger.warning("%s; shipping the trial's own weights instead", problem)
            own_models, own = fit(task, config, seed=seed, epochs=trial.epochs, keep="best")
            if own.ok:
                final = FinalFit(dict(config), own_models, own, epochs, "fallback", problem)
            else:
                final.status, final.reason = "failed", problem
        self._finals[key] = final
        return final

    def best_then_final_fit(
        self, task: Any, trials: Sequence[tuple[int, Mapping[str, Any], TrialResult]], *, seed: int
    ) -> FinalFit:
        """The final fit of the best trial (highest best validation metric, earliest on ties)
        of ``trials``, given as (number, config, result).

        Raises:
            HporlError: every trial failed or diverged.
        """
        ok = [t for t in trials if t[2].ok and t[2].best_metric is not None]
        if not ok:
            raise HporlError(
                f"all {len(trials)} trials failed or diverged; see the trial reasons: "
                + "; ".join(str(r.reason) for _, _, r in trials[:3])
            )
        _, config, result = max(ok, key=lambda t: (t[2].best_metric, -t[0]))
        return self.final_fit(task, config, result, seed=seed)


def horizon_of(backend: Any, task: Any, epochs: int) -> int | None:
    """``backend``'s :meth:`~hporl.backends.Backend.horizon` for ``epochs`` on ``task`` (``None``
    for a backend object that does not say)."""
    horizon = getattr(backend, "horizon", None)
    return None if horizon is None else horizon(task, epochs)
