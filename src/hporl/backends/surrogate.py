"""``SurrogateBackend``: a backend learned from the real trials that trial stores hold.

Fit it on one or more stores (``hporl surrogate fit --storage URL ... --out DIR``, or
:func:`fit_surrogate`); it then answers :meth:`~SurrogateBackend.evaluate` in about a millisecond
for any task whose meta-features it can compute and any configuration of its space, so an agent
can be meta-trained with far more steps than real training allows (``backend: {surrogate:
DIR}`` in an experiment).

The model is an ensemble of small MLPs (torch), one row per (trial, epoch): the input is the
task's meta-features (:meth:`hporl.Task.features`, less ``log_epochs``), the encoded
configuration (:meth:`hporl.SearchSpace.encode`) and the epoch (its fraction of the budget, the
budget and the epoch itself, log-scaled); the outputs are the normalised validation score of
that epoch, the log-odds that training has diverged by then, the normalised test score (learnt
at the best epoch) and the log seconds per epoch. Each member is fitted on a bootstrap sample of
the trials from its own initialisation; the spread of the members is the uncertainty
(:meth:`SurrogateBackend.predict`).

Saved as ``surrogate.safetensors`` (the weights and the input normalisation) and
``surrogate.json`` (the space, the feature names, the fit; sha256 of both, as a policy is), so
nothing is unpickled and an edited or truncated file is refused with one line.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import math
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hporl._io import (
    read_checked_json,
    save_tensors,
    sha256_file,
    write_checked_json,
    write_json,
)
from hporl.backends._base import Backend, EpochCallback, TrialResult, stop_epoch
from hporl.backends._trial_table import TrialTable, complete_config, data_group, read_trials
from hporl.exceptions import ConfigError, HporlError, ModelError, SearchSpaceError
from hporl.space import SearchSpace, config_key

__all__ = [
    "FitSettings",
    "SurrogateBackend",
    "SurrogatePrediction",
    "fit_surrogate",
    "held_out_report",
    "quality",
]

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
WEIGHTS = "surrogate.safetensors"
META = "surrogate.json"
HEADS = ("score", "diverged", "test", "log_seconds")
SPEARMAN_TARGET = 0.7
"""The held-out median Spearman correlation a surrogate is meant to reach (issue 15)."""
_FILE_KEYS = (
    "format_version",
    "kind",
    "hporl_version",
    "torch_version",
    "checksums",
    "meta_sha256",
)
"""Keys of ``surrogate.json`` that :meth:`SurrogateBackend.save` writes anew each time."""
_REMAKE = "re-run `hporl surrogate fit` to make a new surrogate"
_REDO = "re-run `hporl surrogate fit`"


# -- the network --------------------------------------------------------------------------------
class _Ensemble(nn.Module):
    """``members`` MLPs evaluated together: ``(B, n_in)`` or ``(members, B, n_in)`` inputs give
    ``(members, B, len(HEADS))`` outputs."""

    def __init__(self, members: int, n_in: int, hidden: Sequence[int], *, seed: int = 0) -> None:
        super().__init__()
        sizes = [n_in, *hidden, len(HEADS)]
        g = torch.Generator().manual_seed(seed)
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for a, b in itertools.pairwise(sizes):
            bound = 1 / math.sqrt(a)
            self.weights.append(
                nn.Parameter((torch.rand(members, a, b, generator=g) * 2 - 1) * bound)
            )
            self.biases.append(
                nn.Parameter((torch.rand(members, 1, b, generator=g) * 2 - 1) * bound)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            x = x.unsqueeze(0).expand(self.weights[0].shape[0], -1, -1)
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            x = torch.baddbmm(b, x, w)
            if i < last:
                x = torch.nn.functional.silu(x)
        return x


def _epoch_inputs(budget: np.ndarray, epoch: np.ndarray) -> np.ndarray:
    """The epoch's columns: its fraction of the budget, log10(budget) / 2, log10(epoch) / 2."""
    budget = budget.astype(np.float64)
    epoch = epoch.astype(np.float64)
    return np.stack([epoch / budget, np.log10(budget) / 2, np.log10(epoch) / 2], axis=1)


