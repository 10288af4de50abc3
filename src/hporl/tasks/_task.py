"""``Task``: the data (train/val/test, in memory), the model(s), the loss and metric, the budget."""

from __future__ import annotations

import copy
import hashlib
import inspect
import logging
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hporl._io import did_you_mean
from hporl.exceptions import TaskError
from hporl.tasks import models as _models
from hporl.tasks._preprocess import (
    Preprocessor,
    _as_float,
    _missing_mask,
    check_field_counts,
    read_csv,
)

__all__ = ["FEATURE_NAMES", "ModelSpec", "Task"]

logger = logging.getLogger(__name__)

TASK_TYPES = ("classification", "regression")
INPUT_KINDS = ("tabular", "image", "sequence")

FEATURE_NAMES: tuple[str, ...] = (
    "log_n_train",
    "log_n_inputs",
    "log_n_classes",
    "is_regression",
    "class_balance",
    "class_entropy",
    "input_tabular",
    "input_image",
    "input_sequence",
    "frac_categorical",
    "frac_missing",
    "log_samples_per_input",
    "landmark_linear",
    "log_params",
    "model_depth",
    "model_conv",
    "model_dropout",
    "n_models",
    "log_epochs",
)
"""Names of :meth:`Task.features`, in order. All lie in [0, 1] (``log_samples_per_input`` in
[-1, 1]) so that they are comparable across tasks; the task's name or id is never a feature."""


@dataclass(frozen=True)
class ModelSpec:
    """One model of a task: a module deep-copied for each trial, or a factory."""

    name: str
    source: nn.Module | Callable[..., nn.Module]

    @classmethod
    def of(cls, model: Any) -> ModelSpec:
        if isinstance(model, ModelSpec):
            return model
        if isinstance(model, nn.Module):
            return cls(type(model).__name__, model)
        if callable(model):
            return cls(getattr(model, "__name__", type(model).__name__), model)
        raise TaskError(
            f"model must be an nn.Module or a factory(input_shape, n_outputs) returning one, "
            f"got {type(model).__name__}"
        )

    @property
    def takes_config(self) -> bool:
        if isinstance(self.source, nn.Module):
            return False
        try:
            return "config" in inspect.signature(self.source).parameters
        except (TypeError, ValueError):
            return False

    def build(
        self, input_shape: tuple[int, ...], n_outputs: int, config: Mapping[str, Any] | None = None
    ) -> nn.Module:
        """A fresh model: a deep copy of the module, or the factory's output (seed torch first)."""
        if isinstance(self.source, nn.Module):
            return copy.deepcopy(self.source)
        if self.takes_config:
            module = self.source(input_shape, n_outputs, config=config)
        else:
            module = self.source(input_shape, n_outputs)
        if not isinstance(module, nn.Module):
            raise TaskError(
                f"model factory {self.name!r} returned {type(module).__name__}, not an nn.Module"
            )
        return module


