"""``TorchBackend``: real PyTorch training of a task's model(s) with one configuration."""

from __future__ import annotations

import copy
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn
from torch.optim import lr_scheduler
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from hporl._io import save_torch, write_json
from hporl.augment import Augmenter
from hporl.backends._base import Backend, EpochCallback, TrialResult, aggregate
from hporl.exceptions import ConfigError, HporlError
from hporl.space import config_key

if TYPE_CHECKING:
    from hporl.space import SearchSpace
    from hporl.tasks import Task

__all__ = ["OPTIMIZERS", "SCHEDULES", "TorchBackend"]

logger = logging.getLogger(__name__)

OPTIMIZERS = ("sgd", "sgd_nesterov", "adam", "adamw", "rmsprop", "adagrad", "nadam", "radam")
SCHEDULES = ("constant", "step", "exponential", "cosine", "warmup_cosine", "onecycle")
AVERAGING = ("off", "ema", "swa")
AUGMENT_CHUNK = 1024  # training images augmented per call (the per-call cost is shared)


class _BadConfig(ValueError):
    """A hyperparameter value the backend cannot use (becomes a ``failed`` result)."""


@dataclass(frozen=True)
class _Hyper:
    """The training hyperparameters read from a configuration (the ``optimizer`` space's names;
    ``learning_rate`` is accepted for ``lr``, as in the ``lcbench`` space). Missing keys take
    the ``optimizer`` space's defaults; other keys (architecture) are for the model factory."""

    optimizer: str
    lr: float
    momentum: float
    beta1: float
    beta2: float
    weight_decay: float
    lr_schedule: str
    warmup_fraction: float
    step_gamma: float
    exp_gamma: float
    batch_size: int
    grad_clip_norm: float
    label_smoothing: float
    weight_averaging: str
    ema_decay: float
    swa_start: float

    @classmethod
    def read(cls, config: Mapping[str, Any]) -> _Hyper:
        def num(key: str) -> float:
            default = NUMERIC[key][0]
            value = config.get(key, default)
            if key == "lr" and "lr" not in config and "learning_rate" in config:
                value = config["learning_rate"]
            if value is None:
                value = default
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise _BadConfig(f"{key} must be a number, got {value!r}")
            value = float(value)
            if not _within(value, key):
                raise _BadConfig(f"{key} must lie in {_bounds(key)}, got {value!r}")
            return value

        def choice(key: str) -> str:
            default, options = CHOICES[key]
            value = config.get(key, default)
            if value not in options:
                raise _BadConfig(f"{key} must be one of {', '.join(options)}, got {value!r}")
            return str(value)

        batch = config.get("batch_size", 64)
        if not _within(batch, "batch_size") or batch != int(batch):
            raise _BadConfig(
                f"batch_size must be an integer in {_bounds('batch_size')}, got {batch!r}"
            )
        return cls(
            optimizer=choice("optimizer"),
            lr=num("lr"),
            momentum=num("momentum"),
            beta1=num("beta1"),
            beta2=num("beta2"),
            weight_decay=num("weight_decay"),
            lr_schedule=choice("lr_schedule"),
            warmup_fraction=num("warmup_fraction"),
            step_gamma=num("step_gamma"),
            exp_gamma=num("exp_gamma"),
            batch_size=int(batch),
            grad_clip_norm=num("grad_clip_norm"),
            label_smoothing=num("label_smoothing"),
            weight_averaging=choice("weight_averaging"),
            ema_decay=num("ema_decay"),
            swa_start=num("swa_start"),
        )