def _rows(table: TrialTable) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The training rows of ``table``: inputs, targets, target masks (one column per head) and
    the trial of each row."""
    X, Y, M, trial = [], [], [], []
    for i in range(len(table)):
        budget, curve = table.budgets[i], table.curves[i]
        done = len(curve)
        last = budget if table.diverged[i] else done  # a diverged trial: "diverged" to the end
        epochs = np.arange(1, last + 1)
        y = np.zeros((last, len(HEADS)))
        m = np.zeros((last, len(HEADS)))
        y[:done, 0], m[:done, 0] = curve, 1
        y[done:, 1], m[:, 1] = 1, 1
        if done and not math.isnan(table.test[i]):
            best = int(np.argmax(curve))
            y[best, 2], m[best, 2] = table.test[i], 1
        if not math.isnan(table.seconds[i]):
            y[:, 3], m[:, 3] = math.log10(table.seconds[i]), 1
        static = np.concatenate([table.features[i], table.configs[i]])
        X.append(
            np.hstack([np.tile(static, (last, 1)), _epoch_inputs(np.full(last, budget), epochs)])
        )
        Y.append(y)
        M.append(m)
        trial.append(np.full(last, i))
    if not X:
        raise ConfigError("no usable trials to fit a surrogate on")
    return np.vstack(X), np.vstack(Y), np.vstack(M), np.concatenate(trial)


@dataclass(frozen=True)
class FitSettings:
    """How the ensemble is fitted: ``members`` MLPs of ``hidden`` units, each trained for
    ``steps`` AdamW steps of ``batch_size`` rows (a bootstrap sample of the trials per member)."""

    members: int = 5
    hidden: tuple[int, ...] = (128, 128, 128)
    steps: int = 2000
    batch_size: int = 256
    learning_rate: float = 3e-3
    weight_decay: float = 1e-4
    seed: int = 0

    def __post_init__(self) -> None:
        if self.members < 2:
            raise ConfigError(
                f"members must be at least 2 (the spread is the uncertainty), got {self.members}"
            )
        if self.steps < 1 or self.batch_size < 1 or any(h < 1 for h in self.hidden):
            raise ConfigError("steps, batch_size and every hidden size must be positive")


def _fit(
    table: TrialTable, settings: FitSettings
) -> tuple[_Ensemble, dict[str, torch.Tensor], dict[str, float]]:
    """Fit an ensemble on ``table``: the network, its normalisation tensors and target scales."""
    X, Y, M, trial = _rows(table)
    x_mean, x_std = X.mean(0), X.std(0)
    x_std = np.where(x_std < 1e-6, 1.0, x_std)
    sec = Y[M[:, 3] > 0, 3]
    s_mean = float(sec.mean()) if len(sec) else 0.0
    s_std = float(sec.std()) if len(sec) > 1 and sec.std() > 1e-6 else 1.0
    Y = Y.copy()
    Y[:, 3] = (Y[:, 3] - s_mean) / s_std
    Xt = torch.as_tensor((X - x_mean) / x_std, dtype=torch.float32)
    Yt = torch.as_tensor(Y, dtype=torch.float32)
    Mt = torch.as_tensor(M, dtype=torch.float32)

    rng = np.random.default_rng(settings.seed)
    by_trial = np.argsort(trial, kind="stable")
    starts = np.searchsorted(trial[by_trial], np.arange(len(table) + 1))
    pools = []
    for _ in range(settings.members):
        picked = rng.integers(len(table), size=len(table))  # a bootstrap sample of trials
        pools.append(np.concatenate([by_trial[starts[i] : starts[i + 1]] for i in picked]))
    lengths = torch.tensor([len(p) for p in pools], dtype=torch.float64)
    offsets = torch.tensor(np.cumsum([0] + [len(p) for p in pools[:-1]]), dtype=torch.long)
    pool = torch.as_tensor(np.concatenate(pools), dtype=torch.long)

    net = _Ensemble(settings.members, X.shape[1], settings.hidden, seed=settings.seed)
    opt = torch.optim.AdamW(
        net.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay
    )
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=settings.steps)
    g = torch.Generator().manual_seed(settings.seed)
    bce = nn.BCEWithLogitsLoss(reduction="none")
    for _ in range(settings.steps):
        u = torch.rand(settings.members, settings.batch_size, generator=g, dtype=torch.float64)
        idx = pool[(u * lengths[:, None]).long() + offsets[:, None]]
        out = net(Xt[idx])
        y, m = Yt[idx], Mt[idx]
        err = (out - y) ** 2
        err[..., 1] = bce(out[..., 1], y[..., 1])
        loss = ((err * m).sum((1, 0)) / m.sum((1, 0)).clamp_min(1.0)).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    norm = {
        "x_mean": torch.as_tensor(x_mean, dtype=torch.float32),
        "x_std": torch.as_tensor(x_std, dtype=torch.float32),
    }
    return net, norm, {"seconds_mean": s_mean, "seconds_std": s_std}


# -- predictions --------------------------------------------------------------------------------
@dataclass
class SurrogatePrediction:
    """What the ensemble says of ``n`` configurations over ``epochs`` epochs, in the task's
    metric: ``mean`` and ``std`` ``(n, epochs)`` of the validation metric over the members,
    ``p_diverged`` ``(n, epochs)`` the probability that training has diverged by each epoch,
    ``test`` ``(n, epochs)`` the test metric (learnt at the best epoch), ``seconds`` ``(n,)``
    training seconds per epoch; ``score_mean`` / ``score_std`` the same curve normalised
    (``(metric - chance) / (1 - chance)``, in [-1, 1])."""

    mean: np.ndarray
    std: np.ndarray
    p_diverged: np.ndarray
    test: np.ndarray
    seconds: np.ndarray
    score_mean: np.ndarray
    score_std: np.ndarray
    chance: float


def _raw_predict(
    net: _Ensemble,
    norm: Mapping[str, torch.Tensor],
    scales: Mapping[str, float],
    static: np.ndarray,
    budgets: np.ndarray,
) -> dict[str, list[np.ndarray]]:
    """Per-epoch outputs for rows ``static[i]`` (features + encoded config) at ``budgets[i]``:
    lists of arrays of each trial's epochs (normalised scores)."""
    lengths = budgets.astype(int)
    rep = np.repeat(np.arange(len(static)), lengths)
    epochs = np.concatenate([np.arange(1, b + 1) for b in lengths]) if len(rep) else np.zeros(0)
    X = np.hstack([static[rep], _epoch_inputs(budgets[rep], epochs)]) if len(rep) else None
    if X is None:
        empty: dict[str, list[np.ndarray]] = {k: [] for k in ("mean", "std", "p", "test", "sec")}
        return empty
    x = (torch.as_tensor(X, dtype=torch.float32) - norm["x_mean"]) / norm["x_std"]
    with torch.no_grad():
        out = net(x).double().numpy()  # (members, rows, heads)
    score = np.clip(out[..., 0], -1.0, 1.0)
    p = 1 / (1 + np.exp(-np.clip(out[..., 1], -50, 50)))
    test = np.clip(out[..., 2], -1.0, 1.0).mean(0)
    sec = 10 ** (out[..., 3].mean(0) * scales["seconds_std"] + scales["seconds_mean"])
    cuts = np.cumsum(lengths)[:-1]
    return {
        "mean": np.split(score.mean(0), cuts),
        "std": np.split(score.std(0), cuts),
        "p": np.split(p.mean(0), cuts),
        "test": np.split(test, cuts),
        "sec": np.split(sec, cuts),
    }