class Task:
    """A learning problem: preprocessed train/val/test tensors, one model or several, a budget.

    Build one with :meth:`from_arrays`, :meth:`from_csv` or :func:`hporl.tasks.builtin`. The data
    is held once, in memory, as tensors; models are built fresh for every trial.

    Attributes:
        name: a label for reports (never a meta-feature).
        task_type: ``"classification"`` (cross-entropy, accuracy) or ``"regression"`` (MSE on the
            standardised target, R²).
        input_shape: shape of one sample, e.g. ``(64,)`` or ``(1, 8, 8)``.
        n_outputs: number of classes, or 1.
        epochs: the default training budget of one trial.
        preprocessor: the :class:`Preprocessor` fitted on the train split that made the
            tensors from raw rows (``None`` when the task was built from tensors); it prepares
            new rows the same way.
        classes: the original class labels, in the order of the network's outputs.
    """

    def __init__(
        self,
        *,
        name: str,
        X_train: torch.Tensor,
        y_train: torch.Tensor,
        X_val: torch.Tensor,
        y_val: torch.Tensor,
        X_test: torch.Tensor,
        y_test: torch.Tensor,
        model: Any = None,
        task_type: str = "classification",
        epochs: int = 20,
        input_kind: str | None = None,
        n_outputs: int | None = None,
        classes: Sequence[Any] | None = None,
        info: Mapping[str, Any] | None = None,
        preprocessor: Preprocessor | None = None,
    ) -> None:
        if task_type not in TASK_TYPES:
            raise TaskError(f"task_type must be one of {TASK_TYPES}, got {task_type!r}")
        if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1:
            raise TaskError(f"epochs must be a positive integer, got {epochs!r}")
        for split, X, y in (
            ("train", X_train, y_train),
            ("val", X_val, y_val),
            ("test", X_test, y_test),
        ):
            if len(X) == 0:
                raise TaskError(f"the {split} split is empty")
            if len(X) != len(y):
                raise TaskError(f"the {split} split has {len(X)} inputs but {len(y)} targets")
            if not torch.isfinite(X).all():
                raise TaskError(f"the {split} inputs contain NaN or inf")
        self.name = name
        self.task_type = task_type
        self.X_train, self.y_train = X_train.float().contiguous(), y_train.contiguous()
        self.X_val, self.y_val = X_val.float().contiguous(), y_val.contiguous()
        self.X_test, self.y_test = X_test.float().contiguous(), y_test.contiguous()
        if task_type == "classification":
            self.y_train, self.y_val, self.y_test = (
                t.long() for t in (self.y_train, self.y_val, self.y_test)
            )
        else:
            self.y_train, self.y_val, self.y_test = (
                t.float().reshape(-1) for t in (self.y_train, self.y_val, self.y_test)
            )
        self.input_shape = tuple(int(s) for s in X_train.shape[1:])
        if input_kind is None:
            input_kind = {1: "tabular", 2: "sequence"}.get(len(self.input_shape), "image")
        if input_kind not in INPUT_KINDS:
            raise TaskError(f"input_kind must be one of {INPUT_KINDS}, got {input_kind!r}")
        self.input_kind = input_kind
        if task_type == "classification":
            n_cls = int(max(self.y_train.max(), self.y_val.max(), self.y_test.max())) + 1
            self.n_outputs = int(n_outputs or n_cls)
            present = int(torch.unique(self.y_train).numel())
            if present < 2:
                raise TaskError(
                    f"task {name!r}: the classification target has one class in the train split; "
                    "it needs at least two"
                )
        else:
            self.n_outputs = 1
        self.classes = list(classes) if classes is not None else None
        self.epochs = epochs
        self.info: dict[str, Any] = dict(info or {})
        self.preprocessor = preprocessor
        if model is None:
            model = _models.make_cnn if input_kind == "image" else _models.make_mlp
        raw = list(model) if isinstance(model, (list, tuple)) else [model]
        if not raw:
            raise TaskError("model: the list of models is empty")
        self.models = [ModelSpec.of(m) for m in raw]
        self._check_models()

    # -- construction -----------------------------------------------------------------------
    @classmethod
    def from_arrays(
        cls,
        X: Any,
        y: Any,
        *,
        model: Any = None,
        task_type: str | None = None,
        epochs: int = 20,
        name: str = "task",
        val_size: float = 0.2,
        test_size: float = 0.2,
        seed: int = 0,
        columns: Sequence[str] | None = None,
        input_kind: str | None = None,
    ) -> Task:
        """Split, preprocess (fitted on the train split only) and wrap arrays as a task.

        ``X`` is 2-D tabular data (numbers, strings, missing values; numeric columns are imputed
        with the median and standardised, others imputed with the most frequent value and
        one-hot encoded), or an array of 3+ dimensions of numbers (sequences ``(n, C, L)``,
        images ``(n, C, H, W)``; standardised per channel). ``y`` holds class labels (any type)
        or real values; ``task_type`` is inferred when not given.

        Raises:
            TaskError: before any training, naming what is wrong.
        """
        if hasattr(X, "columns") and hasattr(
            X, "to_numpy"
        ):  # a DataFrame, without importing pandas
            columns = columns or [str(c) for c in X.columns]
            X = X.to_numpy(dtype=object)
        if hasattr(y, "to_numpy"):
            y = y.to_numpy()
        X = np.asarray(X)
        y = np.asarray(y)
        if X.ndim == 1:
            raise TaskError(
                f"X must have one row per sample (2 or more dimensions), got shape {X.shape}"
            )
        if y.ndim != 1 and not (y.ndim == 2 and y.shape[1] == 1):
            raise TaskError(f"y must be one-dimensional (one target per row), got shape {y.shape}")
        y = y.reshape(-1)
        if len(X) != len(y):
            raise TaskError(
                f"X has {len(X)} rows but y has {len(y)}; they must have the same length"
            )
        if not (0 < val_size < 1 and 0 < test_size < 1 and val_size + test_size < 1):
            raise TaskError(
                f"val_size and test_size must be in (0, 1) with a sum below 1, got {val_size}, {test_size}"
            )
        missing_y = _missing_mask(y)
        if missing_y.any():
            rows = np.flatnonzero(missing_y)
            raise TaskError(
                f"the target has {len(rows)} missing value(s) (rows {', '.join(map(str, rows[:5]))}"
                f"{', ...' if len(rows) > 5 else ''}); drop or fill those rows"
            )
        if X.ndim == 2:
            if columns is not None and len(columns) != X.shape[1]:
                raise TaskError(f"{len(columns)} column names for {X.shape[1]} columns")
            _check_columns(X, columns or [f"x{j}" for j in range(X.shape[1])], lambda i: f"row {i}")
        if task_type is None:
            task_type, why = _infer_task_type(y)
            why = f"inferred from the target: {why}; pass task_type= to choose"
            logger.info("task %r is %s (%s)", name, task_type, why)
        else:
            why = "given"
        if task_type not in TASK_TYPES:
            raise TaskError(f"task_type must be one of {TASK_TYPES}, got {task_type!r}")
        classes = None
        if task_type == "classification":
            classes, y_enc = np.unique(
                y.astype(str) if y.dtype == object else y, return_inverse=True
            )
            if len(classes) < 2:
                raise TaskError(
                    f"the classification target has one class ({classes[0].item()!r}); it needs at least two"
                )
            y_arr = y_enc.astype(np.int64)
        else:
            try:
                y_arr = y.astype(np.float64)
            except ValueError as err:
                raise TaskError(f"the regression target is not numeric: {err}") from None
            if not np.isfinite(y_arr).all():
                raise TaskError("the regression target contains inf")
        train_idx, val_idx, test_idx = _split(
            len(y_arr), y_arr if classes is not None else None, val_size, test_size, seed
        )
        info: dict[str, Any] = {"n_rows": len(y_arr), "task_type_reason": why}
        if X.ndim == 2:
            prep = Preprocessor.fit(X[train_idx], columns)
            X_train = prep.transform(X[train_idx])
            X_val, X_test = prep.transform(X[val_idx]), prep.transform(X[test_idx])
            info.update(
                frac_categorical=prep.frac_categorical,
                frac_missing=prep.frac_missing,
                n_raw_features=X.shape[1],
                columns=prep.columns,
            )
            input_kind = input_kind or "tabular"
        else:
            try:
                Xf = X.astype(np.float32)
            except (ValueError, TypeError) as err:
                raise TaskError(f"X with {X.ndim} dimensions must be numeric: {err}") from None
            bad = ~np.isfinite(Xf)
            if bad.any():
                row = int(np.argwhere(bad)[0][0])
                raise TaskError(f"X contains NaN or inf (first at row {row})")
            prep = Preprocessor.fit(Xf[train_idx])
            X_train, X_val, X_test = (prep.transform(Xf[i]) for i in (train_idx, val_idx, test_idx))
            info.update(
                frac_categorical=0.0, frac_missing=0.0, n_raw_features=int(np.prod(X.shape[1:]))
            )
            input_kind = input_kind or ("sequence" if X.ndim == 3 else "image")
        if task_type == "regression":
            y_train = np.asarray(y_arr[train_idx], dtype=np.float64)
            if not np.isfinite(y_train).all() or np.abs(y_train).max(initial=0.0) > 1e150:
                raise TaskError(
                    "the regression target has values too large to learn from "
                    f"(|y| up to {np.abs(y_train).max():.3g}); rescale it"
                )
            if np.ptp(y_train) == 0:
                raise TaskError(
                    f"the regression target is constant ({y_train[0]:g} on every training row): "
                    "there is nothing to learn"
                )
            mu, sd = float(y_train.mean()), float(y_train.std()) or 1.0
            y_arr = (y_arr - mu) / sd
            info.update(y_mean=mu, y_std=sd)
        t = torch.from_numpy
        return cls(
            name=name,
            X_train=t(np.ascontiguousarray(X_train, dtype=np.float32)),
            y_train=t(y_arr[train_idx]),
            X_val=t(np.ascontiguousarray(X_val, dtype=np.float32)),
            y_val=t(y_arr[val_idx]),
            X_test=t(np.ascontiguousarray(X_test, dtype=np.float32)),
            y_test=t(y_arr[test_idx]),
            model=model,
            task_type=task_type,
            epochs=epochs,
            input_kind=input_kind,
            n_outputs=len(classes) if classes is not None else None,
            classes=[c.item() if hasattr(c, "item") else c for c in classes]
            if classes is not None
            else None,
            info=info,
            preprocessor=prep,
        )

    @classmethod
    def from_csv(
        cls,
        path: str | Path,
        *,
        target: str,
        model: Any = None,
        delimiter: str | None = None,
        **kwargs: Any,
    ) -> Task:
        """Read a CSV file with a header row; ``target`` names the column to predict.

        Other keyword arguments go to :meth:`from_arrays`. Without ``model``, the default MLP.
        """
        path = Path(path)
        header, body, lines = read_csv(path, delimiter)
        if target not in header:
            raise TaskError(
                f"{path}: no target column {target!r}; " + _columns_hint(target, header)
            )
        if header.count(target) > 1:
            raise TaskError(f"{path}: the header names {target!r} {header.count(target)} times")
        if len(header) < 2:
            raise TaskError(f"{path}: no feature columns besides the target {target!r}")
        check_field_counts(path, header, body, lines)
        if len(body) < 5:
            raise TaskError(
                f"{path}: {len(body)} data rows are too few for train/val/test splits "
                "(at least 5 are needed)"
            )
        data = np.array(body, dtype=object)
        ti = header.index(target)
        X = np.delete(data, ti, axis=1)
        y = data[:, ti]
        missing_y = np.flatnonzero(_missing_mask(y))
        if len(missing_y):
            raise TaskError(
                f"{path}: the target column {target!r} has {len(missing_y)} missing value(s) "
                f"(first on line {lines[missing_y[0]]}); drop or fill those rows"
            )
        _check_columns(
            X,
            [h for j, h in enumerate(header) if j != ti],
            lambda i: f"line {lines[i]}",
            prefix=f"{path}: ",
        )
        y_num = _as_float(y)
        if y_num is not None and kwargs.get("task_type") != "classification":
            if np.isinf(y_num).any():
                i = int(np.flatnonzero(np.isinf(y_num))[0])
                raise TaskError(
                    f"{path}: the target column {target!r} contains inf ({y[i]!r} on line "
                    f"{lines[i]}); replace it or drop the row"
                )
            y = y_num
        cols = [h for j, h in enumerate(header) if j != ti]
        kwargs.setdefault("name", path.stem)
        return cls.from_arrays(X, y, model=model, columns=cols, **kwargs)

    # -- models -----------------------------------------------------------------------------
    def build_model(self, index: int = 0, config: Mapping[str, Any] | None = None) -> nn.Module:
        return self.models[index].build(self.input_shape, self.n_outputs, config)

    def _check_models(self) -> None:
        """Build each model once (seed 0), check its output shape, and keep its description
        (size, depth, a digest of its definition and initial weights) for features and the
        fingerprint."""
        x = self.X_train[:2]
        infos = []
        for spec in self.models:
            torch.manual_seed(0)
            module = spec.build(self.input_shape, self.n_outputs, None)
            infos.append(_describe(spec.name, module))  # before the forward pass can touch buffers
            try:
                with torch.no_grad():
                    out = module(x)
            except Exception as err:
                raise TaskError(
                    f"model {spec.name!r} fails on a batch of shape {tuple(x.shape)}: {err}"
                ) from None
            want = (len(x), self.n_outputs)
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else None
            ok = got == want or (self.task_type == "regression" and got == (len(x),))
            if not ok:
                raise TaskError(
                    f"model {spec.name!r} returns shape {got} for a batch of {len(x)}; task "
                    f"{self.name!r} needs {want} ({self.task_type}, {self.n_outputs} outputs)"
                )
        self._model_info = infos

    # -- description ------------------------------------------------------------------------
    @property
    def metric_name(self) -> str:
        return "accuracy" if self.task_type == "classification" else "r2"

    @cached_property
    def chance_metric(self) -> float:
        """The metric of a constant prediction on the validation split (majority class / 0 R²)."""
        if self.task_type == "classification":
            counts = torch.bincount(self.y_train, minlength=self.n_outputs)
            return float((self.y_val == int(counts.argmax())).float().mean())
        return 0.0

    @cached_property
    def _model_stats(self) -> dict[str, float]:
        info = self._model_info
        return {
            "log_params": float(np.mean([math.log10(max(m["params"], 1)) for m in info])) / 8,
            "model_depth": float(np.mean([math.log2(1 + m["depth"]) for m in info])) / 5,
            "model_conv": float(np.mean([m["conv"] for m in info])),
            "model_dropout": float(np.mean([m["dropout"] for m in info])),
        }

    @cached_property
    def _landmark(self) -> float:
        """Chance-adjusted validation score of a linear model fitted on (a sample of) train."""
        from sklearn.linear_model import LogisticRegression, Ridge

        rng = np.random.default_rng(0)
        n = len(self.X_train)
        idx = rng.choice(n, size=min(n, 1000), replace=False)
        X = self.X_train[idx].reshape(len(idx), -1).numpy()
        y = self.y_train[idx].numpy()
        Xv = self.X_val.reshape(len(self.X_val), -1).numpy()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if self.task_type == "classification":
                if len(np.unique(y)) < 2:
                    return 0.0
                score = LogisticRegression(max_iter=200).fit(X, y).score(Xv, self.y_val.numpy())
                chance = self.chance_metric
                return float(np.clip((score - chance) / max(1 - chance, 1e-9), 0, 1))
            score = Ridge(alpha=1.0).fit(X, y).score(Xv, self.y_val.numpy())
            return float(np.clip(score, 0, 1))

    def features(self) -> np.ndarray:
        """Meta-features of the task (see :data:`FEATURE_NAMES`), comparable across tasks."""
        n = len(self.X_train)
        d = int(math.prod(self.input_shape))
        if self.task_type == "classification":
            freq = torch.bincount(self.y_train, minlength=self.n_outputs).double() / n
            nz = freq[freq > 0]
            balance = float(nz.min() / nz.max())
            entropy = float(-(nz * nz.log()).sum() / math.log(self.n_outputs))
            log_classes = math.log2(self.n_outputs) / 10
        else:
            balance, entropy, log_classes = 1.0, 1.0, 0.0
        ms = self._model_stats
        values = {
            "log_n_train": math.log10(n) / 6,
            "log_n_inputs": math.log10(d) / 5,
            "log_n_classes": log_classes,
            "is_regression": float(self.task_type == "regression"),
            "class_balance": balance,
            "class_entropy": entropy,
            "input_tabular": float(self.input_kind == "tabular"),
            "input_image": float(self.input_kind == "image"),
            "input_sequence": float(self.input_kind == "sequence"),
            "frac_categorical": float(self.info.get("frac_categorical", 0.0)),
            "frac_missing": float(self.info.get("frac_missing", 0.0)),
            "log_samples_per_input": float(np.clip(math.log10(n / d) / 5, -1, 1)),
            "landmark_linear": self._landmark,
            **ms,
            "n_models": min(len(self.models), 10) / 10,
            "log_epochs": math.log10(self.epochs) / 3,
        }
        return np.array([min(max(values[k], -1.0), 1.0) for k in FEATURE_NAMES], dtype=np.float32)

    @cached_property
    def fingerprint(self) -> str:
        """A hash of the data, the model definitions, the task type and the epoch budget."""
        h = hashlib.sha256()
        for t in (self.X_train, self.y_train, self.X_val, self.y_val, self.X_test, self.y_test):
            h.update(str(tuple(t.shape)).encode())
            h.update(t.numpy().tobytes())
        for info in self._model_info:
            h.update(info["digest"].encode())
        h.update(f"{self.task_type}|{self.epochs}|{self.n_outputs}".encode())
        return h.hexdigest()[:32]

    def with_epochs(self, epochs: int) -> Task:
        """A shallow copy with another epoch budget (data tensors are shared, not copied)."""
        if not isinstance(epochs, int) or epochs < 1:
            raise TaskError(f"epochs must be a positive integer, got {epochs!r}")
        other = copy.copy(self)
        other.epochs = epochs
        other.__dict__.pop("fingerprint", None)
        return other

    def with_validation_in_training(self, epochs: int) -> Task:
        """A shallow copy whose training rows are train + validation, for the final training
        (the validation split stays, for reporting only: the model has seen it)."""
        other = self.with_epochs(epochs)
        other.X_train = torch.cat([self.X_train, self.X_val])
        other.y_train = torch.cat([self.y_train, self.y_val])
        return other

    def __repr__(self) -> str:
        return (
            f"Task({self.name!r}, {self.task_type}, {self.input_kind} {self.input_shape}, "
            f"train/val/test={len(self.X_train)}/{len(self.X_val)}/{len(self.X_test)}, "
            f"models={[m.name for m in self.models]}, epochs={self.epochs})"
        )


