"""``tune_model``: tune a model on a new task with a meta-trained policy, then train it for good."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.storages._heartbeat import HeartbeatThread, fail_stale_trials, is_heartbeat_enabled
from optuna.trial import TrialState
from torch import nn

from hporl._io import atomic_write, did_you_mean, save_torch, writable_dir
from hporl.backends import TorchBackend, TrialResult
from hporl.backends.torch_backend import space_for
from hporl.evaluation import (
    FIRST_COMPLETED,
    PRUNERS,
    Evaluation,
    Evaluator,
    FinalFit,
    horizon_of,
    make_pruner,
    pruning_callback,
)
from hporl.exceptions import ConfigError, HporlError, TaskError
from hporl.executors import EXECUTORS, Executor, LocalExecutor, make_executor
from hporl.policy import Policy
from hporl.sampler import (
    PROBE,
    SAMPLERS,
    THEN,
    HandoverSampler,
    PolicySampler,
    Probe,
    budgeted_choice,
    handover_after,
)
from hporl.saved_model import Predictor
from hporl.space import config_key
from hporl.store import PRUNED_EPOCH, WORKER, TrialStore, mask_url, storage_url, trial_state
from hporl.tasks import Task

__all__ = ["TuneOptions", "TuneResult", "random_search", "tune_model"]

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int, dict[str, Any], TrialResult], None]


@dataclass
class TuneResult:
    """What :func:`tune_model` produced.

    Attributes:
        model: the final model (a list when the task has several), trained on train+val with
            ``config`` for the best trial's best epoch count.
        config: the best configuration (highest best validation metric over the trials trained
            for their full epochs: a trial stopped by the pruner is never chosen).
        trials: one record per trial (number, config, status, best/final val metric, best epoch,
            epochs trained, wall time, reason); a trial stopped by the pruner has status
            ``"pruned"`` and ``pruned_epoch``, the last epoch it trained.
        test_metric: the final model's metric on the held-out test split.
        default_test_metric: the same final training with the space's default configuration.
        predictor: the final model with the task's preprocessing and class labels: it predicts
            on raw rows (``predictor.predict(X)``), and :meth:`save` writes it so that
            :func:`hporl.load_model` reads it back without the training data.
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
    predictor: Predictor | None = None

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
                (
                    t["best_val_metric"]
                    for t in self.trials
                    if t["best_val_metric"] is not None and t["status"] != "pruned"
                ),
                default=None,
            ),
            **self.extra,
        }

    def save(self, directory: str | Path) -> Path:
        """Write the model that predicts on its own (``model.json``, ``model.safetensors``,
        ``model.onnx``, ...: see :mod:`hporl.saved_model`; read it with
        :func:`hporl.load_model`), the bare weights ``model.pt`` (or ``model_<i>.pt``;
        ``torch.load(weights_only=True)``), ``config.json`` and ``report.json``; each file to
        a temporary name, then renamed."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if self.predictor is not None:
            self.predictor.save(directory)
        models = self.model if isinstance(self.model, list) else [self.model]
        for i, m in enumerate(models):
            name = "model.pt" if len(models) == 1 else f"model_{i}.pt"
            save_torch(directory / name, m.state_dict())
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


def _record(
    number: int,
    config: dict[str, Any],
    r: TrialResult,
    resumed: bool = False,
    pruned_epoch: int | None = None,
) -> dict[str, Any]:
    return {
        "number": number,
        "config": config,
        "status": "pruned" if pruned_epoch is not None else r.status,
        "pruned_epoch": pruned_epoch,
        "best_val_metric": r.best_metric,
        "final_val_metric": r.final_metric,
        "best_epoch": r.best_epoch,
        "epochs": r.epochs_done,
        "seconds": r.wall_time,
        "reason": r.reason,
        "cached": r.cached,
        "resumed": resumed,
    }


@dataclass(frozen=True)
class TuneOptions:
    """The less common settings of :func:`tune_model`.

    Attributes:
        trial_timeout: seconds a trial may take; it is stopped after the epoch in which the
            limit passes (recorded PRUNED with the reason).
        study_name: the study of this task in the store (default
            ``tune/<task>-<fingerprint>``). Several processes given the same storage and study
            share their trials: the policy of each sees every trial, and each runs ``n_trials``
            of its own.
        worker: who this process is among several sharing a study (default: the ``out``
            directory, else ``"main"``); ``n_trials`` counts this worker's finished trials, so a
            restarted worker tops up its own share.
        compare_default: also run the final training with the space's default configuration
            (its epoch count from one trial of it) and report ``default_test_metric``.
        deterministic: the policy takes its most likely bins (else it samples them).
        fine_tune_steps: gradient steps of each fine-tuning (with ``fine_tune=True``).
        then: the optuna sampler that proposes the trials after the policy's first ``handover``
            (``"gp"``, the default; ``"tpe"``, ``"random"`` or ``"cmaes"``;
            :meth:`HandoverSampler.after_policy`): its model starts at once on every trial of
            the study, the policy's included. ``None``: the policy proposes every trial. A
            budget-aware policy with ``budget_epochs`` decides every trial (its fidelity too)
            until it has spent ``handover`` full trainings' epochs; then ``then`` proposes
            full trainings, its model fitted on the policy's trials trained for all epochs.
        handover: how many trials (a budget-aware policy: full trainings' epochs) the policy
            spends before ``then`` takes over (default: what it was meta-trained for,
            :attr:`Policy.budget`, at most 10).
        probe: with ``budget_epochs``, how a policy that is not budget-aware spends them
            (:class:`~hporl.sampler.Probe`): its first proposal trains fully, later ones are
            probes of ``probe.fidelity`` of the epochs, and after every ``probe.rounds``
            probes the best is continued to the full epochs (resumed). ``None``: every trial
            trains fully (``budget_epochs // epochs`` trials).
        backend: the backend that trains (default ``TorchBackend(num_threads=1)``).
    """

    trial_timeout: float | None = None
    study_name: str | None = None
    worker: str | None = None
    compare_default: bool = True
    deterministic: bool = True
    fine_tune_steps: int = 10
    then: str | None = THEN
    handover: int | None = None
    backend: TorchBackend | None = None
    probe: Probe | None = PROBE

    def __post_init__(self) -> None:
        if self.trial_timeout is not None and not self.trial_timeout > 0:
            raise ConfigError(
                f"trial_timeout must be a positive number of seconds, got {self.trial_timeout!r}"
            )
        if self.then is not None and self.then not in SAMPLERS:
            raise ConfigError(
                f"then must be one of {', '.join(SAMPLERS)} (the sampler after the policy's "
                f"trials), got {self.then!r}." + did_you_mean(str(self.then), list(SAMPLERS))
            )
        if self.handover is not None:
            if self.then is None:
                raise ConfigError("handover needs then (the sampler that takes over)")
            if isinstance(self.handover, bool) or not isinstance(self.handover, int):
                raise ConfigError(f"handover must be a positive integer, got {self.handover!r}")
            if self.handover < 1:
                raise ConfigError(f"handover must be a positive integer, got {self.handover!r}")
        if self.probe is not None and not isinstance(self.probe, Probe):
            raise ConfigError(f"probe must be a hporl.sampler.Probe or None, got {self.probe!r}")
        if not isinstance(self.fine_tune_steps, int) or self.fine_tune_steps < 1:
            raise ConfigError(
                f"fine_tune_steps must be a positive integer, got {self.fine_tune_steps!r}"
            )


def tune_model(
    model: Any = None,
    data: Any = None,
    *,
    policy: Policy | str | Path | None = None,
    n_trials: int | None = None,
    budget_epochs: int | None = None,
    epochs: int | None = None,
    target: str | None = None,
    seed: int = 0,
    out: str | Path | None = None,
    storage: str | Path | None = None,
    executor: str | Executor = "local",
    pruner: str | optuna.pruners.BasePruner | None = None,
    fine_tune: bool = False,
    callback: ProgressCallback | None = None,
    options: TuneOptions | None = None,
) -> TuneResult:
    """Tune ``model`` (a module, a factory, or a list of them; ``None`` for the default MLP/CNN)
    on ``data`` with ``policy`` for ``n_trials`` trials (default 10), or until ``budget_epochs``
    epochs are spent, then train the final model.

    Every trial is an optuna trial in the trial store (:mod:`hporl.store`), so a run started
    again with the same ``out`` / ``storage`` continues where it stopped: finished trials are
    not run again, the policy's history is rebuilt from the store, and a trial whose process
    died is failed and retried once. An evaluation already in the store (same task
    fingerprint, configuration, seed and epochs, from any run) is reused, not trained.

    The final model is trained on train + validation with the best trial's configuration for
    its best epoch count, and checked like a trial (:meth:`hporl.evaluation.Evaluator.final_fit`):
    when it diverges, its loss explodes or its validation metric collapses, the best trial's
    own weights are shipped instead; ``report.json``'s ``final_fit`` says which and why.

    Args:
        data: a :class:`Task`, an ``(X, y)`` pair, or a CSV path (with ``target``).
        policy: a :class:`Policy` or a policy directory; ``None``: the packaged default policy
            (:meth:`Policy.default`, the ``optimizer`` space, meta-trained with 10 epochs per
            trial and K = 10).
        storage: an optuna storage URL (or a SQLite file path) for the trials; default:
            ``out/trials.db`` when ``out`` is given, else in memory.
        out: where to save the final model, config and ``report.json``.
        executor: where trials run, and how many at once (:mod:`hporl.executors`): ``"local"``
            (one at a time in this process), ``LocalExecutor(P)`` (a pool of P processes),
            ``RayExecutor(P, address=...)`` or ``"ray"`` (a Ray cluster at ``RAY_ADDRESS``, else
            a local Ray for this run). With P > 1 the policy proposes a configuration for each
            free worker, never one already running, and reads every result as it arrives. A
            trial whose worker dies is run once more.
        pruner: stop unpromising trials early: ``"median"``, ``"asha"``, ``"hyperband"`` (optuna's
            pruners, see :func:`hporl.evaluation.make_pruner`) or an optuna ``BasePruner``. Each
            trial reports its validation metric after every epoch (``trial.report``); a pruned
            trial is PRUNED in the store with ``pruned_epoch`` and its curve so far, is never
            chosen as the best, and a resumed run counts it as done. It needs the trials in
            this process (one local worker) and a task with one model.
        budget_epochs: a budget in epochs over all trials, instead of ``n_trials`` (the final
            training is not counted). A budget-aware policy (:attr:`Policy.budget_aware`,
            meta-trained with ``budget_unit: epochs``) chooses each trial's fidelity, a fraction
            of the task's epochs, or continues a promising trial for more epochs (the default
            backend resumes it from a checkpoint, ``TorchBackend(resume=True)``, so it costs
            the extra epochs; a shortened trial is the start of the full training); after
            ``options.handover`` full trainings' epochs ``options.then`` proposes full
            trainings. The final model comes from the best trial trained for the full epochs
            (the best trial of any fidelity when none was). Trials run one at a time, in this
            process. Any other policy's proposals are probed (``options.probe``, by default
            :data:`~hporl.sampler.PROBE`: the first trains fully, then probes of a third of
            the epochs, the better of every two continued to full), then handed over as
            above; with ``options.probe=None``, a parallel executor or a backend that cannot
            resume, it runs ``budget_epochs // epochs`` full trials (then handing over as with
            ``n_trials``).
        fine_tune: after each trial, update (a copy of) the policy on this task's trials.
        callback: ``callback(done, n_trials, config, result)`` after each trial (``n_trials``
            is 0 under ``budget_epochs`` with a budget-aware policy: the total is not known).
        options: the less common settings (:class:`TuneOptions`).

    Raises:
        HporlError: bad data, policy, storage or arguments, before any training.
    """
    start = time.perf_counter()
    options = options or TuneOptions()
    if data is None:
        raise TaskError("tune_model needs data: a Task, an (X, y) pair, or a CSV path")
    if n_trials is not None and budget_epochs is not None:
        raise ConfigError(
            "give n_trials (a budget in trials) or budget_epochs (a budget in epochs), not both"
        )
    if budget_epochs is not None and (
        not isinstance(budget_epochs, int) or isinstance(budget_epochs, bool) or budget_epochs < 1
    ):
        raise ConfigError(f"budget_epochs must be a positive integer, got {budget_epochs!r}")
    if budget_epochs is not None and (pruner is not None or fine_tune):
        what = "a pruner" if pruner is not None else "fine_tune"
        raise ConfigError(
            f"budget_epochs cannot be combined with {what}: the policy chooses how long each "
            "trial trains"
        )
    n_trials = 10 if n_trials is None and budget_epochs is None else n_trials
    if n_trials is not None and (
        not isinstance(n_trials, int) or isinstance(n_trials, bool) or n_trials < 1
    ):
        raise ConfigError(f"n_trials must be a positive integer, got {n_trials!r}")
    if epochs is not None and (
        not isinstance(epochs, int) or isinstance(epochs, bool) or not 1 <= epochs <= 100_000
    ):
        raise ConfigError(f"epochs must be a positive integer (at most 100000), got {epochs!r}")
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**32:
        raise ConfigError(f"seed must be an integer in [0, 2**32), got {seed!r}")
    if not isinstance(executor, Executor) and executor not in EXECUTORS:
        raise ConfigError(f"executor must be one of {', '.join(EXECUTORS)}, got {executor!r}")
    if not (pruner is None or isinstance(pruner, optuna.pruners.BasePruner) or pruner in PRUNERS):
        raise ConfigError(
            f"pruner must be one of {', '.join(PRUNERS)}, None or an optuna BasePruner, "
            f"got {pruner!r}"
        )
    task = _build_task(model, data, target=target, epochs=epochs, seed=seed)
    # With a budget in epochs a trial may be continued: a resuming backend trains the extra
    # epochs only (a policy that is not budget-aware trains full trials, where it changes nothing).
    backend = options.backend or TorchBackend(num_threads=1, resume=budget_epochs is not None)
    executor = make_executor(executor)
    if pruner is not None:
        if not executor.in_process:
            raise ConfigError(
                "a pruner reads every epoch as it is trained, in this process: it cannot be "
                f"combined with {executor.n_workers} parallel workers or the ray executor"
            )
        if len(task.models) > 1:
            raise ConfigError(
                f"a pruner stops one training; this task trains {len(task.models)} models per "
                "trial: tune them without a pruner, or one at a time"
            )
    pruner = make_pruner(pruner, max_epochs=task.epochs)
    if isinstance(executor, LocalExecutor) and executor.n_workers > 1:
        executor.start(backend, task)  # its workers start while the policy loads
    with executor:
        if policy is None:
            policy = Policy.default()
        elif isinstance(policy, (str, Path)):
            policy = Policy.load(policy)
        if policy.feature_names is None:
            raise ConfigError(
                "this policy was meta-trained on synthetic tasks without hporl's meta-features; it cannot read a real task's features"
            )
        policy.task_features(task)  # checks the feature count before any training
        backend.check_space(policy.space, task)  # what training would misread, before any file
        # A policy that is not budget-aware probes its proposals (options.probe) when a
        # continuation resumes and trials run here, one at a time (else: full trials).
        probing = (
            not policy.budget_aware
            and options.probe is not None
            and bool(getattr(backend, "resumable", False))
            and executor.in_process
            and budget_epochs is not None
            and budget_epochs >= task.epochs
        )
        budgeted = budget_epochs is not None and (policy.budget_aware or probing)
        if budget_epochs is not None and not budgeted:
            n_trials = budget_epochs // task.epochs
            if n_trials < 1:
                raise ConfigError(
                    f"budget_epochs {budget_epochs} is less than one full training of "
                    f"{task.epochs} epochs, and this policy is not budget-aware (it trains every "
                    "trial for the full epochs): raise budget_epochs or use a budget-aware policy"
                )
            logger.info(
                "the policy is not budget-aware: %d full trials of %d epochs",
                n_trials,
                task.epochs,
            )
        if budgeted and not executor.in_process:
            raise ConfigError(
                "budget_epochs with a budget-aware policy runs one trial at a time, in this "
                f"process: it cannot be combined with {executor.n_workers} parallel workers or "
                "the ray executor"
            )
        if out is not None:
            writable_dir(out)
        space = space_for(policy.space, task)
        store = TrialStore(storage_url(storage, out))
        worker = options.worker or (str(Path(out).resolve()) if out is not None else "main")
        policy_sampler = PolicySampler(
            policy, task=task, deterministic=options.deterministic, seed=seed
        )
        sampler: optuna.samplers.BaseSampler = policy_sampler
        if options.then is not None and not budgeted:
            sampler = HandoverSampler.after_policy(
                policy_sampler,
                options.then,
                after=options.handover,
                seed=seed,
                parallel=executor.n_workers > 1,
            )
        study = store.study(
            "tune",
            task,
            sampler=sampler,
            pruner=pruner,
            name=options.study_name or f"tune/{task.name}-{task.fingerprint[:12]}",
        )
        orphans = store.fail_orphans(study, retry=False)
        before = store.results(study)
        earlier = {t.number for t, _ in before}
        done = sum(1 for t, _ in before if t.user_attrs.get(WORKER) == worker)
        retries = 0 if budgeted else max(n_trials - done, 0)
        store.queue_retries(study, orphans[:retries])  # what this run takes
        current = policy

        def after_trial() -> None:
            nonlocal current
            if not fine_tune:
                return
            history = [(c, r) for _, c, r in _finished(store, study)]
            if len(history) >= 2:
                current = policy.fine_tune(task, history, steps=options.fine_tune_steps)
                policy_sampler.policy = current

        def progress(i: int, config: dict[str, Any], result: TrialResult) -> None:
            if callback is not None:
                callback(done + i, n_trials, config, result)

        if fine_tune:
            after_trial()  # a resumed run starts from the fine-tuned policy
        # Trials are recorded in the study; the evaluator records only the default's reference.
        evaluator = Evaluator(
            backend,
            store=store,
            run="tune-reference",
            space=space,
            executor=executor,
        )
        evaluator.start(task)
        with evaluator, store.errors():
            trials = _Trials(study, evaluator, task, space, seed=seed, worker=worker, pruner=pruner)
            fidelity: dict[int, float] = {}
            if budgeted:
                spent, fidelity = _budgeted_trials(
                    policy,
                    study,
                    evaluator,
                    task,
                    space,
                    budget_epochs=budget_epochs,
                    seed=seed,
                    worker=worker,
                    deterministic=options.deterministic,
                    callback=callback,
                    then=options.then,
                    after=handover_after(policy, options.handover),
                    probe=options.probe,
                )
            elif n_trials > done:
                trials.run(n_trials - done, options.trial_timeout, progress, after_trial)
            t0 = time.perf_counter()
            finished = _finished(store, study)
            pruned = _pruned_epochs(study)
            attrs = (
                {t.number: t.user_attrs for t in study.get_trials(deepcopy=False)}
                if budgeted
                else {}
            )
            complete = [t for t in finished if t[0] not in pruned]
            if budgeted and any(fidelity.get(n, 1.0) >= 1.0 for n, _, r in complete if r.ok):
                complete = [t for t in complete if fidelity.get(t[0], 1.0) >= 1.0]
            if pruned and not any(r.ok for _, _, r in complete):
                raise HporlError(
                    f"all {len(finished)} trials were pruned, failed or diverged: no trial "
                    "trained for its full epochs to choose; run more trials (the same --out "
                    "resumes) or use a milder pruner"
                )
            final = evaluator.best_then_final_fit(task, complete, seed=seed)
            default_final = None
            if options.compare_default:
                default = space.default()
                same = [r for _, c, r in complete if c == default]
                probe = same[0] if same else evaluator.evaluate(task, default, seed=seed)
                if probe.ok:
                    default_final = evaluator.final_fit(task, default, probe, seed=seed)
            trials.seconds["final"] = time.perf_counter() - t0
        handed = options.then is not None and (budgeted or isinstance(sampler, HandoverSampler))
        out_result = _tune_result(
            task,
            final,
            [
                _record(n, c, r, resumed=n in earlier, pruned_epoch=pruned.get(n))
                | (_budget_record(attrs.get(n, {}), fidelity.get(n, 1.0)) if budgeted else {})
                for n, c, r in finished
            ],
            start,
            default=default_final,
            policy=current if fine_tune else policy,
            extra={
                "final_fit": final.report(),
                "fine_tune": fine_tune,
                "then": options.then if handed else None,
                "handover": handover_after(policy, options.handover) if handed else None,
                "pruner": None if pruner is None else type(pruner).__name__,
                "n_pruned": len(pruned),
                "n_trials": n_trials if not budgeted else len(finished),
                "budget_epochs": budget_epochs,
                "epochs_spent": spent if budgeted else None,
                "budget_aware": budgeted and policy.budget_aware,
                "probe": dataclasses.asdict(options.probe) if probing else None,
                "storage": mask_url(store.url),
                "study": study.study_name,
                "worker": worker,
                "cached_trials": sum(1 for _, _, r in finished if r.cached),
                "driver_seconds": {k: round(v, 4) for k, v in trials.seconds.items()},
            },
        )
        if out is not None:
            out_result.save(out)
            if fine_tune:
                current.save(Path(out) / "policy_fine_tuned")
        return out_result


class _Clock:
    """Adds the seconds spent in each named part of a loop to ``seconds``."""

    def __init__(self, seconds: dict[str, float]) -> None:
        self.seconds, self.part, self.since = seconds, None, time.perf_counter()

    def switch(self, part: str | None) -> None:
        now = time.perf_counter()
        if self.part is not None:
            self.seconds[self.part] += now - self.since
        self.part, self.since = part, now

    @contextlib.contextmanager
    def __call__(self, part: str) -> Iterator[None]:
        self.switch(part)
        try:
            yield
        finally:
            self.switch(None)


class _Heartbeat(HeartbeatThread):
    """optuna's heartbeat thread of a running trial, except that a heartbeat the database
    refuses (full disk, lost connection) is logged, not raised: raised in the thread, it printed
    a traceback beside the run's one-line error. The run's own next write reports the fault."""

    @staticmethod
    def _record_heartbeat(trial_id: int, heartbeat: Any, stop_event: Any) -> None:
        interval = heartbeat.get_heartbeat_interval()
        while True:
            try:
                heartbeat.record_heartbeat(trial_id)
            except Exception:  # the main thread meets the same fault at its next write
                logger.debug("trial %d: heartbeat not recorded", trial_id, exc_info=True)
            if stop_event.wait(timeout=interval):
                return


@dataclass(eq=False)
class _Running:
    trial: optuna.Trial
    config: dict[str, Any]
    evaluation: Evaluation | None = None
    beat: Any = None
    pruned_at: list[int] = field(default_factory=list)  # the epoch a pruner stopped it at

    def stop_heartbeat(self) -> None:
        if self.beat is not None:
            self.beat.join()
            self.beat = None


class _Trials:
    """Trials with optuna's ask/tell, as many at once as the evaluator has workers: a free
    worker gets the policy's next configuration (never one that is running), results are told
    as they arrive, and every running trial keeps its heartbeat. A trial interrupted (Ctrl-C,
    an error) is failed and marked stale, so the policy's history leaves it out. With the
    study's ``pruner``, each trial reports every epoch and stops where the pruner says."""

    def __init__(
        self,
        study: optuna.Study,
        evaluator: Evaluator,
        task: Task,
        space: Any,
        *,
        seed: int,
        worker: str,
        pruner: optuna.pruners.BasePruner | None = None,
    ) -> None:
        self.study, self.evaluator, self.task, self.space = study, evaluator, task, space
        self.seed, self.worker, self.pruner = seed, worker, pruner
        self.store: TrialStore = evaluator.store  # type: ignore[assignment]
        # Where the driver's time goes (seconds): starting the executor, proposing (ask, the
        # policy), submitting, waiting for results, recording them (annotate, tell), and the
        # per-trial callbacks (fine-tuning, progress).
        self.seconds = dict.fromkeys(("start", "propose", "submit", "wait", "record", "after"), 0.0)

    def run(
        self,
        n: int,
        time_limit: float | None,
        progress: Callable[[int, dict[str, Any], TrialResult], None],
        after_trial: Callable[[], None],
    ) -> None:
        """Run ``n`` trials; ``progress(i, config, result)`` and ``after_trial()`` after each."""
        study = self.study
        beats = is_heartbeat_enabled(study._storage)
        running: list[_Running] = []
        finished = 0
        clock = _Clock(self.seconds)
        with clock("start"):
            self.evaluator.executor  # noqa: B018 - workers up before the first trial is asked
        try:
            while finished < n:
                while finished + len(running) < n and len(running) < self.evaluator.n_workers:
                    clock.switch("propose")
                    with warnings.catch_warnings():  # each running trial has a heartbeat thread
                        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                        warnings.filterwarnings("ignore", message="Heartbeat of storage")
                        if beats:  # as study.optimize does: stale trials of others, retried
                            fail_stale_trials(study)
                        trial, configuring = self._new_trial()
                    item = _Running(trial, self.space.suggest(trial))
                    if configuring:
                        self.store.configured(trial)
                    running.append(item)
                    if beats:
                        item.beat = _Heartbeat(trial._trial_id, study._storage)
                        item.beat.start()
                    clock.switch("submit")
                    on_epoch = None
                    if self.pruner is not None:
                        on_epoch = pruning_callback(trial, item.pruned_at)
                    item.evaluation = self.evaluator.submit(
                        self.task,
                        item.config,
                        seed=self.seed,
                        time_limit=time_limit,
                        record=False,
                        on_epoch=on_epoch,
                    )
                clock.switch("wait")
                self.evaluator.wait([r.evaluation for r in running], return_when=FIRST_COMPLETED)
                for item in [r for r in running if r.evaluation.done()]:
                    running.remove(item)
                    clock.switch("record")
                    result = self._tell(item)
                    finished += 1
                    clock.switch("after")
                    progress(finished, item.config, result)
                    after_trial()
            clock.switch(None)
        except BaseException:
            for item in running:  # what the database still takes; the first error goes on
                item.stop_heartbeat()
                with contextlib.suppress(Exception):
                    item.trial.set_user_attr("hporl_stale", True)
                    item.trial.set_user_attr("reason", "interrupted")
                    study.tell(item.trial, state=TrialState.FAIL)
            raise

    def _new_trial(self) -> tuple[optuna.Trial, bool]:
        """A queued retry first, or the proposal of the sampler a policy handed over to
        (``study.ask``; ``True``: its parameters are still to be suggested); else the policy's
        proposal, made a running trial in one transaction."""
        study = self.study
        sampler = study.sampler
        trials = study.get_trials(deepcopy=False)  # read once for the queue and the proposal
        if isinstance(sampler, HandoverSampler):  # the policy's turn, or the other's
            sampler = sampler.sampler_of(trials, len(trials))
        if not isinstance(sampler, PolicySampler) or sampler.waiting(study, trials):
            trial = study.ask()
            self.store.claim(trial, configuring=True)  # its parameters come one by one
            return trial, True
        config = sampler.propose(study, trials=trials)
        return self.store.open_trial(study, self.space, self.space.conform(config)), False

    def _tell(self, item: _Running) -> TrialResult:
        item.stop_heartbeat()
        evaluation = item.evaluation
        result = evaluation.result
        pruned_epoch = None
        if item.pruned_at and result.stopped_early and result.epochs_done == item.pruned_at[-1]:
            pruned_epoch = item.pruned_at[-1]
            result.reason = f"pruned by {type(self.pruner).__name__} after epoch {pruned_epoch}"
        self.store.annotate(
            item.trial,
            self.task,
            item.config,
            result,
            seed=self.seed,
            worker=self.worker,
            pruned_epoch=pruned_epoch,
        )
        if evaluation.retried_after:
            item.trial.set_user_attr("retried_after", evaluation.retried_after)
        state, value = trial_state(result)
        self.study.tell(item.trial, value, state=state)
        return result