# -- the backend --------------------------------------------------------------------------------
class SurrogateBackend(Backend):
    """A backend that predicts training from the real trials it was fitted on (see the module
    docstring). Make one with :meth:`fit` (or :func:`fit_surrogate`) and :meth:`load`.

    Its results keep every promise of :class:`~hporl.backends.TrialResult`, with these
    meanings:

    - ``curve`` is the ensemble's mean validation metric per epoch (plus, with ``noise``, a
      draw of ``noise`` times its spread, seeded by the seed, task and configuration, the same
      for every epoch); ``status`` is ``"diverged"`` from the first epoch whose predicted
      probability of divergence exceeds one half (with ``noise``, a seeded uniform draw);
    - ``loss_curve`` and ``train_loss_curve`` are ``1 - score`` (normalised), a stand-in: the
      surrogate predicts no losses; ``test_metric`` is the predicted test metric at the best
      epoch; ``wall_time`` the predicted training time of the epochs done;
    - a configuration outside the space it was fitted on gives ``"failed"`` with the reason;
    - ``epochs`` beyond the largest budget of its trials are cut to that budget (it cannot
      extrapolate), as the YAHPO backends do.

    Args:
        noise: 0 (default) gives the ensemble mean; > 0 adds seeded noise as described.
    """

    name = "surrogate"

    def __init__(
        self,
        net: _Ensemble,
        norm: Mapping[str, torch.Tensor],
        meta: Mapping[str, Any],
        *,
        noise: float = 0.0,
    ) -> None:
        if not (isinstance(noise, (int, float)) and math.isfinite(noise) and noise >= 0):
            raise ConfigError(f"noise must be a number >= 0, got {noise!r}")
        self.net = net.eval()
        self.norm = dict(norm)
        self.meta = dict(meta)
        self.noise = float(noise)
        self.space = SearchSpace.from_dict(self.meta["space"])
        self.feature_names: list[str] = list(self.meta["feature_names"])
        self.max_epochs = int(self.meta["budgets"][-1])
        self._features: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._warned: set[str] = set()

    def __getstate__(self) -> dict[str, Any]:  # shipped to worker processes (never to files)
        return {"net": self.net, "norm": self.norm, "meta": self.meta, "noise": self.noise}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["net"], state["norm"], state["meta"], noise=state["noise"])

    # -- making one --------------------------------------------------------------------------
    @classmethod
    def fit(
        cls,
        storages: Sequence[Any] | TrialTable,
        *,
        space: str | SearchSpace = "optimizer",
        settings: FitSettings | None = None,
    ) -> SurrogateBackend:
        """Fit on every usable trial of ``storages`` (URLs, SQLite paths or trial stores; or a
        :class:`TrialTable` already read).

        Raises:
            ConfigError: no usable trials, or settings out of range.
            StoreError: a storage cannot be read.
        """
        settings = settings or FitSettings()
        table = (
            storages if isinstance(storages, TrialTable) else read_trials(storages, _space(space))
        )
        if not len(table):
            raise ConfigError(_nothing_usable(table))
        t0 = time.perf_counter()
        net, norm, scales = _fit(table, settings)
        counts: dict[str, int] = {}
        for label in table.tasks:
            counts[label] = counts.get(label, 0) + 1
        meta = {
            "space": table.space.to_dict(),
            "feature_names": list(table.feature_names),
            "heads": list(HEADS),
            "settings": {
                "members": settings.members,
                "hidden": list(settings.hidden),
                "steps": settings.steps,
                "batch_size": settings.batch_size,
                "learning_rate": settings.learning_rate,
                "weight_decay": settings.weight_decay,
                "seed": settings.seed,
            },
            "scales": scales,
            "budgets": sorted(set(table.budgets)),
            "trials": len(table),
            "tasks": {
                label: {**table.task_info[label], "trials": n} for label, n in counts.items()
            },
            "skipped": dict(table.skipped),
            "fit_seconds": round(time.perf_counter() - t0, 3),
        }
        return cls(net, norm, meta)

    # -- files -------------------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """Write ``surrogate.safetensors`` and ``surrogate.json`` (with checksums) to ``directory``."""

        from hporl import __version__

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {f"weight_{i}": w.detach().contiguous() for i, w in enumerate(self.net.weights)}
        state |= {f"bias_{i}": b.detach().contiguous() for i, b in enumerate(self.net.biases)}
        state |= {k: v.contiguous() for k, v in self.norm.items()}
        save_tensors(directory / WEIGHTS, state, metadata={"format": "pt"})
        meta = {
            "format_version": FORMAT_VERSION,
            "kind": "surrogate",
            "hporl_version": __version__,
            "torch_version": torch.__version__,
            **{k: v for k, v in self.meta.items() if k not in _FILE_KEYS},
            "checksums": {WEIGHTS: sha256_file(directory / WEIGHTS)},
        }
        write_checked_json(directory / META, meta)
        return directory

    @classmethod
    def load(cls, directory: str | Path, *, noise: float = 0.0) -> SurrogateBackend:
        """Read a saved surrogate, checked (format, checksums, shapes).

        Raises:
            ModelError: a file is missing, damaged or edited, naming it and what to do.
        """
        from safetensors import SafetensorError
        from safetensors.torch import load

        if not (isinstance(noise, (int, float)) and math.isfinite(noise) and noise >= 0):
            raise ConfigError(f"noise must be a number >= 0, got {noise!r}")
        directory = Path(directory)
        for name in (META, WEIGHTS):
            if not (directory / name).is_file():
                raise ModelError(f"{directory} is not a surrogate directory: {name} is missing")
        meta = read_checked_json(
            directory / META, error=ModelError, version=FORMAT_VERSION, kind="surrogate",
            remake=_REMAKE, redo=_REDO,
        )  # fmt: skip
        checksum = (
            meta.get("checksums", {}).get(WEIGHTS)
            if isinstance(meta.get("checksums"), dict)
            else None
        )
        if not isinstance(checksum, str):
            raise ModelError(
                f"{directory / META} is incomplete: it holds no checksum for {WEIGHTS}"
            )
        path = directory / WEIGHTS
        try:
            data = path.read_bytes()
        except OSError as err:
            raise ModelError(f"cannot read {path}: {err.strerror}") from None
        if hashlib.sha256(data).hexdigest() != checksum:
            raise ModelError(
                f"{path} is corrupted or was changed: its sha256 does not match {META}"
            )
        try:
            state = load(data)
        except SafetensorError as err:
            raise ModelError(f"{path} cannot be read: {err}") from None
        try:
            settings = meta["settings"]
            n_in = len(meta["feature_names"]) + SearchSpace.from_dict(meta["space"]).dim + 3
            net = _Ensemble(int(settings["members"]), n_in, [int(h) for h in settings["hidden"]])
            names = [f"weight_{i}" for i in range(len(net.weights))]
            names += [f"bias_{i}" for i in range(len(net.biases))]
            if set(state) != {*names, "x_mean", "x_std"}:
                raise ModelError(f"{path} does not match {META}: other tensors than it describes")
            with torch.no_grad():
                for i, w in enumerate(net.weights):
                    w.copy_(state[f"weight_{i}"])
                for i, b in enumerate(net.biases):
                    b.copy_(state[f"bias_{i}"])
            norm = {"x_mean": state["x_mean"], "x_std": state["x_std"]}
            if norm["x_mean"].shape != (n_in,) or norm["x_std"].shape != (n_in,):
                raise ModelError(f"{path} does not match {META}: the input normalisation's size")
            backend = cls(net, norm, meta, noise=noise)
        except ModelError:
            raise
        except (KeyError, TypeError, ValueError, IndexError, RuntimeError, HporlError) as err:
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise ModelError(
                f"{directory / META} is incomplete or does not match {WEIGHTS}: {first}"
            ) from None
        from hporl.tasks import FEATURE_NAMES

        unknown = [n for n in backend.feature_names if n not in FEATURE_NAMES]
        if unknown:
            raise ModelError(
                f"{directory / META}: the surrogate reads task feature {unknown[0]!r}, which this "
                f"hporl does not compute; {_REMAKE}"
            )
        return backend

    # -- the contract --------------------------------------------------------------------------
    def check_space(self, space: SearchSpace, task: Any) -> None:
        """Raise :class:`~hporl.exceptions.ConfigError` naming a parameter of ``space`` that the
        surrogate was not fitted on (unknown, another range or choices), or a task whose
        meta-features it cannot compute. Parameters of its own space that ``space`` lacks take
        their defaults, as real training does."""
        self._task_features(task)
        for p in space:
            if p.name not in self.space:
                raise ConfigError(
                    f"parameter {p.name!r}: the surrogate was fitted on the space "
                    f"{self.space.name!r}, which lacks it ({', '.join(self.space.names)})"
                )
            mine = self.space[p.name]
            if p.kind == "fixed":
                if not mine.contains(p.default):
                    raise ConfigError(
                        f"parameter {p.name!r}: fixed at {p.default!r}, outside what the "
                        f"surrogate was fitted on"
                    )
                continue
            a, b = mine.to_dict(), p.to_dict()
            for key in ("type", "choices", "low", "high", "log", "off_value", "when"):
                if a.get(key) != b.get(key):
                    raise ConfigError(
                        f"parameter {p.name!r}: the surrogate was fitted with {key}={a.get(key)!r}, "
                        f"the space has {key}={b.get(key)!r}"
                    )

    def _task_features(self, task: Any) -> np.ndarray:
        from hporl.tasks import FEATURE_NAMES, Task

        if not isinstance(task, Task):
            raise ConfigError(
                f"the surrogate backend evaluates real tasks (hporl.Task, from which it reads "
                f"meta-features); got {type(task).__name__} {getattr(task, 'name', task)!r}"
            )
        cached = self._features.get(task)
        if cached is None:
            values = dict(zip(FEATURE_NAMES, task.features().tolist(), strict=True))
            cached = np.array([values[n] for n in self.feature_names], dtype=np.float64)
            self._features[task] = cached
        return cached

    def _epochs(self, task: Any, epochs: int | None) -> int:
        wanted = int(epochs or task.epochs)
        if wanted > self.max_epochs and task.name not in self._warned:
            self._warned.add(task.name)
            logger.warning(
                "surrogate: %d epochs asked on %s; its trials ran at most %d, so it predicts %d",
                wanted, task.name, self.max_epochs, self.max_epochs,
            )  # fmt: skip
        return max(1, min(wanted, self.max_epochs))

    def _raw(
        self, task: Any, configs: Sequence[Mapping[str, Any]], n_epochs: int
    ) -> dict[str, list[np.ndarray]]:
        features = self._task_features(task)
        static = np.array(
            [np.concatenate([features, self.space.encode(c)]) for c in configs], dtype=np.float64
        ).reshape(len(configs), -1)
        scales = self.meta["scales"]
        return _raw_predict(self.net, self.norm, scales, static, np.full(len(configs), n_epochs))

    def predict(
        self, task: Any, configs: Sequence[Mapping[str, Any]], *, epochs: int | None = None
    ) -> SurrogatePrediction:
        """The ensemble's prediction for each configuration (see :class:`SurrogatePrediction`).

        Raises:
            SearchSpaceError: a configuration outside the surrogate's space.
            ConfigError: ``task`` is no :class:`~hporl.Task`.
        """
        n_epochs = self._epochs(task, epochs)
        configs = [complete_config(self.space, c) for c in configs]
        raw = self._raw(task, configs, n_epochs)
        chance = float(task.chance_metric)
        span = 1.0 - chance

        def stack(key: str) -> np.ndarray:
            return np.array(raw[key]).reshape(len(configs), n_epochs)

        mean, std = stack("mean"), stack("std")
        return SurrogatePrediction(
            mean=chance + mean * span,
            std=std * span,
            p_diverged=stack("p"),
            test=chance + stack("test") * span,
            seconds=stack("sec").mean(1),
            score_mean=mean,
            score_std=std,
            chance=chance,
        )

    def evaluate(
        self,
        task: Any,
        config: Mapping[str, Any],
        *,
        seed: int = 0,
        epochs: int | None = None,
        checkpoint_dir: str | Path | None = None,
        on_epoch: EpochCallback | None = None,
    ) -> TrialResult:
        """Predict ``config``'s training on ``task`` (see the class docstring)."""
        n_epochs = self._epochs(task, epochs)
        try:
            full = complete_config(self.space, config)
        except SearchSpaceError as err:
            return self._failed(task, f"{err} (the surrogate's space)", config, n_epochs, seed)
        raw = self._raw(task, [full], n_epochs)
        one = {k: v[0] for k, v in raw.items()}
        return self._result(task, config, one, n_epochs, seed, on_epoch)

    def evaluate_many(
        self, task: Any, configs: Sequence[Mapping[str, Any]], *, epochs: int | None = None
    ) -> list[TrialResult]:
        """:meth:`evaluate` (seed 0) for many configurations, in one batched prediction."""
        n_epochs = self._epochs(task, epochs)
        full: list[dict[str, Any] | None] = []
        reasons: list[str | None] = []
        for c in configs:
            try:
                full.append(complete_config(self.space, c))
                reasons.append(None)
            except SearchSpaceError as err:
                full.append(None)
                reasons.append(f"{err} (the surrogate's space)")
        good = [c for c in full if c is not None]
        raw = self._raw(task, good, n_epochs) if good else {}
        out, j = [], 0
        for config, reason in zip(configs, reasons, strict=True):
            if reason is not None:
                out.append(self._failed(task, reason, config, n_epochs, 0))
                continue
            one = {k: v[j] for k, v in raw.items()}
            out.append(self._result(task, config, one, n_epochs, 0, None))
            j += 1
        return out

    def _draws(self, task: Any, config: Mapping[str, Any], seed: int) -> tuple[float, float]:
        """The seeded noise of one evaluation: a normal draw for the score, a uniform one for
        divergence; (0, 0.5) without noise."""
        if not self.noise:
            return 0.0, 0.5
        text = f"{task.fingerprint}|{int(seed)}|{config_key(config)}"
        rng = np.random.default_rng(int(hashlib.sha256(text.encode()).hexdigest()[:16], 16))
        return float(rng.normal()), float(rng.uniform())

    def _result(
        self,
        task: Any,
        config: Mapping[str, Any],
        raw: Mapping[str, np.ndarray],
        n_epochs: int,
        seed: int,
        on_epoch: EpochCallback | None,
    ) -> TrialResult:
        z, u = self._draws(task, config, seed)
        chance = float(task.chance_metric)
        score = np.clip(raw["mean"] + self.noise * z * raw["std"], -1.0, 1.0)
        diverge = next((e for e in range(n_epochs) if raw["p"][e] > u), None)
        done = n_epochs if diverge is None else diverge
        curve = [float(chance + s * (1 - chance)) for s in score[:done]]
        stop = stop_epoch(curve, on_epoch)
        stopped = stop is not None
        curve = curve[:stop]
        k = len(curve)
        loss = [float(1 - s) for s in score[:k]]
        common = {
            "metric_name": task.metric_name,
            "chance_metric": chance,
            "epochs": n_epochs,
            "seed": seed,
            "config": dict(config),
            "wall_time": float(np.mean(raw["sec"]) * max(k, 1)),
            "loss_curve": loss,
            "train_loss_curve": list(loss),
        }
        if diverge is not None and not stopped:
            return TrialResult.from_curves(
                curve=curve,
                status="diverged",
                reason=f"the surrogate predicts a non-finite loss in epoch {diverge + 1} "
                f"(p = {raw['p'][diverge]:.2f})",
                **common,
            )
        result = TrialResult.from_curves(curve=curve, status="ok", stopped_early=stopped, **common)
        if result.best_epoch is not None:
            result.test_metric = float(chance + raw["test"][result.best_epoch - 1] * (1 - chance))
        return result

    def _failed(self, task: Any, reason: str, config: Any, epochs: int, seed: int) -> TrialResult:
        return TrialResult(
            status="failed",
            metric_name=task.metric_name,
            reason=reason,
            chance_metric=float(task.chance_metric),
            epochs=epochs,
            seed=seed,
            config=dict(config) if isinstance(config, Mapping) else {},
        )

    def __repr__(self) -> str:
        return (
            f"SurrogateBackend(space={self.space.name!r}, trials={self.meta.get('trials')}, "
            f"tasks={len(self.meta.get('tasks', {}))}, members={self.meta['settings']['members']})"
        )


