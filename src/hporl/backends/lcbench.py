"""A backend on the YAHPO Gym LCBench surrogate: no training, a published ONNX model predicts
the learning curve of a configuration on one of 34 OpenML datasets.

The surrogate (Pfisterer et al., "YAHPO Gym", AutoML Conf 2022) was fitted on LCBench (Zimmer,
Lindauer & Hutter, 2021): funnel-shaped MLPs trained with SGD (momentum) and cosine annealing,
7 hyperparameters, curves up to 52 epochs. Both are Apache-2.0; cite both works when publishing.

The data folder (``model.onnx``, ``encoding.json``, ``config_space.json`` and a ``VERSION`` file
one folder up) is not shipped with hporl; point ``data_dir=`` or ``HPORL_YAHPO_DATA`` at it.
Reading it needs ``onnxruntime`` (``pip install 'hporl[bench]'``), imported only when used.

Inputs are fed raw, as the official ``yahpo_gym`` module feeds them: the graph applies its own
transforms. Every row of ``parity_reference.json`` (outputs of ``yahpo_gym`` 1.0.2) is matched
to a relative difference under 1e-3 by one batched call; single-row calls match it exactly. Batches
are padded to a multiple of 16 rows so that a row's prediction does not depend on the batch it
was computed in (onnxruntime's kernels treat a ragged tail of rows differently in the last bits).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hporl._io import did_you_mean
from hporl.backends._base import Backend, EpochCallback, TrialResult
from hporl.exceptions import ConfigError
from hporl.space import SearchSpace
from hporl.tasks._features import SIZE_FEATURE_NAMES, size_features

__all__ = [
    "OUTPUT_NAMES",
    "SIZE_FEATURE_NAMES",
    "LCBenchBackend",
    "LCBenchTask",
    "size_features",
]

logger = logging.getLogger(__name__)

MAX_EPOCH = 52
"""The longest curve the surrogate knows (LCBench logged 52 points per run)."""

OUTPUT_NAMES = (
    "time",
    "val_accuracy",
    "val_cross_entropy",
    "val_balanced_accuracy",
    "test_cross_entropy",
    "test_balanced_accuracy",
)
"""Columns of :meth:`LCBenchBackend.predict`'s output, in order."""

CONTINUOUS = (
    "epoch",
    "batch_size",
    "learning_rate",
    "momentum",
    "weight_decay",
    "num_layers",
    "max_units",
    "max_dropout",
)
"""Columns of the surrogate's ``x_cont`` input, in order (raw values)."""

_HYPERPARAMETERS = CONTINUOUS[1:]
_INTEGER = frozenset({"batch_size", "num_layers", "max_units"})
_REQUIRED_FILES = ("model.onnx", "encoding.json", "config_space.json")
_CHUNK = 100_000  # rows per session.run; a multiple of _PAD
_PAD = 16  # batches are padded to a multiple of this many rows (see the module docstring)
_ENV_DATA = "HPORL_YAHPO_DATA"
_ENV_CACHE = "HPORL_CACHE_DIR"