# -- helpers --------------------------------------------------------------------------------
def _describe(name: str, module: nn.Module) -> dict[str, Any]:
    """Size, depth, layer kinds and a digest (name, structure, initial weights) of a model."""
    mods = list(module.modules())
    h = hashlib.sha256(name.encode())
    h.update(repr(module).encode())
    for k, v in module.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().numpy().tobytes())
    conv = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
    return {
        "params": sum(p.numel() for p in module.parameters()),
        "depth": sum(isinstance(x, (nn.Linear, *conv)) for x in mods),
        "conv": any(isinstance(x, conv) for x in mods),
        "dropout": any(isinstance(x, nn.Dropout) for x in mods),
        "digest": h.hexdigest(),
    }


def _columns_hint(name: str, header: Sequence[str]) -> str:
    """The columns there are, and the nearest one to ``name`` (case-insensitive first)."""
    if len(header) == 1:
        first = header[0] if len(header[0]) <= 60 else header[0][:57] + "..."
        return (
            f"the file has a single column {first!r}: is it a CSV file with a header row of "
            "column names?"
        )
    same = [h for h in header if h.lower() == name.lower()]
    shown = header if len(header) <= 20 else [*header[:20], "..."]
    hint = f" Did you mean {same[0]!r}?" if same else did_you_mean(name, header)
    return f"the columns are {shown!r}.{hint}"