def _space(space: str | SearchSpace) -> SearchSpace:
    if isinstance(space, SearchSpace):
        return space
    from hporl.experiment import resolve_space

    return resolve_space(space)


def _nothing_usable(table: TrialTable) -> str:
    why = ", ".join(f"{n} {k}" for k, n in table.skipped.most_common()) or "no finished trials"
    return f"no usable trials to fit a surrogate on ({why})"


# -- quality on held-out tasks -----------------------------------------------------------------
def _folds(tasks: Sequence[str], folds: int, seed: int) -> list[list[str]]:
    """``folds`` groups of data sets (:func:`data_group`), drawn with ``seed``."""
    names = sorted({data_group(t) for t in tasks})
    order = np.random.default_rng(seed).permutation(len(names))
    return [sorted(names[i] for i in order[k::folds]) for k in range(folds)]


def _rank_scores(raw: Mapping[str, np.ndarray]) -> tuple[float, float, bool]:
    """A predicted trial's score as the ``best_metric`` reward sees :meth:`evaluate`'s result
    (-1 when it diverges), its expected score over divergence (to break ties), and whether it
    diverges."""
    p, mean = raw["p"], raw["mean"]
    diverges = bool(np.any(p > 0.5))
    seen = float(np.max(mean)) if len(mean) else -1.0
    expected = (1 - float(p[-1])) * seen - float(p[-1])
    return (-1.0 if diverges else seen), expected, diverges