FIDELITY = "hporl_fidelity"
COST = "hporl_epochs_cost"
CONTINUES = "hporl_continues"
"""User attributes of a trial of a budget-aware run: its fidelity (a fraction of the task's
epochs), the epochs it cost, and the number of the trial it continued (to a higher fidelity)."""


def _budget_record(attrs: dict[str, Any], fidelity: float) -> dict[str, Any]:
    """What a budget-aware run's report adds to a trial: its fidelity, the epochs it cost (a
    continuation on a resuming backend: the extra ones) and the trial it continued."""
    return {
        "fidelity": fidelity,
        "epochs_cost": attrs.get(COST),
        "continues": attrs.get(CONTINUES),
    }


def _budgeted_trials(
    policy: Policy,
    study: optuna.Study,
    evaluator: Evaluator,
    task: Task,
    space: Any,
    *,
    budget_epochs: int,
    seed: int,
    worker: str,
    deterministic: bool,
    callback: ProgressCallback | None,
    then: str | None = None,
    after: int = 0,
    probe: Probe | None = PROBE,
) -> tuple[int, dict[int, float]]:
    """A policy's trials in a budget of epochs (a budget-aware policy's choices, any other's
    proposals probed as ``probe`` says), one at a time, until no choice fits in the epochs left;
    with ``then``, once ``after`` full trainings' epochs are spent, that optuna sampler's full
    trainings (:func:`~hporl.sampler.budgeted_choice`, given the trials trained for all the
    epochs) while one fits. A resumed run rebuilds the history and the epochs spent from the
    study, and proposes what an uninterrupted one would. Returns the epochs spent and each
    trial's fidelity (by trial number)."""
    store: TrialStore = evaluator.store  # type: ignore[assignment]
    resumable = bool(getattr(evaluator.backend, "resumable", False))
    history: list[tuple[dict[str, Any], TrialResult, float]] = []
    numbers: list[int] = []  # the trial number behind each history entry
    fidelity: dict[int, float] = {}
    spent = 0
    for t, r in store.results(study):
        if FIDELITY not in t.user_attrs:
            continue
        config = dict(t.user_attrs.get("hporl_config") or r.config)
        fidelity[t.number] = float(t.user_attrs[FIDELITY])
        spent += int(t.user_attrs.get(COST, r.epochs))
        entry = (config, r, fidelity[t.number])
        continued = t.user_attrs.get(CONTINUES)
        if continued is not None and continued in numbers:
            history[numbers.index(continued)] = entry
            numbers[numbers.index(continued)] = t.number
        else:
            history.append(entry)
            numbers.append(t.number)
    tried = {config_key(c) for c, _, _ in history}
    rng = np.random.default_rng(seed)
    done = 0
    while spent < budget_epochs:
        choice = budgeted_choice(
            policy,
            task,
            history,
            spent=spent,
            budget_epochs=budget_epochs,
            resumable=resumable,
            then=then,
            after=after,
            space=space,
            score=lambda r: trial_state(r)[1],
            seed=seed,
            position=len(fidelity),
            rng=rng,
            avoid=tried,
            deterministic=deterministic,
            probe=probe,
        )
        if choice is None:
            break
        config = space.conform(choice.config)
        trial = store.open_trial(study, space, config)
        try:
            result = evaluator.evaluate(task, config, seed=seed, epochs=choice.epochs, record=False)
            store.annotate(
                trial,
                task,
                config,
                result,
                seed=seed,
                epochs=choice.epochs,
                worker=worker,
                horizon=horizon_of(evaluator.backend, task, choice.epochs),
            )
            trial.set_user_attr(FIDELITY, choice.fidelity)
            trial.set_user_attr(COST, choice.cost)
            if choice.continues is not None:
                trial.set_user_attr(CONTINUES, numbers[choice.continues])
        except BaseException:
            with contextlib.suppress(Exception):
                trial.set_user_attr("hporl_stale", True)
                study.tell(trial, state=TrialState.FAIL)
            raise
        state, value = trial_state(result)
        study.tell(trial, value, state=state)
        spent += choice.cost
        fidelity[trial.number] = choice.fidelity
        entry = (config, result, choice.fidelity)
        if choice.continues is None:
            history.append(entry)
            numbers.append(trial.number)
            tried.add(config_key(config))
        else:
            history[choice.continues] = entry
            numbers[choice.continues] = trial.number
        done += 1
        if callback is not None:
            callback(done, 0, config, result)
    return spent, fidelity


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


