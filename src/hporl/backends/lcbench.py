"""LCBench on its YAHPO Gym surrogate: :class:`~hporl.backends.yahpo.YahpoBackend` for the
``lcbench`` scenario, with its tasks' size features.

The surrogate (Pfisterer et al., "YAHPO Gym", AutoML Conf 2022) was fitted on LCBench (Zimmer,
Lindauer & Hutter, 2021): funnel-shaped MLPs trained with SGD (momentum) and cosine annealing,
7 hyperparameters, curves up to 52 epochs, 34 OpenML datasets. Both are Apache-2.0; cite both
works when publishing.

The data folder (``model.onnx``, ``encoding.json``, ``config_space.json``,
``parity_reference.json`` and a ``VERSION`` file one folder up) is not shipped with hporl; point
``data_dir=`` or ``HPORL_YAHPO_DATA`` at it (see :mod:`hporl.backends.yahpo`). Every row of
``parity_reference.json`` (outputs of ``yahpo_gym`` 1.0.2) is matched to a relative difference
under 1e-3 by one batched call.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from hporl.backends.yahpo import YahpoBackend, YahpoTask
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


class LCBenchTask(YahpoTask):
    """One LCBench dataset as a task-like object (what ``HPOEnv`` needs: name, epochs, features).

    ``features()`` is what is known about the dataset without its data: its size, as
    ``[log10(instances)/7, log10(features)/4, log2(classes)/7]`` clipped to [0, 1] (OpenML's
    figures; see ``_DATASETS`` for the sources): the ``"size"`` feature set of :mod:`hporl.tasks`,
    which a policy computes for a real task too. It never encodes the task id, so a policy cannot
    memorise tasks. A task without a table entry gets ``[0.5, 0.5, 0.5]`` and a warning.
    """

    def __init__(
        self,
        name: str,
        *,
        epochs: int = MAX_EPOCH,
        data_version: str = "",
        metric_name: str = "accuracy",
        **kwargs: Any,
    ) -> None:
        name = str(name)
        if name in _DATASETS:
            _, n, d, k = _DATASETS[name]
            features = size_features(n, d, k)
        else:
            logger.warning("no dataset sizes known for LCBench task %s; features are 0.5", name)
            features = np.full(3, 0.5, dtype=np.float32)
        super().__init__(
            name,
            scenario="lcbench",
            epochs=epochs,
            data_version=data_version,
            metric_name=metric_name,
            features=features,
            **kwargs,
        )

    @property
    def dataset_name(self) -> str | None:
        """The OpenML dataset name (for reports), or ``None`` when unknown."""
        entry = _DATASETS.get(self.name)
        return entry[0] if entry else None

    def __repr__(self) -> str:
        return f"LCBenchTask({self.name!r}, dataset={self.dataset_name!r}, epochs={self.epochs})"


class LCBenchBackend(YahpoBackend):
    """The YAHPO Gym LCBench surrogate (``YahpoBackend("lcbench")``), with LCBench's results:

    - ``curve[i]`` is the predicted validation accuracy (``val_accuracy / 100``) after epoch
      ``i + 1``, for epochs 1..E (E = ``epochs`` or ``task.epochs``, at most 52);
    - ``loss_curve`` is the predicted validation cross-entropy (repeated as ``train_loss_curve``);
    - ``test_metric`` is the predicted test balanced accuracy at the best validation epoch;
    - ``wall_time`` is the surrogate's predicted training time at the last epoch, in the
      seconds of the original LCBench runs (not the time spent here);
    - a missing hyperparameter, a value outside the LCBench ranges, or a fixed parameter
      (optimizer, lr_schedule) other than sgd/cosine gives ``"failed"`` naming the key.

    Its space is hporl's built-in ``lcbench`` space; its tasks are :class:`LCBenchTask`.
    """

    def __init__(self, data_dir: str | Path | None = None, *, target: str | None = None) -> None:
        super().__init__("lcbench", data_dir=data_dir, target=target)