def _spearman(predicted: np.ndarray, real: np.ndarray) -> float:
    """Spearman's rank correlation; 0 when the prediction is constant (it ranks nothing)."""
    from scipy.stats import spearmanr

    if np.ptp(predicted) == 0:
        return 0.0
    return float(spearmanr(predicted, real).statistic)


def _task_entries(
    net: _Ensemble,
    norm: Mapping[str, torch.Tensor],
    scales: Mapping[str, float],
    table: TrialTable,
    labels: Sequence[str],
    min_trials: int,
) -> tuple[list[dict[str, Any]], int, int]:
    """Score a fitted ensemble on the trials of ``labels``: one entry per task (see
    :func:`held_out_report`), and the (right, total) counts of its divergence calls."""
    entries: list[dict[str, Any]] = []
    right = total = 0
    for label in labels:
        index = [i for i, t in enumerate(table.tasks) if t == label and not table.stopped[i]]
        if not index:
            continue
        static = np.array([np.concatenate([table.features[i], table.configs[i]]) for i in index])
        budgets = np.array([table.budgets[i] for i in index])
        raw = _raw_predict(net, norm, scales, static, budgets)
        real = np.array([table.score(i) for i in index], dtype=np.float64)
        ranked = [
            _rank_scores({"p": raw["p"][j], "mean": raw["mean"][j]}) for j in range(len(index))
        ]
        pred = np.array([r[0] for r in ranked])
        expected = np.array([r[1] for r in ranked])
        total += len(index)
        right += sum(r[2] == table.diverged[i] for r, i in zip(ranked, index, strict=True))
        entry: dict[str, Any] = {
            "task": label,
            "trials": len(index),
            "diverged": int(sum(table.diverged[i] for i in index)),
        }
        spread = real.max() - real.min()
        if len(index) >= min_trials and spread > 0:
            entry["spearman"] = _spearman(pred, real)
            entry["spearman_expected"] = _spearman(expected, real)
            top = int(np.lexsort((-np.arange(len(index)), expected, pred))[-1])
            entry["top_real_score"] = float(real[top])
            entry["best_real_score"] = float(real.max())
            entry["regret_top"] = float((real.max() - real[top]) / spread)
            entry["regret_random"] = float(np.mean((real.max() - real) / spread))
        entries.append(entry)
    return entries, right, total