def _pruned_epochs(study: optuna.Study) -> dict[int, int]:
    """The study's trials stopped by a pruner: trial number -> the last epoch it trained."""
    return {
        t.number: int(t.user_attrs[PRUNED_EPOCH])
        for t in study.get_trials(deepcopy=False, states=(TrialState.PRUNED,))
        if PRUNED_EPOCH in t.user_attrs
    }


def random_search(
    task: Task, space: Any, n_trials: int, *, seed: int = 0, evaluator: Evaluator | None = None
) -> TuneResult:
    """The same procedure as :func:`tune_model` with uniformly random configurations (a baseline)."""
    start = time.perf_counter()
    evaluator = evaluator or Evaluator(TorchBackend(num_threads=1))
    evaluator.backend.check_space(space, task)
    space = space_for(space, task)
    rng = np.random.default_rng(seed)
    configs = [space.sample(rng) for _ in range(n_trials)]
    results = evaluator.evaluate_many(task, configs, seed=seed)
    trials = [(i, c, r) for i, (c, r) in enumerate(zip(configs, results, strict=True))]
    final = evaluator.best_then_final_fit(task, trials, seed=seed)
    records = [_record(i, c, r) for i, c, r in trials]
    return _tune_result(task, final, records, start, extra={"final_fit": final.report()})


def _tune_result(
    task: Task,
    final: FinalFit,
    records: list[dict[str, Any]],
    start: float,
    *,
    default: FinalFit | None = None,
    policy: Policy | None = None,
    extra: dict[str, Any],
) -> TuneResult:
    models = final.models
    per_model = final.result.per_model or [final.result]
    predictor = Predictor.from_task(
        task,
        models,
        final.config,
        test_metric=final.result.test_metric,
        network_metrics=[r.test_metric for r in per_model],
    )
    return TuneResult(
        model=models[0] if len(models) == 1 else models,
        config=final.config,
        trials=records,
        test_metric=final.result.test_metric,
        default_test_metric=default.result.test_metric if default else None,
        metric_name=task.metric_name,
        seconds=time.perf_counter() - start,
        task=task.name,
        final_epochs=final.epochs,
        policy=policy,
        final_result=final.result,
        default_result=default.result if default else None,
        extra=extra,
        predictor=predictor,
    )