# Dataset sizes as OpenML reports them (NumberOfInstances, NumberOfFeatures -- which counts the
# target column --, NumberOfClasses), keyed by OpenML task id. Sources: the values are the
# OpenML dataset qualities printed by automl/LCBench, notebooks/.ipynb_checkpoints/
# "Get metadata-checkpoint.ipynb" (commit 6a502ee137ded393d9e0b908f201985fbca4f06a), keyed
# there by dataset name; names map to task ids by syne-tune/syne-tune,
# benchmarking/commons/benchmark_definitions/yahpo.py (``openml_task_name_to_id``).
# Dataset sizes are public metadata, known without the data: they are features, not identities.
_DATASETS: dict[str, tuple[str, int, int, int]] = {
    "3945": ("KDDCup09_appetency", 50000, 231, 2),
    "7593": ("covertype", 581012, 55, 7),
    "34539": ("Amazon_employee_access", 32769, 10, 2),
    "126025": ("adult", 48842, 15, 2),
    "126026": ("nomao", 34465, 119, 2),
    "126029": ("bank-marketing", 45211, 17, 2),
    "146212": ("shuttle", 58000, 10, 7),
    "167104": ("Australian", 690, 15, 2),
    "167149": ("kr-vs-kp", 3196, 37, 2),
    "167152": ("mfeat-factors", 2000, 217, 10),
    "167161": ("credit-g", 1000, 21, 2),
    "167168": ("vehicle", 846, 19, 4),
    "167181": ("kc1", 2109, 22, 2),
    "167184": ("blood-transfusion-service-center", 748, 5, 2),
    "167185": ("cnae-9", 1080, 857, 9),
    "167190": ("phoneme", 5404, 6, 2),
    "167200": ("higgs", 98050, 29, 2),
    "167201": ("connect-4", 67557, 43, 3),
    "168329": ("helena", 65196, 28, 100),
    "168330": ("jannis", 83733, 55, 4),
    "168331": ("volkert", 58310, 181, 10),
    "168335": ("MiniBooNE", 130064, 51, 2),
    "168868": ("APSFailure", 76000, 171, 2),
    "168908": ("christine", 5418, 1637, 2),
    "168910": ("fabert", 8237, 801, 7),
    "189354": ("airlines", 539383, 8, 2),
    "189862": ("jasmine", 2984, 145, 2),
    "189865": ("sylvine", 5124, 21, 2),
    "189866": ("albert", 425240, 79, 2),
    "189873": ("dionis", 416188, 61, 355),
    "189905": ("car", 1728, 7, 4),
    "189906": ("segment", 2310, 20, 7),
    "189908": ("Fashion-MNIST", 70000, 785, 10),
    "189909": ("jungle_chess_2pcs_raw_endgame_complete", 44819, 7, 3),
}


def _size_features(task_id: str) -> np.ndarray:
    _, n, d, k = _DATASETS[task_id]
    return size_features(n, d, k)


class LCBenchTask:
    """One LCBench dataset as a task-like object (what ``HPOEnv`` needs: name, epochs, features).

    ``features()`` is what is known about the dataset without its data: its size, as
    ``[log10(instances)/7, log10(features)/4, log2(classes)/7]`` clipped to [0, 1] (OpenML's
    figures; see ``_DATASETS`` for the sources): the ``"size"`` feature set of :mod:`hporl.tasks`,
    which a policy computes for a real task too. It never encodes the task id, so a policy cannot
    memorise tasks. A task without a table entry gets ``[0.5, 0.5, 0.5]`` and a warning.
    """

    task_type = "classification"
    metric_name = "accuracy"
    chance_metric = 0.0

    def __init__(self, name: str, *, epochs: int = MAX_EPOCH, data_version: str = "") -> None:
        self.name = str(name)
        self.epochs = int(epochs)
        self.data_version = data_version
        if self.name in _DATASETS:
            self._features = _size_features(self.name)
        else:
            logger.warning("no dataset sizes known for LCBench task %s; features are 0.5", name)
            self._features = np.full(3, 0.5, dtype=np.float32)

    @property
    def dataset_name(self) -> str | None:
        """The OpenML dataset name (for reports), or ``None`` when unknown."""
        entry = _DATASETS.get(self.name)
        return entry[0] if entry else None

    def features(self) -> np.ndarray:
        return self._features.copy()

    @property
    def fingerprint(self) -> str:
        text = f"lcbench|{self.data_version}|{self.name}|{self.epochs}"
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    def __repr__(self) -> str:
        return f"LCBenchTask({self.name!r}, dataset={self.dataset_name!r}, epochs={self.epochs})"


def _default_data_dirs() -> list[Path]:
    rel = Path("..") / "shared" / "benchmarks" / "yahpo" / "lcbench"
    repo_root = Path(__file__).resolve().parents[3]
    return [Path.cwd() / rel, repo_root / rel]