NUMERIC: dict[str, tuple[float, float, float, bool]] = {
    "lr": (1e-3, 0.0, 1000.0, True),
    "momentum": (0.9, 0.0, 1.0, False),
    "beta1": (0.9, 0.0, 1.0, False),
    "beta2": (0.999, 0.0, 1.0, False),
    "weight_decay": (0.0, 0.0, 10.0, False),
    "warmup_fraction": (0.1, 0.0, 1.0, False),
    "step_gamma": (0.5, 0.0, 1.0, True),
    "exp_gamma": (0.95, 0.0, 1.0, True),
    "batch_size": (64, 1, 1_000_000, False),
    "grad_clip_norm": (0.0, 0.0, 1e6, False),
    "label_smoothing": (0.0, 0.0, 1.0, False),
    "ema_decay": (0.99, 0.0, 1.0, False),
    "swa_start": (0.75, 0.0, 1.0, False),
}
"""The numeric hyperparameters training reads: ``name: (default, low, high, low_open)``. A
value outside is a ``failed`` trial, and a search space reaching outside is refused up front."""
NUMERIC["learning_rate"] = NUMERIC["lr"]

CHOICES: dict[str, tuple[str, tuple[str, ...]]] = {
    "optimizer": ("adam", OPTIMIZERS),
    "lr_schedule": ("constant", SCHEDULES),
    "weight_averaging": ("off", AVERAGING),
}
"""The categorical hyperparameters training reads: ``name: (default, options)``."""


def _within(value: Any, key: str) -> bool:
    _, lo, hi, lo_open = NUMERIC[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return math.isfinite(value) and lo <= value <= hi and not (lo_open and value == lo)


def _bounds(key: str) -> str:
    _, lo, hi, lo_open = NUMERIC[key]
    return f"{'(' if lo_open else '['}{lo:g}, {hi:g}]"


def check_space(space: SearchSpace, task: Task) -> None:
    """Refuse, before any training, a space that training would misread: a parameter that
    neither training, augmentation nor the task's model factory (one taking ``config``) reads,
    which would be reported in the best configuration yet change nothing; a range, fixed value
    or ``off_value`` outside what training accepts; a choice training does not know.

    Raises:
        ConfigError: naming the parameter and what is wrong.
        TaskError: augmentation parameters on a non-image task.
    """
    from hporl.augment import check_space as check_augment_space
    from hporl.augment import is_augment_key

    check_augment_space(space, task)
    for_model = any(m.takes_config for m in task.models)
    for p in space:
        where = f"search space parameter {p.name!r}"
        if p.name in CHOICES:
            options = CHOICES[p.name][1]
            bad = [c for c in p.choices if c not in options]
            if bad:
                raise ConfigError(
                    f"{where}: training knows no {bad[0]!r} (one of {', '.join(options)})"
                )
        elif p.name in NUMERIC:
            values = {"low": p.low, "high": p.high} if p.is_numeric else {"value": p.choices}
            if p.has_off:
                values["off_value"] = p.off
            for field_name, value in values.items():
                for v in value if isinstance(value, tuple) else (value,):
                    if v is not None and not _within(v, p.name):  # None: the default
                        raise ConfigError(
                            f"{where}: {field_name} {v!r} is outside what training accepts, "
                            f"{_bounds(p.name)}"
                        )
        elif not is_augment_key(p.name) and not for_model:
            raise ConfigError(
                f"{where} is not a training hyperparameter ({', '.join(sorted(set(NUMERIC) | set(CHOICES)))}), "
                f"an augmentation key, nor read by the model (its factory takes no 'config'): "
                f"it would change nothing"
            )


def _optimizer(h: _Hyper, params: Any) -> torch.optim.Optimizer:
    betas = (h.beta1, h.beta2)
    wd = h.weight_decay
    if h.optimizer == "sgd":
        return torch.optim.SGD(params, lr=h.lr, momentum=h.momentum, weight_decay=wd)
    if h.optimizer == "sgd_nesterov":
        # Nesterov needs momentum > 0; with none it is plain SGD.
        return torch.optim.SGD(
            params, lr=h.lr, momentum=h.momentum, weight_decay=wd, nesterov=h.momentum > 0
        )
    if h.optimizer == "adam":
        return torch.optim.Adam(params, lr=h.lr, betas=betas, weight_decay=wd)
    if h.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=h.lr, betas=betas, weight_decay=wd)
    if h.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=h.lr, momentum=h.momentum, weight_decay=wd)
    if h.optimizer == "adagrad":
        return torch.optim.Adagrad(params, lr=h.lr, weight_decay=wd)
    if h.optimizer == "nadam":
        return torch.optim.NAdam(params, lr=h.lr, betas=betas, weight_decay=wd)
    return torch.optim.RAdam(params, lr=h.lr, betas=betas, weight_decay=wd)


