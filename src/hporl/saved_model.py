"""A tuned model that predicts on its own: :class:`Predictor` (the trained network, the fitted
preprocessing, the class labels), written by :meth:`hporl.TuneResult.save` and read back by
:func:`load_model`, in a new process, without the training data.

The saved directory (nothing in it is pickled):

- ``model.json``: the task type, class labels in output order, the regression target's scaling,
  the fitted preprocessing (:meth:`hporl.tasks.Preprocessor.to_dict`), the tuned configuration,
  metric, and for each network its architecture (a built-in factory by name and keyword
  arguments, input shape, outputs) and file names; then the sha256 of every other file
  (``checksums``) and of its own content (``meta_sha256``), as policy files have.
- ``model.safetensors``: the weights (``model_<i>.safetensors`` for a task of several models).
- ``model.onnx``: the network alone, on the preprocessed float32 input ``x`` of shape
  ``(n, *input_shape)``; output ``y``: logits (classification) or the standardised target.
- ``pipeline.onnx``: preprocessing + network + output, where the preprocessing is arithmetic on
  one float tensor (tables whose columns are all numeric, images, sequences): input ``x`` is the
  raw rows as float32 in training column order, NaN for a missing value; output
  ``probabilities`` (classification, classes in ``model.json``'s order) or ``prediction``
  (regression, in the target's units). A table with a categorical column gets no pipeline: apply
  the JSON preprocessing (:class:`~hporl.tasks.Preprocessor`) before ``model.onnx``.

The ONNX files need the ``onnx`` package at save time (``pip install 'hporl[onnx]'``); without
it, or if a network cannot be exported, ``model.json`` says why and the rest is saved.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hporl._io import atomic_write, read_checked_json, save_tensors, write_checked_json
from hporl.exceptions import ConfigError, HporlError, ModelError, StoreError
from hporl.tasks import models as _models
from hporl.tasks._preprocess import Preprocessor, check_field_counts, read_csv
from hporl.tasks._task import ModelSpec

__all__ = ["Predictor", "load_model"]

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
META = "model.json"
_BATCH = 4096


class Predictor:
    """A trained network with what it needs to predict on raw rows: the fitted preprocessing,
    the class labels, the regression target's scaling.

    :func:`hporl.tune_model` returns one as ``TuneResult.predictor``; :func:`load_model` reads a
    saved one. ``X`` below is a pandas DataFrame (columns by name), a numpy array (columns in
    training order, :attr:`columns`), or the path of a CSV file with a header row. A missing
    value is filled as in training; a column missing or unexpected is refused (``ConfigError``).

    Attributes:
        task_type: ``"classification"`` or ``"regression"``.
        classes: the class labels in the order of the network's outputs (classification).
        networks: the trained module(s), in evaluation mode.
        preprocessor: the fitted :class:`~hporl.tasks.Preprocessor` (``None`` for a task built
            from tensors: ``X`` is then the network's input itself).
        config: the tuned configuration the networks were trained with.
    """

    def __init__(
        self,
        networks: Sequence[nn.Module],
        *,
        task_type: str,
        input_shape: Sequence[int],
        n_outputs: int,
        classes: Sequence[Any] | None = None,
        preprocessor: Preprocessor | None = None,
        target_scale: tuple[float, float] = (0.0, 1.0),
        config: Mapping[str, Any] | None = None,
        factories: Sequence[Mapping[str, Any] | None] | None = None,
        names: Sequence[str] | None = None,
        metric_name: str | None = None,
        test_metric: float | None = None,
        network_metrics: Sequence[float | None] | None = None,
        task: str = "task",
        index: int | None = None,
    ) -> None:
        self.networks = list(networks)
        if not self.networks:
            raise ModelError("a predictor needs at least one network")
        self.task_type = task_type
        self.input_shape = tuple(int(s) for s in input_shape)
        self.n_outputs = int(n_outputs)
        if task_type == "classification" and classes is None:
            classes = list(range(self.n_outputs))
        self.classes = list(classes) if task_type == "classification" else None
        self.preprocessor = preprocessor
        self.target_scale = (float(target_scale[0]), float(target_scale[1]))
        self.config = dict(config or {})
        n = len(self.networks)
        self.factories = list(factories) if factories is not None else [None] * n
        self.names = list(names) if names is not None else [type(m).__name__ for m in networks]
        self.metric_name = metric_name
        self.test_metric = test_metric
        self.network_metrics = list(network_metrics) if network_metrics else [None] * n
        self.task = task
        self.index = index
        if index is not None and not 0 <= index < n:
            raise ModelError(f"index {index} is out of range: the model has {n} network(s)")

    @classmethod
    def from_task(
        cls,
        task: Any,
        networks: Sequence[nn.Module],
        config: Mapping[str, Any],
        *,
        test_metric: float | None = None,
        network_metrics: Sequence[float | None] | None = None,
    ) -> Predictor:
        """The predictor of ``networks`` trained on ``task`` (a :class:`~hporl.Task`)."""
        info = task.info
        return cls(
            networks,
            task_type=task.task_type,
            input_shape=task.input_shape,
            n_outputs=task.n_outputs,
            classes=task.classes,
            preprocessor=task.preprocessor,
            target_scale=(info.get("y_mean", 0.0), info.get("y_std", 1.0)),
            config=config,
            factories=[_models.factory_spec(m.source) for m in task.models],
            names=[m.name for m in task.models],
            metric_name=task.metric_name,
            test_metric=test_metric,
            network_metrics=network_metrics,
            task=task.name,
        )

    # -- predicting -----------------------------------------------------------------------------
    @property
    def columns(self) -> list[str] | None:
        """The input columns, in the order a numpy array must follow (``None``: not a table)."""
        return self.preprocessor.columns if self.preprocessor is not None else None

    @property
    def network(self) -> nn.Module:
        """The network that predicts: the only one, or the one chosen by ``index``."""
        if self.index is not None:
            return self.networks[self.index]
        if len(self.networks) == 1:
            return self.networks[0]
        listed = ", ".join(
            f"{i} {name}" + (f" (test {self.metric_name} {m:.4f})" if m is not None else "")
            for i, (name, m) in enumerate(zip(self.names, self.network_metrics, strict=True))
        )
        raise ModelError(
            f"the model holds {len(self.networks)} networks ({listed}); choose one with "
            "load_model(..., index=I) (`hporl predict --index I`)"
        )

    def features(self, X: Any) -> torch.Tensor:
        """The network's input for the rows ``X`` (the preprocessing, applied)."""
        columns = None
        if isinstance(X, (str, Path)):
            X, columns = _read_rows(X)
        if self.preprocessor is not None:
            return torch.from_numpy(self.preprocessor.transform(X, columns))
        if hasattr(X, "detach"):
            X = X.detach().cpu().numpy()
        arr = np.asarray(X)
        if tuple(arr.shape[1:]) != self.input_shape or arr.ndim < 2:
            raise ConfigError(
                f"the input has shape {arr.shape}; the model takes rows of shape {self.input_shape}"
            )
        try:
            return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
        except (TypeError, ValueError) as err:
            raise ConfigError(f"the input must be numbers: {err}") from None

    @torch.no_grad()
    def outputs(self, X: Any) -> torch.Tensor:
        """The network's raw output (logits, or the standardised target) for the rows ``X``."""
        x = self.features(X)
        net = self.network
        net.eval()
        param = next(iter(net.parameters()), None)
        device = param.device if param is not None else torch.device("cpu")
        outs = [net(x[s : s + _BATCH].to(device)).cpu() for s in range(0, len(x), _BATCH)]
        if not outs:
            return torch.empty((0, self.n_outputs))
        return torch.cat(outs)

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities, one column per class in :attr:`classes`' order.

        Raises:
            ModelError: the model is a regression.
        """
        if self.task_type != "classification":
            raise ModelError("predict_proba is for classification; this model is a regression")
        return torch.softmax(self.outputs(X), dim=1).numpy()

    def predict(self, X: Any) -> np.ndarray:
        """Class labels (the original values) or regression values (the target's units)."""
        out = self.outputs(X)
        if self.task_type == "classification":
            return np.asarray(self.classes)[out.argmax(1).numpy()]
        mean, std = self.target_scale
        return out.reshape(-1).double().numpy() * std + mean

    # -- saving ---------------------------------------------------------------------------------
    def save(self, directory: str | Path, *, onnx: bool = True) -> Path:
        """Write ``model.json``, the weights (safetensors) and, with ``onnx``, the ONNX graphs
        (see :mod:`hporl.saved_model`); each file to a temporary name, then renamed."""

        from hporl import __version__

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        n = len(self.networks)
        entries, checksums = [], {}
        for i, net in enumerate(self.networks):
            stem = "model" if n == 1 else f"model_{i}"
            cpu = copy.deepcopy(net).cpu().eval()
            state = {k: v.detach().contiguous().clone() for k, v in cpu.state_dict().items()}
            weights = f"{stem}.safetensors"
            save_tensors(directory / weights, state)
            entry: dict[str, Any] = {
                "name": self.names[i],
                "factory": self.factories[i],
                "weights": weights,
                "test_metric": self.network_metrics[i],
                "onnx": None,
                "onnx_note": None,
                "pipeline_onnx": None,
                "pipeline_note": None,
            }
            files = [weights]
            if onnx:
                entry["onnx"], entry["onnx_note"] = _export(
                    cpu, self.input_shape, directory / f"{stem}.onnx", ["x"], ["y"]
                )
                pipe, entry["pipeline_note"] = self._pipeline(cpu)
                if pipe is not None:
                    name = "pipeline.onnx" if n == 1 else f"pipeline_{i}.onnx"
                    raw_shape = (
                        self.preprocessor.input_shape if self.preprocessor else self.input_shape
                    )
                    out = "probabilities" if self.task_type == "classification" else "prediction"
                    entry["pipeline_onnx"], entry["pipeline_note"] = _export(
                        pipe, raw_shape, directory / name, ["x"], [out]
                    )
                files += [f for f in (entry["onnx"], entry["pipeline_onnx"]) if f]
            else:
                entry["onnx_note"] = "not exported (save(onnx=False))"
            for f in files:
                checksums[f] = _sha256(directory / f)
            entries.append(entry)
        meta = {
            "format_version": FORMAT_VERSION,
            "hporl_version": __version__,
            "torch_version": torch.__version__,
            "task": self.task,
            "task_type": self.task_type,
            "classes": self.classes,
            "target_scale": list(self.target_scale),
            "input_shape": list(self.input_shape),
            "n_outputs": self.n_outputs,
            "preprocessing": self.preprocessor.to_dict() if self.preprocessor else None,
            "config": self.config,
            "metric_name": self.metric_name,
            "test_metric": self.test_metric,
            "networks": entries,
            "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "checksums": checksums,
        }
        write_checked_json(directory / META, meta)
        return directory

    def _pipeline(self, net: nn.Module) -> tuple[nn.Module | None, str | None]:
        prep = self.preprocessor
        if prep is not None and not prep.numeric_only:
            return None, (
                f"not exported: the categorical column(s) {', '.join(map(repr, prep.categorical))} "
                "are strings; apply model.json's preprocessing, then model.onnx"
            )
        return _Pipeline(net, prep, self.task_type, self.target_scale).eval(), None

    def __repr__(self) -> str:
        what = "regression" if self.classes is None else f"{len(self.classes)} classes"
        return (
            f"Predictor({self.task!r}, {what}, networks={self.names}, "
            f"{'no preprocessing' if self.preprocessor is None else self.preprocessor!r})"
        )


class _Pipeline(nn.Module):
    """Preprocessing (numeric tables and arrays), the network and the output, for ONNX."""

    def __init__(
        self,
        net: nn.Module,
        prep: Preprocessor | None,
        task_type: str,
        target_scale: tuple[float, float],
    ) -> None:
        super().__init__()
        self.net, self.task_type, self.kind = net, task_type, prep.kind if prep else None
        self.target_mean, self.target_std = target_scale
        f32 = torch.float32
        if prep is not None and prep.kind == "table":
            self.register_buffer("median", torch.tensor(prep._median, dtype=f32))
            self.register_buffer("mean", torch.tensor(prep._mean, dtype=f32))
            self.register_buffer("scale", torch.tensor(prep._scale, dtype=f32))
        elif prep is not None:
            self.register_buffer("mean", torch.from_numpy(prep._cmean[0].copy()))
            self.register_buffer("scale", torch.from_numpy(prep._cstd[0].copy()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "table":
            x = torch.where(torch.isnan(x), self.median, x)
        if self.kind is not None:
            x = (x - self.mean) / self.scale
        out = self.net(x)
        if self.task_type == "classification":
            return torch.softmax(out, dim=1)
        return out.reshape(-1) * self.target_std + self.target_mean


def _export(
    module: nn.Module, shape: Sequence[int], path: Path, inputs: list[str], outputs: list[str]
) -> tuple[str | None, str | None]:
    """Export ``module`` (batch axis dynamic) to ``path``; (file name, None) or (None, why not)."""
    try:
        import onnx  # noqa: F401  (the exporter needs it)
    except ImportError:
        return None, "not exported: the onnx package is missing (pip install 'hporl[onnx]')"
    dummy = torch.zeros((2, *shape))
    axes = {name: {0: "n"} for name in (*inputs, *outputs)}

    def write(p: Path) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                (dummy,),
                str(p),
                input_names=inputs,
                output_names=outputs,
                dynamic_axes=axes,
                dynamo=False,
            )

    try:
        atomic_write(path, write)
    except StoreError:
        raise
    except Exception as err:  # an op without an ONNX form, an exporter that changed, ...
        reason = str(err).strip().splitlines()[0] if str(err).strip() else ""
        logger.warning("%s not exported to ONNX: %s: %s", path.name, type(err).__name__, reason)
        return None, f"not exported: {type(err).__name__}: {reason}"
    return path.name, None


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _read_rows(path: str | Path) -> tuple[np.ndarray, list[str]]:
    path = Path(path)
    header, body, lines = read_csv(path)
    check_field_counts(path, header, body, lines)
    return np.array(body, dtype=object).reshape(len(body), len(header)), header


# -- loading ------------------------------------------------------------------------------------
def load_model(directory: str | Path, *, model: Any = None, index: int | None = None) -> Predictor:
    """Read a model saved by :meth:`hporl.TuneResult.save` (or :meth:`Predictor.save`).

    Every file is checked against the sha256 in ``model.json`` before it is used; nothing is
    unpickled. A network from a built-in factory is rebuilt from its JSON description.

    Args:
        model: the factory or module (a list of them for several networks) the model was
            tuned with; needed when it is not a built-in one (JSON cannot describe user code).
        index: which network predicts, when the task had several models.

    Raises:
        ModelError: the directory is not a saved model, a file was edited or truncated, or a
            network cannot be rebuilt; the message says what to do.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load as load_tensors

    directory = Path(directory)
    meta = _read_meta(directory)
    try:
        prep = Preprocessor.from_dict(meta["preprocessing"]) if meta["preprocessing"] else None
        entries = meta["networks"]
        input_shape = tuple(meta["input_shape"])
        n_outputs = int(meta["n_outputs"])
        config = meta["config"]
    except (KeyError, TypeError, ValueError, HporlError) as err:
        raise ModelError(f"{directory / META} is not a saved model's description: {err}") from None
    given = list(model) if isinstance(model, (list, tuple)) else [model] * len(entries)
    if len(given) != len(entries):
        raise ModelError(
            f"model= gives {len(given)} models; the saved model has {len(entries)} networks"
        )
    networks = []
    for i, entry in enumerate(entries):
        data = _checked_bytes(directory, entry["weights"], meta)
        try:
            state = load_tensors(data)
        except SafetensorError as err:
            raise ModelError(f"{directory / entry['weights']} cannot be read: {err}") from None
        source = given[i]
        if source is None:
            spec = entry.get("factory")
            if spec is None:
                raise ModelError(
                    f"network {entry['name']!r} in {directory} is not a built-in model, so JSON "
                    "cannot rebuild it: pass the factory or module it was tuned with, "
                    "load_model(dir, model=...)"
                )
            try:
                source = _models.from_factory_spec(spec)
            except KeyError as err:
                raise ModelError(
                    f"{directory / META}: network {entry['name']!r} names an unknown model "
                    f"factory ({err.args[0]}); was it saved by a newer hporl?"
                ) from None
        try:
            net = ModelSpec.of(source).build(input_shape, n_outputs, config)
            net.load_state_dict(state)
        except (RuntimeError, HporlError) as err:
            first = str(err).strip().splitlines()[0]
            raise ModelError(
                f"the weights in {directory / entry['weights']} do not fit network "
                f"{entry['name']!r}: {first}"
            ) from None
        networks.append(net.eval())
    return Predictor(
        networks,
        task_type=meta["task_type"],
        input_shape=input_shape,
        n_outputs=n_outputs,
        classes=meta["classes"],
        preprocessor=prep,
        target_scale=tuple(meta["target_scale"]),
        config=config,
        factories=[e.get("factory") for e in entries],
        names=[e["name"] for e in entries],
        metric_name=meta.get("metric_name"),
        test_metric=meta.get("test_metric"),
        network_metrics=[e.get("test_metric") for e in entries],
        task=meta.get("task", "task"),
        index=index,
    )


def _read_meta(directory: Path) -> dict[str, Any]:
    """``model.json``, checked: a saved model's, this format, its own checksum, and a checksum
    for every file it names."""
    path = directory / META
    if not directory.is_dir():
        raise ModelError(f"{directory} is not a saved model: no such directory")
    if not path.is_file():
        if (directory / "model.pt").is_file():
            raise ModelError(
                f"{directory} holds model.pt but no {META}: it was saved by an older hporl "
                "(weights only, no preprocessing); tune again to save a model that predicts"
            )
        raise ModelError(f"{directory} is not a saved model: {META} is missing")
    meta = read_checked_json(
        path,
        error=ModelError,
        version=FORMAT_VERSION,
        kind="model",
        remake="save it again with this version",
        redo="save the model again",
    )
    if "networks" not in meta:
        raise ModelError(f"{path} is not a saved model's description")
    checksums = meta.get("checksums")
    if not isinstance(checksums, dict):
        raise ModelError(f"{path} is incomplete: it holds no checksums")
    for entry in meta["networks"]:
        for key in ("weights", "onnx", "pipeline_onnx"):
            name = entry.get(key)
            if name is not None and not isinstance(checksums.get(name), str):
                raise ModelError(f"{path} is incomplete: it holds no checksum for {name}")
    for name in checksums:  # ONNX files too: a user may run them without hporl
        if not name.endswith(".safetensors"):
            _checked_bytes(directory, name, meta)
    return meta


def _checked_bytes(directory: Path, name: str, meta: Mapping[str, Any]) -> bytes:
    """The file's bytes, read once: the bytes whose sha256 is checked are the bytes used."""
    path = directory / name
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ModelError(f"{directory} is incomplete: {name} is missing") from None
    except OSError as err:
        raise ModelError(f"cannot read {path}: {err.strerror}") from None
    if hashlib.sha256(data).hexdigest() != meta["checksums"][name]:
        raise ModelError(f"{path} is corrupted or was changed: its sha256 does not match {META}")
    return data