def _summary(
    per_task: list[dict[str, Any]], right: int, total: int, min_trials: int
) -> dict[str, Any]:
    scored = [e for e in per_task if "spearman" in e]

    def stat(key: str, fn: Callable[[np.ndarray], Any]) -> float | None:
        values = np.array([e[key] for e in scored], dtype=np.float64)
        return float(fn(values)) if len(values) else None

    median = stat("spearman", np.median)
    return {
        "tasks": len(per_task),
        "tasks_scored": len(scored),
        "min_trials": min_trials,
        "spearman_median": median,
        "spearman_mean": stat("spearman", np.mean),
        "spearman_min": stat("spearman", np.min),
        "spearman_expected_median": stat("spearman_expected", np.median),
        "regret_top_mean": stat("regret_top", np.mean),
        "regret_top_median": stat("regret_top", np.median),
        "regret_random_mean": stat("regret_random", np.mean),
        "divergence_accuracy": right / total if total else None,
        "spearman_target": SPEARMAN_TARGET,
        "meets_target": median is not None and median >= SPEARMAN_TARGET,
        "per_task": per_task,
    }


def held_out_report(
    table: TrialTable,
    *,
    folds: int = 5,
    settings: FitSettings | None = None,
    min_trials: int = 5,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """The surrogate's quality on tasks held out from its fit (leave tasks out: ``folds``
    groups of data sets, a data set's model variants held out together): per task, the
    Spearman rank correlation between the predicted and the real score of its trials (the
    ``best_metric`` reward's score: best normalised validation metric, -1 for a diverged
    trial), and the real normalised regret of the configuration the surrogate ranks first,
    ``(best - chosen) / (best - worst)`` over the task's trials, next to that of a random pick
    (the mean regret). Tasks with fewer than ``min_trials`` trials, or all of one score, are
    listed but not scored.

    Raises:
        ConfigError: fewer than two data sets.
    """
    settings = settings or FitSettings()
    names = sorted({data_group(t) for t in table.tasks})
    if len(names) < 2:
        raise ConfigError(
            f"held-out quality needs trials of at least two data sets, got {len(names)}"
        )
    folds = max(2, min(folds, len(names)))
    groups = _folds(table.tasks, folds, settings.seed)
    per_task: list[dict[str, Any]] = []
    right = total = 0
    for k, held in enumerate(groups):
        if progress is not None:
            progress(k, folds)
        train = table.subset(i for i, t in enumerate(table.tasks) if data_group(t) not in held)
        net, norm, scales = _fit(train, settings)
        labels = sorted({t for t in table.tasks if data_group(t) in held})
        entries, r, n = _task_entries(net, norm, scales, table, labels, min_trials)
        per_task += entries
        right, total = right + r, total + n
    if progress is not None:
        progress(folds, folds)
    return {"folds": folds, **_summary(per_task, right, total, min_trials)}


def quality(backend: SurrogateBackend, table: TrialTable, *, min_trials: int = 5) -> dict[str, Any]:
    """:func:`held_out_report`'s figures for a fitted surrogate on the trials of ``table`` (read
    with ``feature_names=backend.feature_names``), e.g. real trials of tasks it never saw.

    Raises:
        ConfigError: ``table`` was read with other task features or another space.
    """
    if (
        list(table.feature_names) != backend.feature_names
        or table.space.to_dict() != backend.space.to_dict()
    ):
        raise ConfigError(
            "the trials were read with other task features or another space than the surrogate's"
        )
    labels = sorted(set(table.tasks))
    entries, right, total = _task_entries(
        backend.net, backend.norm, backend.meta["scales"], table, labels, min_trials
    )
    return _summary(entries, right, total, min_trials)


def fit_surrogate(
    storages: Sequence[Any],
    out: str | Path,
    *,
    space: str | SearchSpace = "optimizer",
    folds: int = 5,
    settings: FitSettings | None = None,
    progress: Callable[[str], None] | None = None,
) -> tuple[SurrogateBackend, dict[str, Any]]:
    """Read the trials of ``storages``, measure the surrogate's quality on held-out tasks
    (:func:`held_out_report`), fit it on every trial, save it to ``out`` and write
    ``out/report.json``. Returns the surrogate and the report.

    Raises:
        ConfigError: no usable trials, fewer than two tasks, bad settings.
        StoreError: a storage cannot be read, or ``out`` cannot be written.
    """
    from hporl._io import writable_dir
    from hporl.store import mask_url

    settings = settings or FitSettings()
    say = progress or (lambda _text: None)
    out = writable_dir(out, "surrogate directory")
    space = _space(space)
    t0 = time.perf_counter()
    table = read_trials(storages, space)
    if not len(table):
        raise ConfigError(_nothing_usable(table))
    read_s = time.perf_counter() - t0
    n_tasks = len(set(table.tasks))
    say(f"{len(table)} trials of {n_tasks} tasks read in {read_s:.1f} s")
    t0 = time.perf_counter()
    held = held_out_report(
        table,
        folds=folds,
        settings=settings,
        progress=lambda k, n: say(f"held-out fold {k + 1} of {n}") if k < n else None,
    )
    cv_s = time.perf_counter() - t0
    say("fitting on every trial")
    backend = SurrogateBackend.fit(table, space=space, settings=settings)
    backend.save(out)
    report = {
        "surrogate": str(out),
        "storages": [mask_url(str(s)) if "://" in str(s) else str(s) for s in storages],
        "space": space.name,
        "trials": len(table),
        "tasks": n_tasks,
        "epochs": sorted(set(table.budgets)),
        "diverged": int(sum(table.diverged)),
        "stopped_early": int(sum(table.stopped)),
        "skipped": dict(table.skipped),
        "settings": backend.meta["settings"],
        "read_seconds": round(read_s, 2),
        "fit_seconds": backend.meta["fit_seconds"],
        "held_out_seconds": round(cv_s, 2),
        "held_out": held,
    }
    write_json(out / "report.json", report)
    return backend, report