def _check_columns(
    X: np.ndarray, columns: Sequence[str], row: Callable[[int], str], *, prefix: str = ""
) -> None:
    """Refuse a feature column that is entirely empty or holds an infinite number."""
    for j, name in enumerate(columns):
        col = X[:, j]
        if _missing_mask(col).all():
            raise TaskError(f"{prefix}feature column {name!r} is entirely empty; drop it")
        num = _as_float(col)
        if num is not None and np.isinf(num).any():
            i = int(np.flatnonzero(np.isinf(num))[0])
            raise TaskError(
                f"{prefix}feature column {name!r} contains inf ({col[i]!r} on {row(i)}); "
                "replace it or drop the row"
            )


def _infer_task_type(y: np.ndarray) -> tuple[str, str]:
    """``"classification"`` or ``"regression"``, and why."""
    yf = (
        _as_float(y)
        if y.dtype == object
        else (y.astype(np.float64) if y.dtype.kind in "fiub" else None)
    )
    if yf is None or y.dtype.kind in "bUS":
        return "classification", "its values are not numbers"
    distinct = len(np.unique(yf))
    limit = max(2, min(50, len(yf) // 5))
    if np.all(np.mod(yf, 1) == 0):
        if distinct <= limit:
            return "classification", f"whole numbers with {distinct} distinct values (<= {limit})"
        return "regression", f"whole numbers with {distinct} distinct values (> {limit})"
    return "regression", "numbers with fractions"


def _split(
    n: int, y: np.ndarray | None, val_size: float, test_size: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n_test = round(n * test_size)
    n_val = round(n * val_size)
    n_train = n - n_test - n_val
    for split, k in (("train", n_train), ("val", n_val), ("test", n_test)):
        if k < 1:
            raise TaskError(
                f"the {split} split is empty: {n} rows are too few for val_size={val_size} and "
                f"test_size={test_size}"
            )
    from sklearn.model_selection import train_test_split

    idx = np.arange(n)

    def cut(a: np.ndarray, size: int, labels: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        strat = labels
        if strat is not None:
            _, counts = np.unique(strat, return_counts=True)
            n_cls = len(counts)
            if counts.min() < 2 or size < n_cls or len(a) - size < n_cls:
                strat = None
        return train_test_split(a, test_size=size, random_state=seed, stratify=strat)

    rest, test = cut(idx, n_test, y)
    train, val = cut(rest, n_val, y[rest] if y is not None else None)
    return np.sort(train), np.sort(val), np.sort(test)