def _scheduler(
    h: _Hyper, opt: torch.optim.Optimizer, epochs: int, steps_per_epoch: int
) -> tuple[lr_scheduler.LRScheduler | None, bool]:
    """The schedule and whether it steps per batch (True) or per epoch (False)."""
    total = epochs * steps_per_epoch
    if h.lr_schedule == "constant":
        return None, False
    if h.lr_schedule == "step":
        return lr_scheduler.StepLR(opt, step_size=max(1, epochs // 3), gamma=h.step_gamma), False
    if h.lr_schedule == "exponential":
        return lr_scheduler.ExponentialLR(opt, gamma=h.exp_gamma), False
    if h.lr_schedule == "cosine":
        return lr_scheduler.CosineAnnealingLR(opt, T_max=total), True
    if h.lr_schedule == "warmup_cosine":
        warm = round(h.warmup_fraction * total)

        def factor(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            return 0.5 * (
                1 + math.cos(math.pi * min(step - warm, total - warm) / max(1, total - warm))
            )

        return lr_scheduler.LambdaLR(opt, factor), True
    # onecycle: the chosen momentum/betas are kept (no momentum cycling).
    pct = min(max(h.warmup_fraction, 0.01), 0.99)
    return (
        lr_scheduler.OneCycleLR(
            opt, max_lr=h.lr, total_steps=max(total, 2), pct_start=pct, cycle_momentum=False
        ),
        True,
    )


CLASSIFICATION_ONLY = ("label_smoothing",)
"""Parameters that mean something only for classification (a regression task fixes them)."""


def space_for(space: SearchSpace, task: Any) -> SearchSpace:
    """``space`` as offered to ``task``: a regression task gets no classification-only knob."""
    if getattr(task, "task_type", "classification") == "classification":
        return space
    return space.fixing(CLASSIFICATION_ONLY, why="classification only: fixed here")


def usable_device(device: str | torch.device) -> torch.device:
    """``device`` as a ``torch.device``, checked to exist on this machine.

    Raises:
        ConfigError: not a device name torch knows, or a CUDA / MPS device this machine (or
            this build of torch) does not have: every trial would fail on it.
    """
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(
            f"device {str(device)!r} is not a device name torch knows (cpu, cuda, cuda:0, mps)"
        ) from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"device {str(device)!r}: this machine (or torch build) has no CUDA")
        if dev.index is not None and dev.index >= count:
            raise ConfigError(f"device {str(device)!r}: this machine has {count} CUDA device(s)")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device {str(device)!r}: MPS is not available here")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"device {str(device)!r}: hporl trains on cpu, cuda or mps")
    return dev


def checked_device(name: str) -> str:
    """A pydantic validator: ``name`` if :func:`usable_device` accepts it."""
    usable_device(name)
    return name


@dataclass
class _Checkpoint:
    """Everything a training needs to go on from the end of ``epoch`` exactly as if it had
    not stopped: weights, optimizer, schedule and averaging states, the random generators, and
    the curves and best weights so far."""

    epoch: int
    model: dict[str, Any]
    optimizer: dict[str, Any]
    schedule: dict[str, Any] | None
    averaged: dict[str, Any] | None
    rng: dict[str, torch.Tensor]
    curve: list[float]
    losses: list[float]
    train_losses: list[float]
    best_value: float
    best_state: dict[str, torch.Tensor] | None = field(repr=False)
    seconds: float = 0.0  # the training's wall time so far


class TorchBackend(Backend):
    """Real PyTorch training from in-memory tensors (batches by index, no DataLoader).

    Optimizers: ``sgd, sgd_nesterov, adam, adamw, rmsprop, adagrad, nadam, radam``; schedules:
    ``constant, step`` (x ``step_gamma`` after each third of the epochs), ``exponential``
    (x ``exp_gamma`` per epoch), ``cosine``, ``warmup_cosine`` and ``onecycle`` (per batch,
    warm-up over ``warmup_fraction`` of the steps); add-ons: ``grad_clip_norm`` (0 = off),
    ``label_smoothing`` (classification), ``weight_averaging`` ``ema`` (per step, decay
    ``ema_decay``) or ``swa`` (per epoch from ``swa_start`` of the epochs); validation, the best
    weights and the test metric then use the averaged weights.

    Data augmentation (image tasks only; the ``augment`` key and its children, see
    :mod:`hporl.augment`): training images are augmented per sample, each epoch anew, from a
    generator seeded by the trial's seed, a run of whole batches (about 1,024 images) per call
    so that the per-call cost is shared; validation and test data never are. Augmentation keys
    on a non-image task, an unknown operation, or a probability or magnitude out of range give
    a ``failed`` result naming it, before any training.

    A non-finite training loss is detected at the end of the epoch it appears in (checking every
    batch would cost a synchronisation per step); the trial stops there as ``diverged``.

    With ``resume=True`` the backend is :attr:`resumable` (freeze-thaw for a budget-aware
    policy): an evaluation for fewer epochs than the task's is the start of the task's full
    training (its schedule and weight averaging planned for all the task's epochs), and it
    keeps a checkpoint in memory, so that evaluating the same configuration (same task and
    seed) for more epochs later trains only the extra epochs, with the curve an uninterrupted
    training would give. Without it (the default), ``epochs`` fewer than the task's is a whole,
    shorter training (its schedule compressed into those epochs).

    Args:
        device: where to train (``"cpu"``, ``"cuda"``...).
        num_threads: torch intra-op threads during an evaluation (``None``: leave as is). Small
            models train faster with 1.
        eval_batch_size: batch size for validation and test passes.
        resume: keep checkpoints of shortened trainings and continue them (see above).
        checkpoints: how many trainings' checkpoints ``resume`` keeps (the least recently
            used go first).
    """

    name = "torch"

    def __init__(
        self,
        *,
        device: str | torch.device = "cpu",
        num_threads: int | None = None,
        eval_batch_size: int = 4096,
        resume: bool = False,
        checkpoints: int = 32,
    ) -> None:
        self.device = usable_device(device)
        self.num_threads = num_threads
        self.eval_batch_size = eval_batch_size
        if checkpoints < 1:
            raise ConfigError(f"checkpoints must be a positive integer, got {checkpoints!r}")
        self.resume = bool(resume)
        self.checkpoints = int(checkpoints)
        self._saved: OrderedDict[tuple, _Checkpoint] = OrderedDict()
        self.n_resumed = 0

    @property
    def resumable(self) -> bool:  # type: ignore[override]
        return self.resume

    def horizon(self, task: Task, epochs: int | None) -> int | None:
        if self.resume and epochs is not None and int(epochs) < int(task.epochs):
            return int(task.epochs)
        return None

    def __getstate__(self) -> dict[str, Any]:  # workers get the settings, not the checkpoints
        state = dict(self.__dict__)
        state["_saved"] = OrderedDict()
        return state

    def check_space(self, space: SearchSpace, task: Task) -> None:
        check_space(space, task)

    def evaluate(
        self,
        task: Task,
        config: Mapping[str, Any],
        *,
        seed: int = 0,
        epochs: int | None = None,
        checkpoint_dir: str | Path | None = None,
        on_epoch: EpochCallback | None = None,
    ) -> TrialResult:
        results, _ = self._run(
            task, config, seed, epochs, checkpoint_dir, on_epoch, keep="best", resume=self.resume
        )
        result = aggregate(results)
        self._write_config(checkpoint_dir, task, config, seed, epochs or task.epochs, result)
        return result

    def fit(
        self,
        task: Task,
        config: Mapping[str, Any],
        *,
        seed: int = 0,
        epochs: int | None = None,
        checkpoint_dir: str | Path | None = None,
        keep: Literal["last", "best"] = "last",
    ) -> tuple[list[nn.Module], TrialResult]:
        """Train for exactly ``epochs`` and return the trained model(s) with the last epoch's
        weights (the averaged ones under EMA/SWA), or with ``keep="best"`` those of the best
        validation epoch (what :meth:`evaluate` scores); ``test_metric`` is theirs."""
        results, models = self._run(task, config, seed, epochs, checkpoint_dir, None, keep=keep)
        result = aggregate(results)
        self._write_config(checkpoint_dir, task, config, seed, epochs or task.epochs, result)
        return models, result

    def _run(
        self,
        task: Task,
        config: Mapping[str, Any],
        seed: int,
        epochs: int | None,
        checkpoint_dir: str | Path | None,
        on_epoch: EpochCallback | None,
        keep: str,
        resume: bool = False,
    ) -> tuple[list[TrialResult], list[nn.Module]]:
        """Train every model of ``task``; ``resume`` (evaluations, never :meth:`fit`, which
        trains exactly its epochs): plan for :meth:`horizon` and go on from a checkpoint."""
        epochs = int(epochs or task.epochs)
        if epochs < 1:
            raise ValueError(f"epochs must be positive, got {epochs}")
        horizon = (self.horizon(task, epochs) if resume else None) or epochs
        previous_threads = torch.get_num_threads()
        if self.num_threads:
            torch.set_num_threads(self.num_threads)
        results, models = [], []
        try:
            for i in range(len(task.models)):
                with torch.random.fork_rng(devices=[]):
                    r, m = self._train_one(
                        task, i, config, seed, epochs, checkpoint_dir, on_epoch, keep, horizon,
                        resume,
                    )  # fmt: skip
                results.append(r)
                models.append(m)
        finally:
            if self.num_threads:
                torch.set_num_threads(previous_threads)
        return results, models

    def _write_config(
        self,
        checkpoint_dir: str | Path | None,
        task: Task,
        config: Mapping[str, Any],
        seed: int,
        epochs: int,
        result: TrialResult,
    ) -> None:
        if checkpoint_dir is not None:
            write_json(
                Path(checkpoint_dir) / "config.json",
                {
                    "config": dict(config),
                    "seed": seed,
                    "epochs": epochs,
                    "task": task.name,
                    "result": result.to_dict(),
                },
            )

    # -- one model ----------------------------------------------------------------------------
    def _train_one(
        self,
        task: Task,
        index: int,
        config: Mapping[str, Any],
        seed: int,
        epochs: int,
        checkpoint_dir: str | Path | None,
        on_epoch: EpochCallback | None,
        keep: str = "best",
        horizon: int | None = None,
        resume: bool = False,
    ) -> tuple[TrialResult, nn.Module | None]:
        """Train model ``index`` for ``epochs`` of a training planned for ``horizon`` (default:
        ``epochs``); return its result and the model holding the kept weights."""
        horizon = horizon or epochs
        start = time.perf_counter()
        common = {
            "metric_name": task.metric_name,
            "chance_metric": task.chance_metric,
            "epochs": epochs,
            "seed": seed,
            "config": dict(config),
        }
        curve: list[float] = []
        losses: list[float] = []
        train_losses: list[float] = []

        def result(
            status: str, reason: str | None = None, **kw: Any
        ) -> tuple[TrialResult, nn.Module | None]:
            kept = kw.pop("model", None)
            return TrialResult.from_curves(
                curve=curve,
                loss_curve=losses,
                train_loss_curve=train_losses,
                status=status,
                reason=reason,
                wall_time=time.perf_counter() - start,
                **common,
                **kw,
            ), kept

        try:
            h = _Hyper.read(config)
            augmenter = Augmenter.for_task(config, task, seed=seed)  # before any training
            torch.manual_seed(seed)
            model = task.build_model(index, config).to(self.device)
            opt = _optimizer(h, model.parameters())
            n = len(task.X_train)
            bs = min(h.batch_size, n)
            steps = math.ceil(n / bs)
            sched, per_step = _scheduler(h, opt, horizon, steps)
        except Exception as err:  # a value this backend cannot use: a failed trial, never a raise
            logger.debug("trial setup failed", exc_info=True)
            return result(
                "failed",
                str(err)
                if isinstance(err, (_BadConfig, HporlError))
                else f"{type(err).__name__}: {err}",
            )

        classification = task.task_type == "classification"
        train_loss_fn: nn.Module = (
            nn.CrossEntropyLoss(label_smoothing=h.label_smoothing)
            if classification
            else nn.MSELoss()
        )
        X, y = task.X_train.to(self.device), task.y_train.to(self.device)
        Xv, yv = task.X_val.to(self.device), task.y_val.to(self.device)
        averaged: AveragedModel | None = None
        if h.weight_averaging == "ema":
            averaged = AveragedModel(
                model, multi_avg_fn=get_ema_multi_avg_fn(h.ema_decay), use_buffers=True
            )
        elif h.weight_averaging == "swa":
            averaged = AveragedModel(model, use_buffers=True)
        swa_from = max(1, math.ceil(h.swa_start * horizon))
        gen = torch.Generator().manual_seed(seed)
        chunk = bs * math.ceil(AUGMENT_CHUNK / bs)  # whole batches, about AUGMENT_CHUNK images
        best_value, best_state = -math.inf, None
        stopped = False
        epoch = 0
        resume_key = self._resume_key(task, index, config, seed, horizon) if resume else None
        saved = self._saved.get(resume_key) if resume_key is not None else None
        if saved is not None and saved.epoch < epochs:
            self._saved.move_to_end(resume_key)
            model.load_state_dict(saved.model)
            opt.load_state_dict(copy.deepcopy(saved.optimizer))
            if sched is not None and saved.schedule is not None:
                sched.load_state_dict(saved.schedule)
            if averaged is not None and saved.averaged is not None:
                averaged.load_state_dict(saved.averaged)
            gen.set_state(saved.rng["data"])
            torch.set_rng_state(saved.rng["torch"])
            if augmenter is not None:
                augmenter.generator.set_state(saved.rng["augment"])
            curve[:], losses[:], train_losses[:] = saved.curve, saved.losses, saved.train_losses
            best_value, best_state = saved.best_value, saved.best_state
            epoch = saved.epoch
            start -= saved.seconds  # the result's wall time is the whole training's
            self.n_resumed += 1
        first = epoch + 1
        try:
            for epoch in range(first, epochs + 1):
                model.train()
                perm = torch.randperm(n, generator=gen).to(self.device)
                total = torch.zeros((), device=self.device)
                for s in range(0, n, bs):
                    idx = perm[s : s + bs]
                    xb, yb = X[idx], y[idx]
                    if augmenter is not None:
                        if s % chunk == 0:  # augment the next batches in one call
                            ahead = augmenter(X[perm[s : s + chunk]])
                        xb = ahead[s % chunk : s % chunk + bs]
                    opt.zero_grad(set_to_none=True)
                    out = model(xb)
                    loss = (
                        train_loss_fn(out, yb)
                        if classification
                        else train_loss_fn(out.reshape(-1), yb)
                    )
                    loss.backward()
                    if h.grad_clip_norm > 0:
                        nn.utils.clip_grad_norm_(model.parameters(), h.grad_clip_norm)
                    opt.step()
                    if per_step and sched is not None:
                        sched.step()
                    if h.weight_averaging == "ema":
                        averaged.update_parameters(model)
                    total += loss.detach() * len(idx)
                train_loss = float(total) / n
                if not math.isfinite(train_loss):
                    return result("diverged", f"non-finite training loss in epoch {epoch}")
                if not per_step and sched is not None:
                    sched.step()
                use_avg = averaged is not None and (
                    h.weight_averaging == "ema" or epoch >= swa_from
                )
                if h.weight_averaging == "swa" and epoch >= swa_from:
                    averaged.update_parameters(model)
                scored = averaged.module if use_avg else model
                value, val_loss = self._score(task, scored, Xv, yv)
                if not (math.isfinite(val_loss) and math.isfinite(value)):
                    return result("diverged", f"non-finite validation loss in epoch {epoch}")
                curve.append(value)
                losses.append(val_loss)
                train_losses.append(train_loss)
                if value > best_value:
                    best_value = value
                    best_state = {k: v.detach().clone() for k, v in scored.state_dict().items()}
                if on_epoch is not None and on_epoch(epoch, value):
                    stopped = True
                    break
            if resume_key is not None and not stopped and epochs < horizon:
                self._save(
                    resume_key,
                    _Checkpoint(
                        epoch=epochs,
                        model=_copied(model.state_dict()),
                        optimizer=copy.deepcopy(opt.state_dict()),
                        schedule=None if sched is None else copy.deepcopy(sched.state_dict()),
                        averaged=None if averaged is None else _copied(averaged.state_dict()),
                        rng={
                            "data": gen.get_state(),
                            "torch": torch.get_rng_state(),
                            **(
                                {}
                                if augmenter is None
                                else {"augment": augmenter.generator.get_state()}
                            ),
                        },
                        curve=list(curve),
                        losses=list(losses),
                        train_losses=list(train_losses),
                        best_value=best_value,
                        best_state=best_state,
                        seconds=time.perf_counter() - start,
                    ),
                )
            test_metric = None
            if keep == "last" and curve:
                best_state = {k: v.detach().clone() for k, v in scored.state_dict().items()}
            if best_state is not None:
                model.load_state_dict(best_state)
                test_metric, _ = self._score(
                    task, model, task.X_test.to(self.device), task.y_test.to(self.device)
                )
                if checkpoint_dir is not None:
                    name = "model.pt" if len(task.models) == 1 else f"model_{index}.pt"
                    save_torch(Path(checkpoint_dir) / name, best_state)
        except Exception as err:  # e.g. out of memory, a shape error in a user model mid-way
            logger.debug("trial failed in epoch %d", epoch, exc_info=True)
            return result("failed", f"{type(err).__name__} in epoch {epoch}: {err}")
        model.eval()
        return result("ok", stopped_early=stopped, test_metric=test_metric, model=model)

    def _resume_key(
        self, task: Task, index: int, config: Mapping[str, Any], seed: int, horizon: int
    ) -> tuple | None:
        """What a checkpoint is kept under (``None`` when nothing is: ``resume`` off, a task
        without a fingerprint, or a device other than the CPU, whose random state is not
        saved: the training then starts again, to the same curve)."""
        if not self.resume or self.device.type != "cpu":
            return None
        token = getattr(task, "fingerprint", None)
        if not isinstance(token, str):
            return None  # no identity that outlives the object
        return (token, index, config_key(config), int(seed), int(horizon))

    def _save(self, key: tuple, checkpoint: _Checkpoint) -> None:
        """Keep ``checkpoint`` (the further one, when one is kept already) and drop the least
        recently used beyond :attr:`checkpoints`."""
        kept = self._saved.get(key)
        if kept is None or kept.epoch <= checkpoint.epoch:
            self._saved[key] = checkpoint
        self._saved.move_to_end(key)
        while len(self._saved) > self.checkpoints:
            self._saved.popitem(last=False)

    @torch.no_grad()
    def _score(
        self, task: Task, model: nn.Module, X: torch.Tensor, y: torch.Tensor
    ) -> tuple[float, float]:
        """(metric, loss) on a split: accuracy and cross-entropy, or R² and MSE."""
        was_training = model.training
        model.eval()
        outs = [
            model(X[s : s + self.eval_batch_size]) for s in range(0, len(X), self.eval_batch_size)
        ]
        model.train(was_training)
        out = torch.cat(outs)
        if task.task_type == "classification":
            loss = nn.functional.cross_entropy(out, y).item()
            return (out.argmax(1) == y).float().mean().item(), loss
        pred = out.reshape(-1)
        sse = ((pred - y) ** 2).sum()
        sst = ((y - y.mean()) ** 2).sum().clamp_min(1e-12)
        return (1 - sse / sst).item(), (sse / len(y)).item()


def _copied(state: Mapping[str, Any]) -> dict[str, Any]:
    """A state dict's tensors detached and cloned (the training goes on changing them)."""
    return {k: v.detach().clone() if isinstance(v, torch.Tensor) else v for k, v in state.items()}