def _check_config(space: SearchSpace, config: Mapping[str, Any]) -> str | None:
    """Why ``config`` cannot be fed to the surrogate, or ``None`` when it can."""
    if not isinstance(config, Mapping):
        return f"a configuration must be a mapping, got {type(config).__name__}"
    for name in _HYPERPARAMETERS:
        if name not in config:
            return f"configuration is missing the hyperparameter {name!r}"
        p = space[name]
        if not p.contains(config[name]):
            return (
                f"hyperparameter {name!r} = {config[name]!r} is outside the LCBench range "
                f"[{p.low}, {p.high}]" + (" (an integer)" if p.kind == "int" else "")
            )
    for p in space.parameters:  # the fixed ones (optimizer=sgd, lr_schedule=cosine)
        if p.kind == "fixed" and p.name in config and not p.contains(config[p.name]):
            return (
                f"hyperparameter {p.name!r} = {config[p.name]!r}: the LCBench surrogate only "
                f"knows {p.name}={p.default!r}"
            )
    return None


class LCBenchBackend(Backend):
    """Looks a configuration up in the YAHPO Gym LCBench surrogate instead of training it.

    Results follow :class:`~hporl.backends.TrialResult`:

    - ``curve[i]`` is the predicted validation accuracy (``val_accuracy / 100``) after epoch
      ``i + 1``, for epochs 1..E (E = ``epochs`` or ``task.epochs``, at most 52);
    - ``loss_curve`` is the predicted validation cross-entropy. The surrogate predicts no training
      loss, so ``train_loss_curve`` repeats ``loss_curve``;
    - ``test_metric`` is the predicted test balanced accuracy (``/100``) at the best validation
      epoch;
    - ``wall_time`` is the surrogate's predicted training time at the last epoch, in the
      seconds of the original LCBench runs (not the time spent here);
    - a missing hyperparameter, a value outside the LCBench ranges, or a fixed parameter
      (optimizer, lr_schedule) other than sgd/cosine gives ``"failed"`` naming the key.

    The surrogate is deterministic: ``seed`` changes nothing. ``checkpoint_dir`` is ignored.
    """

    name = "lcbench"

    def __init__(self, data_dir: str | Path | None = None) -> None:
        self.data_dir = self._find_data_dir(data_dir)
        self._session: Any = None
        with open(self.data_dir / "encoding.json") as f:
            self._codes: dict[str, int] = {
                str(k): int(v) for k, v in json.load(f)["OpenML_task_id"].items()
            }
        with open(self.data_dir / "config_space.json") as f:
            hps = {h["name"]: h for h in json.load(f)["hyperparameters"]}
        self.task_ids: list[str] = [str(c) for c in hps["OpenML_task_id"]["choices"]]
        missing = [t for t in self.task_ids if t not in self._codes]
        if missing:
            raise ConfigError(
                f"{self.data_dir / 'encoding.json'} has no code for task(s) {missing}"
            )
        version_file = self.data_dir.parent / "VERSION"
        # The file reads "VERSION:1.0.2"; keep what follows the label.
        text = version_file.read_text().strip() if version_file.is_file() else ""
        self.data_version = text.rpartition(":")[2].strip() or "unknown"
        self.space = SearchSpace.builtin("lcbench")
        self._sampled: dict[tuple[int, int], list[dict[str, Any]]] = {}

    # -- set-up ---------------------------------------------------------------------------------
    @staticmethod
    def _find_data_dir(data_dir: str | Path | None) -> Path:
        hint = (
            f"pass data_dir= or set {_ENV_DATA} to the folder holding "
            + ", ".join(_REQUIRED_FILES)
            + " (YAHPO Gym's lcbench surrogate, data version 1.0.2)"
        )
        if data_dir is None and os.environ.get(_ENV_DATA):
            data_dir = os.environ[_ENV_DATA]
        if data_dir is not None:
            folder = Path(data_dir).expanduser()
            for name in _REQUIRED_FILES:
                if not (folder / name).is_file():
                    raise ConfigError(f"LCBench surrogate file missing: {folder / name}; {hint}")
            return folder.resolve()
        tried = _default_data_dirs()
        for folder in tried:
            if all((folder / name).is_file() for name in _REQUIRED_FILES):
                return folder.resolve()
        raise ConfigError(
            "LCBench surrogate not found: no model.onnx in "
            + " or ".join(str(p.resolve()) for p in tried)
            + f"; {hint}"
        )

    @property
    def session(self) -> Any:
        """The onnxruntime session, created on first use."""
        if self._session is None:
            try:
                import onnxruntime as ort
            except ImportError as err:
                raise ConfigError(
                    "the LCBench backend needs onnxruntime: pip install 'hporl[bench]'"
                ) from err
            options = ort.SessionOptions()
            options.log_severity_level = 3
            self._session = ort.InferenceSession(
                str(self.data_dir / "model.onnx"), options, providers=["CPUExecutionProvider"]
            )
        return self._session

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_session"] = None  # an onnxruntime session does not pickle; rebuilt on use
        return state

    # -- tasks ----------------------------------------------------------------------------------
    def tasks(self) -> list[LCBenchTask]:
        """All 34 datasets, in ``config_space.json`` order."""
        return [LCBenchTask(t, data_version=self.data_version) for t in self.task_ids]

    def task(self, task_id: str | int) -> LCBenchTask:
        """One dataset by OpenML task id (e.g. ``"3945"``).

        Raises:
            ConfigError: for an id the surrogate does not know, suggesting the nearest.
        """
        key = str(task_id)
        if key not in self.task_ids:
            raise ConfigError(
                f"unknown LCBench task id {key!r}; the surrogate knows {len(self.task_ids)} "
                f"OpenML task ids ({', '.join(self.task_ids[:4])}, ...)."
                + did_you_mean(key, self.task_ids)
            )
        return LCBenchTask(key, data_version=self.data_version)

    def _code(self, task: Any) -> int:
        name = str(getattr(task, "name", task))
        if name not in self.task_ids:
            self.task(name)  # raises with a suggestion
        return self._codes[name]

    # -- raw predictions ------------------------------------------------------------------------
    def predict(
        self,
        task_ids: Sequence[str],
        configs: Sequence[Mapping[str, Any]],
        epochs: Sequence[int],
    ) -> np.ndarray:
        """Raw surrogate outputs, ``[n, 6]`` float32 in :data:`OUTPUT_NAMES` order.

        Row ``i`` is ``configs[i]`` on ``task_ids[i]`` after ``epochs[i]`` epochs (clipped to
        1..52). Values are fed raw (integer parameters rounded); ranges are not checked here
        (:meth:`evaluate` checks them). All rows go through one batched call per 100,000 rows.

        Raises:
            ConfigError: for unequal lengths, an unknown task id, or a missing or non-numeric
                hyperparameter.
        """
        n = len(configs)
        if len(task_ids) != n or len(epochs) != n:
            raise ConfigError(
                f"predict needs as many task ids, configs and epochs; got "
                f"{len(task_ids)}, {n}, {len(epochs)}"
            )
        if n == 0:
            return np.zeros((0, len(OUTPUT_NAMES)), dtype=np.float32)
        codes = {t: self._code(t) for t in set(map(str, task_ids))}
        x_cat = np.fromiter((codes[str(t)] for t in task_ids), dtype=np.int32, count=n)
        x_cont = np.empty((n, len(CONTINUOUS)), dtype=np.float64)
        x_cont[:, 0] = np.clip(np.rint(np.asarray(epochs, dtype=np.float64)), 1, MAX_EPOCH)
        for j, name in enumerate(_HYPERPARAMETERS, start=1):
            try:
                col = np.asarray([c[name] for c in configs], dtype=np.float64)
            except KeyError as err:
                raise ConfigError(f"configuration is missing the hyperparameter {name!r}") from err
            except (TypeError, ValueError) as err:
                raise ConfigError(f"hyperparameter {name!r} has a non-numeric value") from err
            x_cont[:, j] = np.rint(col) if name in _INTEGER else col
        return self._run(x_cat.reshape(-1, 1), x_cont.astype(np.float32))

    def _run(self, x_cat: np.ndarray, x_cont: np.ndarray) -> np.ndarray:
        session = self.session
        n = len(x_cat)
        out = np.empty((n, len(OUTPUT_NAMES)), dtype=np.float32)
        for start in range(0, n, _CHUNK):
            cat, cont = x_cat[start : start + _CHUNK], x_cont[start : start + _CHUNK]
            m = len(cat)
            padded = -(-m // _PAD) * _PAD
            if padded > m:
                cat = np.concatenate([cat, np.repeat(cat[-1:], padded - m, axis=0)])
                cont = np.concatenate([cont, np.repeat(cont[-1:], padded - m, axis=0)])
            out[start : start + m] = session.run(None, {"x_cat": cat, "x_cont": cont})[0][:m]
        return out

    # -- evaluation -----------------------------------------------------------------------------
    def _epochs(self, task: Any, epochs: int | None) -> int:
        return max(1, min(int(epochs or getattr(task, "epochs", MAX_EPOCH)), MAX_EPOCH))

    def _result(
        self,
        rows: np.ndarray,
        *,
        config: Mapping[str, Any],
        epochs: int,
        seed: int | None,
        on_epoch: EpochCallback | None,
    ) -> TrialResult:
        curve = [float(v) / 100.0 for v in rows[:, 1]]
        stopped = False
        if on_epoch is not None:
            for e, value in enumerate(curve, start=1):
                if on_epoch(e, value):
                    curve, stopped = curve[:e], True
                    break
        k = len(curve)
        loss = [float(v) for v in rows[:k, 2]]
        bad = next((i for i in range(k) if not (math.isfinite(curve[i] + loss[i]))), None)
        if bad is not None:  # never seen with this model; kept for the contract
            return TrialResult.from_curves(
                metric_name="accuracy",
                curve=curve[:bad],
                loss_curve=loss[:bad],
                train_loss_curve=loss[:bad],
                status="diverged",
                reason=f"non-finite surrogate output in epoch {bad + 1}",
                chance_metric=0.0,
                epochs=epochs,
                seed=seed,
                config=dict(config),
            )
        result = TrialResult.from_curves(
            metric_name="accuracy",
            curve=curve,
            loss_curve=loss,
            train_loss_curve=list(loss),
            status="ok",
            chance_metric=0.0,
            epochs=epochs,
            wall_time=float(rows[k - 1, 0]),
            stopped_early=stopped,
            seed=seed,
            config=dict(config),
        )
        if result.best_epoch is not None:
            result.test_metric = float(rows[result.best_epoch - 1, 5]) / 100.0
        return result

    def _failed(
        self, reason: str, config: Any, epochs: int, seed: int | None = None
    ) -> TrialResult:
        return TrialResult(
            status="failed",
            metric_name="accuracy",
            reason=reason,
            chance_metric=0.0,
            epochs=epochs,
            seed=seed,
            config=dict(config) if isinstance(config, Mapping) else {},
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
        """Predict ``config``'s curve on ``task`` (all epochs in one batched call)."""
        n_epochs = self._epochs(task, epochs)
        reason = _check_config(self.space, config)
        if reason is not None:
            return self._failed(reason, config, n_epochs, seed)
        name = str(getattr(task, "name", task))
        rows = self.predict([name] * n_epochs, [config] * n_epochs, range(1, n_epochs + 1))
        return self._result(rows, config=config, epochs=n_epochs, seed=seed, on_epoch=on_epoch)

    def evaluate_many(
        self,
        task: Any,
        configs: Sequence[Mapping[str, Any]],
        *,
        epochs: int | None = None,
    ) -> list[TrialResult]:
        """:meth:`evaluate` for many configurations, with one batched prediction for all."""
        n_epochs = self._epochs(task, epochs)
        reasons = [_check_config(self.space, c) for c in configs]
        good = [c for c, r in zip(configs, reasons, strict=True) if r is None]
        name = str(getattr(task, "name", task))
        rows = self.predict(
            [name] * (len(good) * n_epochs),
            [c for c in good for _ in range(n_epochs)],
            [e for _ in good for e in range(1, n_epochs + 1)],
        )
        out, i = [], 0
        for config, reason in zip(configs, reasons, strict=True):
            if reason is not None:
                out.append(self._failed(reason, config, n_epochs, 0))
                continue
            block = rows[i * n_epochs : (i + 1) * n_epochs]
            out.append(self._result(block, config=config, epochs=n_epochs, seed=0, on_epoch=None))
            i += 1
        return out

    def final_scores(
        self, task: Any, configs: Sequence[Mapping[str, Any]], *, epoch: int = MAX_EPOCH
    ) -> np.ndarray:
        """Predicted ``val_accuracy / 100`` at ``epoch`` for each configuration (batched, float64).

        Configurations are not range-checked (see :meth:`evaluate` for that).
        """
        name = str(getattr(task, "name", task))
        rows = self.predict([name] * len(configs), configs, [epoch] * len(configs))
        return rows[:, 1].astype(np.float64) / 100.0

    # -- normalisation --------------------------------------------------------------------------
    def normalisation(
        self,
        task: Any,
        *,
        n: int = 10_000,
        seed: int = 0,
        cache_dir: str | Path | None = None,
    ) -> tuple[float, float]:
        """``(y_min, y_max)`` of the final-epoch validation accuracy over ``n`` random configs.

        The configurations are ``n`` successive ``SearchSpace.builtin("lcbench").sample(rng)``
        draws from one ``np.random.default_rng(seed)``, the same for every task. The result is
        cached as JSON under ``cache_dir`` (else ``$HPORL_CACHE_DIR``, else
        ``~/.cache/hporl/lcbench``), keyed by task, ``n``, ``seed`` and the data version.
        """
        name = str(getattr(task, "name", task))
        self._code(name)
        folder = Path(
            cache_dir or os.environ.get(_ENV_CACHE) or Path.home() / ".cache" / "hporl" / "lcbench"
        ).expanduser()
        version = "".join(ch if ch.isalnum() or ch in ".-_" else "_" for ch in self.data_version)
        path = folder / f"norm_{name}_n{n}_seed{seed}_v{version}.json"
        key = {"task": name, "n": int(n), "seed": int(seed), "data_version": self.data_version}
        if path.is_file():
            try:
                with open(path) as f:
                    cached = json.load(f)
                if all(cached.get(k) == v for k, v in key.items()):
                    return float(cached["y_min"]), float(cached["y_max"])
                logger.warning("ignoring %s: it was written for %s", path, cached)
            except (OSError, ValueError, KeyError, TypeError) as err:
                logger.warning("ignoring unreadable normalisation cache %s: %s", path, err)
        start = time.perf_counter()
        if (n, seed) not in self._sampled:  # the same draws serve every task
            rng = np.random.default_rng(seed)
            self._sampled = {(n, seed): [self.space.sample(rng) for _ in range(n)]}
        configs = self._sampled[(n, seed)]
        scores = self.final_scores(name, configs, epoch=MAX_EPOCH)
        y_min, y_max = float(scores.min()), float(scores.max())
        logger.debug(
            "normalisation of task %s over %d configs: %.2fs",
            name,
            n,
            time.perf_counter() - start,
        )
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=folder)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump({**key, "y_min": y_min, "y_max": y_max}, f, indent=1)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return y_min, y_max
