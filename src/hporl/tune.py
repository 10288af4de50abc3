"""``tune_model``: tune a model on a new task with a meta-trained policy, then train it for good."""

from __future__ import annotations

import copy
import json
import logging
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch
from optuna.trial import FrozenTrial, TrialState
from torch import nn

from hporl._io import atomic_write, writable_dir
from hporl.augment import check_space as check_augment_space
from hporl.backends import TorchBackend, TrialResult
from hporl.exceptions import ConfigError, HporlError, TaskError
from hporl.executors import EXECUTORS, Executor, make_executor, worker_died
from hporl.policy import Policy
from hporl.sampler import PolicySampler
from hporl.store import WORKER, TrialStore, mask_url, storage_url, trial_state
from hporl.tasks import Task

__all__ = ["TuneResult", "random_search", "tune_model"]

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int, dict[str, Any], TrialResult], None]


@dataclass
class TuneResult:
    """What :func:`tune_model` produced.

    Attributes:
        model: the final model (a list when the task has several), trained on train+val with
            ``config`` for the best trial's best epoch count.
        config: the best configuration (highest best validation metric over the trials).
        trials: one record per trial (number, config, status, best/final val metric, best epoch,
            wall time, reason).
        test_metric: the final model's metric on the held-out test split.
        default_test_metric: the same final training with the space's default configuration.
    """

    model: nn.Module | list[nn.Module]
    config: dict[str, Any]
    trials: list[dict[str, Any]]
    test_metric: float | None
    default_test_metric: float | None
    metric_name: str
    seconds: float
    task: str
    final_epochs: int
    policy: Policy | None = None
    final_result: TrialResult | None = None
    default_result: TrialResult | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def report(self) -> dict[str, Any]:
        """The JSON report (its first six keys are a contract other tools read)."""
        return {
            "config": self.config,
            "metric_name": self.metric_name,
            "test_metric": self.test_metric,
            "default_test_metric": self.default_test_metric,
            "trials": self.trials,
            "seconds": self.seconds,
            "task": self.task,
            "final_epochs": self.final_epochs,
            "best_val_metric": max(
                (t["best_val_metric"] for t in self.trials if t["best_val_metric"] is not None),
                default=None,
            ),
            **self.extra,
        }

    def save(self, directory: str | Path) -> Path:
        """Write ``model.pt`` (or ``model_<i>.pt``; ``torch.load(weights_only=True)``),
        ``config.json`` and ``report.json``; each file to a temporary name, then renamed."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        models = self.model if isinstance(self.model, list) else [self.model]
        for i, m in enumerate(models):
            name = "model.pt" if len(models) == 1 else f"model_{i}.pt"
            atomic_write(directory / name, lambda p, m=m: torch.save(m.state_dict(), p))
        atomic_write(
            directory / "config.json", lambda p: p.write_text(json.dumps(self.config, indent=2))
        )
        atomic_write(
            directory / "report.json",
            lambda p: p.write_text(json.dumps(self.report(), indent=2, default=str)),
        )
        return directory


def _build_task(
    model: Any, data: Any, *, target: str | None, epochs: int | None, seed: int
) -> Task:
    if isinstance(data, Task):
        task = data
        if model is not None:
            raise TaskError("data is a Task, which has its models already: pass model=None")
        return task.with_epochs(epochs) if epochs else task
    kwargs: dict[str, Any] = {"seed": seed}
    if epochs:
        kwargs["epochs"] = epochs
    if isinstance(data, (str, Path)):
        if target is None:
            raise TaskError("data is a CSV path: name the column to predict with target=...")
        return Task.from_csv(data, target=target, model=model, **kwargs)
    if isinstance(data, Sequence) and len(data) == 2:
        X, y = data
        return Task.from_arrays(X, y, model=model, **kwargs)
    raise TaskError(f"data must be a Task, an (X, y) pair or a CSV path, got {type(data).__name__}")


def _merged(task: Task, epochs: int) -> Task:
    """The task with validation rows added to training (validation kept for reporting only)."""
    merged = copy.copy(task)
    merged.X_train = torch.cat([task.X_train, task.X_val])
    merged.y_train = torch.cat([task.y_train, task.y_val])
    merged.epochs = epochs
    merged.__dict__.pop("fingerprint", None)
    return merged


def _record(
    number: int, config: dict[str, Any], r: TrialResult, resumed: bool = False
) -> dict[str, Any]:
    return {
        "number": number,
        "config": config,
        "status": r.status,
        "best_val_metric": r.best_metric,
        "final_val_metric": r.final_metric,
        "best_epoch": r.best_epoch,
        "epochs": r.epochs_done,
        "seconds": r.wall_time,
        "reason": r.reason,
        "cached": r.cached,
        "resumed": resumed,
    }


def _final(
    backend: TorchBackend, task: Task, config: dict[str, Any], r: TrialResult, seed: int
) -> tuple[list[nn.Module], TrialResult, int]:
    epochs = max(int(r.best_epoch or task.epochs), 1)
    models, final = backend.fit(_merged(task, epochs), config, seed=seed, epochs=epochs)
    return models, final, epochs


def _best_then_final(
    backend: TorchBackend,
    task: Task,
    trials: list[tuple[int, dict[str, Any], TrialResult]],
    seed: int,
) -> tuple[dict[str, Any], list[nn.Module], TrialResult, int]:
    """The best trial's configuration (highest best validation metric, earliest on ties) and
    the final training with it."""
    ok = [t for t in trials if t[2].ok and t[2].best_metric is not None]
    if not ok:
        raise HporlError(
            f"all {len(trials)} trials failed or diverged; see the trial reasons: "
            + "; ".join(str(r.reason) for _, _, r in trials[:3])
        )
    _, best_config, best_result = max(ok, key=lambda x: (x[2].best_metric, -x[0]))
    models, final, epochs = _final(backend, task, best_config, best_result, seed)
    return best_config, models, final, epochs


def tune_model(
    model: Any = None,
    data: Any = None,
    *,
    policy: Policy | str | Path | None = None,
    n_trials: int = 10,
    fine_tune: bool = False,
    storage: str | Path | None = None,
    out: str | Path | None = None,
    target: str | None = None,
    epochs: int | None = None,
    seed: int = 0,
    backend: TorchBackend | None = None,
    study_name: str | None = None,
    worker: str | None = None,
    compare_default: bool = True,
    deterministic: bool = True,
    fine_tune_steps: int = 10,
    callback: ProgressCallback | None = None,
    n_parallel: int = 1,
    executor: str | Executor = "local",
    ray_address: str | None = None,
    trial_timeout: float | None = None,
) -> TuneResult:
    """Tune ``model`` (a module, a factory, or a list of them; ``None`` for the default MLP/CNN)
    on ``data`` with ``policy`` for ``n_trials`` trials, then train the final model.

    Every trial is an optuna trial in the trial store (:mod:`hporl.store`), so a run started
    again with the same ``out`` / ``storage`` continues where it stopped: finished trials are
    not run again, the policy's history is rebuilt from the store, and a trial whose process
    died is failed and retried once. An evaluation already in the store (same task
    fingerprint, configuration, seed and epochs, from any run) is reused, not trained.

    Args:
        data: a :class:`Task`, an ``(X, y)`` pair, or a CSV path (with ``target``).
        policy: a :class:`Policy` or a policy directory; ``None``: the packaged default policy
            (:meth:`Policy.default`, the ``optimizer`` space, meta-trained with 10 epochs per
            trial and K = 10).
        fine_tune: after each trial, update (a copy of) the policy on this task's trials.
        storage: an optuna storage URL (or a SQLite file path) for the trials; default:
            ``out/trials.db`` when ``out`` is given, else in memory.
        out: where to save the final model, config and ``report.json``.
        study_name: the study of this task in the store (default ``tune/<task>-<fingerprint>``).
            Several processes given the same storage and study share their trials: the policy
            of each sees every trial, and each runs ``n_trials`` of its own.
        worker: who this process is among several sharing a study (default: the ``out``
            directory, else ``"main"``); ``n_trials`` counts this worker's finished trials, so a
            restarted worker tops up its own share.
        compare_default: also run the final training with the space's default configuration
            (its epoch count from one trial of it) and report ``default_test_metric``.
        n_parallel: trials at once. The policy proposes a configuration for each free worker,
            never one already running, and reads every result as it arrives.
        executor: where trials run (:mod:`hporl.executors`): ``"local"`` (in this process, or
            a process pool when ``n_parallel > 1``), ``"ray"`` (a Ray cluster at
            ``ray_address`` / ``RAY_ADDRESS``, else a local Ray for this run), or an Executor.
        trial_timeout: seconds a trial may take; it is stopped after the epoch in which the
            limit passes (recorded PRUNED with the reason). A trial whose worker dies is
            recorded FAIL and retried once.

    Raises:
        HporlError: bad data, policy, storage or arguments, before any training.
    """
    start = time.perf_counter()
    if data is None:
        raise TaskError("tune_model needs data: a Task, an (X, y) pair, or a CSV path")
    if not isinstance(n_trials, int) or isinstance(n_trials, bool) or n_trials < 1:
        raise ConfigError(f"n_trials must be a positive integer, got {n_trials!r}")
    if not isinstance(n_parallel, int) or isinstance(n_parallel, bool) or n_parallel < 1:
        raise ConfigError(f"n_parallel must be a positive integer, got {n_parallel!r}")
    if trial_timeout is not None and not trial_timeout > 0:
        raise ConfigError(
            f"trial_timeout must be a positive number of seconds, got {trial_timeout!r}"
        )
    if not isinstance(executor, Executor) and executor not in EXECUTORS:
        raise ConfigError(f"executor must be one of {', '.join(EXECUTORS)}, got {executor!r}")
    if policy is None:
        policy = Policy.default()
    elif isinstance(policy, (str, Path)):
        policy = Policy.load(policy)
    task = _build_task(model, data, target=target, epochs=epochs, seed=seed)
    if policy.feature_names is None:
        raise ConfigError(
            "this policy was meta-trained on synthetic tasks without hporl's meta-features; it cannot read a real task's features"
        )
    policy.task_features(task)  # checks the feature count before any training
    check_augment_space(policy.space, task)  # augmentation only for image tasks, before any file
    if out is not None:
        writable_dir(out)
    backend = backend or TorchBackend(num_threads=1)
    space = policy.space
    store = TrialStore(storage_url(storage, out))
    worker = worker or (str(Path(out).resolve()) if out is not None else "main")
    sampler = PolicySampler(policy, task=task, deterministic=deterministic, seed=seed)
    study = store.study(
        "tune",
        task,
        sampler=sampler,
        name=study_name or f"tune/{task.name}-{task.fingerprint[:12]}",
    )
    store.fail_orphans(study)
    before = store.results(study)
    earlier = {t.number for t, _ in before}
    done = sum(1 for t, _ in before if t.user_attrs.get(WORKER) == worker)
    current = policy
    progress = [done]

    def objective(trial: optuna.Trial) -> float:
        store.claim(trial)
        config = space.suggest(trial)
        result = store.lookup(task, config, seed=seed) or backend.evaluate(task, config, seed=seed)
        store.annotate(trial, task, config, result, seed=seed, worker=worker)
        progress[0] += 1
        if callback is not None:
            callback(progress[0], n_trials, config, result)
        state, value = trial_state(result)
        if state == TrialState.PRUNED:
            raise optuna.TrialPruned(result.reason)
        # nan: optuna records FAIL; the reason is in the trial's attributes
        return float("nan") if value is None else value

    def after_trial(study: optuna.Study, _trial: FrozenTrial) -> None:
        nonlocal current
        history = [(c, r) for _, c, r in _finished(store, study)]
        if fine_tune and len(history) >= 2:
            current = policy.fine_tune(task, history, steps=fine_tune_steps)
            sampler.policy = current

    if fine_tune:
        after_trial(study, None)  # a resumed run starts from the fine-tuned policy
    sequential = n_parallel == 1 and executor == "local" and trial_timeout is None
    if n_trials > done and sequential:
        with store.errors():
            study.optimize(
                objective,
                n_trials=n_trials - done,
                callbacks=[after_trial],
                gc_after_trial=False,
            )
    elif n_trials > done:
        run = _ParallelRun(study, store, space, task, seed=seed, worker=worker, callback=callback)
        with (
            store.errors(),
            make_executor(executor, n_parallel, ray_address=ray_address) as ex,
        ):
            ex.start(backend, task)
            run.run(ex, n_trials - done, n_parallel, trial_timeout, done, n_trials, after_trial)
    finished = _finished(store, study)
    records = [_record(n, c, r, resumed=n in earlier) for n, c, r in finished]
    best_config, models, final, final_epochs = _best_then_final(backend, task, finished, seed)
    default_result = None
    default_test = None
    if compare_default:
        default = space.default()
        same = [r for _, c, r in finished if c == default]
        probe = same[0] if same else _reference(store, backend, task, default, seed)
        if probe.ok:
            _, default_result, _ = _final(backend, task, default, probe, seed)
            default_test = default_result.test_metric
    out_result = TuneResult(
        model=models[0] if len(models) == 1 else models,
        config=best_config,
        trials=records,
        test_metric=final.test_metric,
        default_test_metric=default_test,
        metric_name=task.metric_name,
        seconds=time.perf_counter() - start,
        task=task.name,
        final_epochs=final_epochs,
        policy=current if fine_tune else policy,
        final_result=final,
        default_result=default_result,
        extra={
            "fine_tune": fine_tune,
            "n_trials": n_trials,
            "storage": mask_url(store.url),
            "study": study.study_name,
            "worker": worker,
            "cached_trials": sum(1 for r in records if r["cached"]),
        },
    )
    if out is not None:
        out_result.save(out)
        if fine_tune:
            current.save(Path(out) / "policy_fine_tuned")
    return out_result


class _ParallelRun:
    """Up to P trials at once through an executor, with optuna's ask/tell: a free worker gets
    the policy's next configuration (never one that is running), results are told as they
    arrive, heartbeats are kept, and a trial whose worker died is failed and queued again."""

    def __init__(
        self,
        study: optuna.Study,
        store: TrialStore,
        space: Any,
        task: Task,
        *,
        seed: int,
        worker: str,
        callback: ProgressCallback | None,
    ) -> None:
        self.study, self.store, self.space, self.task = study, store, space, task
        self.seed, self.worker, self.callback = seed, worker, callback

    def run(
        self,
        ex: Executor,
        n: int,
        n_parallel: int,
        time_limit: float | None,
        done: int,
        total: int,
        after_trial: Callable[[optuna.Study, Any], None],
    ) -> None:
        import concurrent.futures as cf

        from optuna.storages._heartbeat import is_heartbeat_enabled

        study, store = self.study, self.store
        beats = is_heartbeat_enabled(study._storage)
        running: dict[cf.Future, tuple[optuna.Trial, dict[str, Any]]] = {}
        finished = 0
        while finished < n:
            while finished + len(running) < n and len(running) < n_parallel:
                with warnings.catch_warnings():  # heartbeats are recorded below
                    warnings.filterwarnings("ignore", message="Heartbeat of storage")
                    trial = study.ask()  # a queued retry first
                store.claim(trial)
                config = self.space.suggest(trial)
                hit = store.lookup(self.task, config, seed=self.seed)
                if hit is not None:
                    future: cf.Future = cf.Future()
                    future.set_result(hit)
                else:
                    future = ex.submit(config, seed=self.seed, time_limit=time_limit)
                running[future] = (trial, config)
            ready, _ = cf.wait(list(running), timeout=5.0, return_when=cf.FIRST_COMPLETED)
            if beats:
                for trial, _ in running.values():
                    study._storage.record_heartbeat(trial._trial_id)
            for future in ready:
                trial, config = running.pop(future)
                result = future.result()
                if self._died(trial, result):
                    continue  # queued again: does not count
                store.annotate(trial, self.task, config, result, seed=self.seed, worker=self.worker)
                state, value = trial_state(result)
                study.tell(trial, value, state=state)
                finished += 1
                if self.callback is not None:
                    self.callback(done + finished, total, config, result)
                after_trial(study, None)

    def _died(self, trial: optuna.Trial, result: TrialResult) -> bool:
        """A worker that died mid-trial: FAIL with the reason, and queue the configuration
        again once (optuna's retry convention). ``False`` once it was retried already."""
        if not worker_died(result):
            return False
        history = self.study._storage.get_trial(trial._trial_id).system_attrs.get(
            "retry_history", []
        )
        if len(history) >= self.store.max_retry:
            return False
        trial.set_user_attr("reason", result.reason)
        self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
        logger.warning("trial %d: %s; queued again", trial.number, result.reason)
        self.store.retry(self.study, self.study._storage.get_trial(trial._trial_id))
        return True


def _finished(
    store: TrialStore, study: optuna.Study
) -> list[tuple[int, dict[str, Any], TrialResult]]:
    """The study's trials that hold a result, as (number, config, result), oldest first."""
    out = []
    for t, r in store.results(study):
        config = t.user_attrs.get("hporl_config") or r.config
        r.cached = bool(t.user_attrs.get("cached", r.cached))
        out.append((t.number, dict(config), r))
    return out


def _reference(
    store: TrialStore, backend: TorchBackend, task: Task, config: dict[str, Any], seed: int
) -> TrialResult:
    """The default configuration's trial (from the store, else trained and kept in a study of
    its own, so it never enters the policy's history)."""
    hit = store.lookup(task, config, seed=seed)
    if hit is not None:
        return hit
    result = backend.evaluate(task, config, seed=seed)
    study = store.study("tune-reference", task)
    store.record(study, task, config, result, seed=seed)
    return result


def random_search(
    task: Task, space: Any, n_trials: int, *, seed: int = 0, backend: TorchBackend | None = None
) -> TuneResult:
    """The same procedure as :func:`tune_model` with uniformly random configurations (a baseline)."""
    start = time.perf_counter()
    backend = backend or TorchBackend(num_threads=1)
    rng = np.random.default_rng(seed)
    results = []
    for i in range(n_trials):
        config = space.sample(rng)
        results.append((i, config, backend.evaluate(task, config, seed=seed)))
    best_config, models, final, epochs = _best_then_final(backend, task, results, seed)
    return TuneResult(
        model=models[0] if len(models) == 1 else models,
        config=best_config,
        trials=[_record(i, c, r) for i, c, r in results],
        test_metric=final.test_metric,
        default_test_metric=None,
        metric_name=task.metric_name,
        seconds=time.perf_counter() - start,
        task=task.name,
        final_epochs=epochs,
        final_result=final,
    )
