"""Built-in tasks from data that ships with installed packages, and generated task families."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import numpy as np

from hporl._io import did_you_mean
from hporl.exceptions import TaskError
from hporl.tasks import _images
from hporl.tasks import models as _models
from hporl.tasks._task import Task

__all__ = ["available", "builtin", "suite", "suites"]


def _sklearn(loader: str) -> tuple[np.ndarray, np.ndarray]:
    import sklearn.datasets as ds

    bunch = getattr(ds, loader)()
    return bunch.data, bunch.target


def _digits_images() -> tuple[np.ndarray, np.ndarray]:
    X, y = _sklearn("load_digits")
    return X.reshape(-1, 1, 8, 8) / 16.0, y


def _mnist1d() -> tuple[np.ndarray, np.ndarray]:
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as err:  # pragma: no cover - depends on the extra
        raise TaskError(
            "task 'mnist1d' needs the mnist1d package: pip install 'hporl[mnist1d]'"
        ) from err
    data = make_dataset(get_dataset_args())  # generated offline (get_dataset would download)
    X = np.concatenate([data["x"], data["x_test"]]).astype(np.float32)[:, None, :]
    y = np.concatenate([data["y"], data["y_test"]])
    return X, y


def _synth_classification(index: int) -> tuple[np.ndarray, np.ndarray]:
    """Family member ``index``: size, width, noise, class count and imbalance drawn from it."""
    from sklearn.datasets import make_classification

    rng = np.random.default_rng(1000 + index)
    n_classes = int(rng.choice([2, 2, 3, 4, 6, 10]))
    n_features = int(rng.choice([8, 16, 32, 64]))
    n_informative = int(max(2, min(n_features, rng.integers(2, n_features // 2 + 2))))
    while 2**n_informative < 2 * n_classes:
        n_informative += 1
    imbalance = float(rng.choice([0.0, 0.0, 0.5, 0.8]))
    weights = None
    if imbalance > 0:
        w = np.geomspace(1.0, 1.0 - imbalance, n_classes)
        weights = list(w / w.sum())
    X, y = make_classification(
        n_samples=int(rng.choice([300, 600, 1000, 2000])),
        n_features=n_features,
        n_informative=min(n_informative, n_features),
        n_redundant=int(rng.integers(0, max(1, (n_features - n_informative) // 2))),
        n_classes=n_classes,
        n_clusters_per_class=int(rng.choice([1, 2])),
        weights=weights,
        flip_y=float(rng.choice([0.0, 0.02, 0.05, 0.1])),
        class_sep=float(rng.uniform(0.5, 1.5)),
        random_state=index,
    )
    return X, y


def _heldout(name: str) -> tuple[np.ndarray, np.ndarray]:
    """Classification data sets kept out of the default policy's meta-training (by name): two
    that are made by scikit-learn's generators, one derived from packaged data, one spiral."""
    import sklearn.datasets as ds

    if name == "moons":
        return ds.make_moons(n_samples=1000, noise=0.3, random_state=0)
    if name == "circles":
        return ds.make_circles(n_samples=1000, noise=0.15, factor=0.5, random_state=0)
    if name == "gaussian_quantiles":
        return ds.make_gaussian_quantiles(n_samples=1200, n_features=6, n_classes=3, random_state=0)
    if name == "hastie_10_2":
        X, y = ds.make_hastie_10_2(n_samples=2000, random_state=0)
        return X, (y > 0).astype(np.int64)
    if name == "blobs_overlap":
        return ds.make_blobs(
            n_samples=1200, n_features=16, centers=5, cluster_std=6.0, random_state=0
        )
    if name == "spirals":
        rng = np.random.default_rng(0)
        n, arms = 400, 3
        t = rng.uniform(0.25, 1.0, size=(arms, n))
        X = np.concatenate(
            [
                np.stack(
                    [
                        t[a] * np.cos(4 * t[a] + 2 * np.pi * a / arms),
                        t[a] * np.sin(4 * t[a] + 2 * np.pi * a / arms),
                    ],
                    axis=1,
                )
                for a in range(arms)
            ]
        )
        X += rng.normal(0, 0.05, X.shape)
        return X, np.repeat(np.arange(arms), n)
    if name == "diabetes_high":
        X, y = _sklearn("load_diabetes")
        return X, (y > np.median(y)).astype(np.int64)
    if name == "checkerboard":
        rng = np.random.default_rng(0)
        X = rng.uniform(-1, 1, size=(1500, 2))
        cells = np.floor((X + 1) * 2).astype(np.int64)  # a 4 x 4 board
        return X, (cells.sum(axis=1) % 2).astype(np.int64)
    raise KeyError(name)


def _synth_regression(index: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import make_friedman1, make_regression

    rng = np.random.default_rng(2000 + index)
    n = int(rng.choice([300, 600, 1000, 2000]))
    if index % 3 == 2:  # a non-linear member
        return make_friedman1(
            n_samples=n,
            n_features=int(rng.choice([5, 10, 20])),
            noise=float(rng.uniform(0, 2)),
            random_state=index,
        )
    n_features = int(rng.choice([8, 16, 32, 64]))
    X, y = make_regression(
        n_samples=n,
        n_features=n_features,
        n_informative=int(rng.integers(2, n_features + 1)),
        noise=float(rng.choice([0.0, 5.0, 20.0, 50.0])),
        random_state=index,
    )
    return X, y


# name -> (loader, default epochs, default model, description)
_FIXED: dict[str, tuple[Callable[[], tuple[np.ndarray, np.ndarray]], int, Any, str]] = {
    "iris": (
        lambda: _sklearn("load_iris"),
        30,
        None,
        "scikit-learn iris: 150 rows, 4 features, 3 classes",
    ),
    "wine": (
        lambda: _sklearn("load_wine"),
        30,
        None,
        "scikit-learn wine: 178 rows, 13 features, 3 classes",
    ),
    "breast_cancer": (
        lambda: _sklearn("load_breast_cancer"),
        20,
        None,
        "scikit-learn breast cancer: 569 rows, 30 features, 2 classes",
    ),
    "digits": (
        lambda: _sklearn("load_digits"),
        20,
        None,
        "scikit-learn digits: 1797 rows, 64 pixels as features, 10 classes",
    ),
    "digits_linear": (
        lambda: _sklearn("load_digits"),
        20,
        _models.linear,
        "digits with a linear model",
    ),
    "digits_image": (_digits_images, 15, None, "digits as 1x8x8 images with a small CNN"),
    "shapes": (
        _images.shapes,
        30,
        _models.make_lenet,
        "generated 1x16x16 shapes (disk, ring, square, triangle, plus, cross): 1000 images, 6 classes, a LeNet",
    ),
    "shapes_rgb": (
        lambda: _images.shapes(colours=True),
        30,
        _models.make_lenet,
        "the shapes in random colours, 3x16x16: 1000 images, 6 classes, a LeNet",
    ),
    "gratings": (
        _images.gratings,
        30,
        _models.make_lenet,
        "generated 1x16x16 noisy gratings, class = orientation (0/45/90/135): 1000 images, 4 classes, a LeNet",
    ),
    "glyph_letters": (
        lambda: _images.glyphs("ABCDEFGHIJ"),
        30,
        _models.make_lenet,
        "letters A-J rendered in 20 fonts shipped with matplotlib, 1x16x16: 1000 images, 10 classes, a LeNet",
    ),
    "glyph_lower": (
        lambda: _images.glyphs("abcdefghij"),
        30,
        _models.make_lenet,
        "letters a-j rendered in 20 fonts shipped with matplotlib, 1x16x16: 1000 images, 10 classes, a LeNet",
    ),
    "glyph_digits": (
        lambda: _images.glyphs("0123456789"),
        30,
        _models.make_lenet,
        "digits 0-9 rendered in 20 fonts shipped with matplotlib, 1x16x16: 1000 images, 10 classes, a LeNet",
    ),
    "diabetes": (
        lambda: _sklearn("load_diabetes"),
        40,
        None,
        "scikit-learn diabetes: 442 rows, 10 features, regression",
    ),
    "mnist1d": (
        _mnist1d,
        15,
        None,
        "MNIST-1D (generated offline): 5000 sequences of length 40, 10 classes",
    ),
    "moons": (
        lambda: _heldout("moons"),
        20,
        None,
        "make_moons (noise 0.3): 1000 rows, 2 features, 2 classes; held out from the default policy",
    ),
    "circles": (
        lambda: _heldout("circles"),
        20,
        None,
        "make_circles (noise 0.15): 1000 rows, 2 features, 2 classes; held out",
    ),
    "gaussian_quantiles": (
        lambda: _heldout("gaussian_quantiles"),
        20,
        None,
        "make_gaussian_quantiles: 1200 rows, 6 features, 3 classes; held out",
    ),
    "hastie_10_2": (
        lambda: _heldout("hastie_10_2"),
        20,
        None,
        "make_hastie_10_2: 2000 rows, 10 features, 2 classes; held out",
    ),
    "blobs_overlap": (
        lambda: _heldout("blobs_overlap"),
        20,
        None,
        "make_blobs (std 6): 1200 rows, 16 features, 5 overlapping classes; held out",
    ),
    "spirals": (
        lambda: _heldout("spirals"),
        20,
        None,
        "three noisy spiral arms: 1200 rows, 2 features, 3 classes; held out",
    ),
    "diabetes_high": (
        lambda: _heldout("diabetes_high"),
        20,
        None,
        "diabetes target above its median: 442 rows, 10 features, 2 classes; held out",
    ),
    # Held out, and hard to get right with the default configuration: it is 12 to 25 points of
    # test accuracy below the best of 30 random configurations (chosen by validation) on each.
    "spirals_deep": (
        lambda: _heldout("spirals"),
        8,
        _models.mlp((32,) * 6),
        "the three spirals with a deep narrow MLP (6 x 32) and 8 epochs; held out, hard",
    ),
    "hastie_short": (
        lambda: _heldout("hastie_10_2"),
        4,
        None,
        "make_hastie_10_2 with only 4 epochs; held out, hard",
    ),
    "checkerboard": (
        lambda: _heldout("checkerboard"),
        10,
        None,
        "a 4 x 4 checkerboard: 1500 points in [-1, 1]^2, 2 classes, 10 epochs; held out, hard",
    ),
    "glyph_k_t": (
        lambda: _images.glyphs("KLMNOPQRST"),
        6,
        _models.make_lenet,
        "letters K-T (none of the training glyphs) in 20 fonts, 1x16x16: 1000 images, 10 classes, a LeNet, 6 epochs; held out, hard",
    ),
}
_FAMILIES: dict[str, tuple[Callable[[int], tuple[np.ndarray, np.ndarray]], int, str]] = {
    "synth_clf": (
        _synth_classification,
        20,
        "make_classification, size/width/noise/classes/imbalance vary with N",
    ),
    "synth_reg": (
        _synth_regression,
        30,
        "make_regression / friedman1, size/width/noise vary with N",
    ),
}
_SUITES: dict[str, list[str]] = {
    "small": ["iris", "wine"],
    "tabular": ["iris", "wine", "breast_cancer", "digits", "diabetes"],
    "images": [
        "digits_image",
        "shapes",
        "shapes_rgb",
        "gratings",
        "glyph_letters",
        "glyph_lower",
        "glyph_digits",
    ],
    "synthetic": [f"synth_clf_{i}" for i in range(12)] + [f"synth_reg_{i}" for i in range(4)],
    # Never in the default policy's meta-training (asserted there): its benchmark's tasks.
    "heldout": [
        "moons",
        "circles",
        "gaussian_quantiles",
        "hastie_10_2",
        "blobs_overlap",
        "spirals",
        "diabetes_high",
    ],
    # Held out too, and tuning matters there: the default configuration is far from the best.
    "heldout_hard": ["spirals_deep", "hastie_short", "checkerboard", "glyph_k_t"],
}
_SUITES["all"] = [
    *_SUITES["tabular"],
    "digits_linear",
    *_SUITES["images"],
    "mnist1d",
    *_SUITES["synthetic"],
]


def available() -> dict[str, str]:
    """Built-in task names (families as ``synth_clf_N``) with a one-line description."""
    out = {name: spec[3] for name, spec in _FIXED.items()}
    out.update({f"{fam}_N": spec[2] for fam, spec in _FAMILIES.items()})
    return out


def suites() -> dict[str, list[str]]:
    return {k: list(v) for k, v in _SUITES.items()}


def builtin(
    name: str, *, model: Any = None, epochs: int | None = None, seed: int = 0, **kwargs: Any
) -> Task:
    """A built-in task by name: a fixed data set, or ``synth_clf_N`` / ``synth_reg_N``.

    Args:
        model: replaces the task's default model (a module, a factory, or a list of them).
        epochs: replaces its default epoch budget.
        seed: seeds the train/val/test split.
    """
    if name in _FIXED:
        loader, default_epochs, default_model, _ = _FIXED[name]
        X, y = loader()
    else:
        m = re.fullmatch(r"(synth_clf|synth_reg)_(\d+)", name)
        if not m:
            names = [*_FIXED, "synth_clf_0", "synth_reg_0"]
            raise TaskError(
                f"unknown built-in task {name!r}; available: {', '.join(_FIXED)}, synth_clf_N, "
                f"synth_reg_N." + did_you_mean(name, names)
            )
        gen, default_epochs, _ = _FAMILIES[m.group(1)]
        X, y = gen(int(m.group(2)))
        default_model = None
    return Task.from_arrays(
        X,
        y,
        model=model if model is not None else default_model,
        epochs=epochs or default_epochs,
        name=name,
        seed=seed,
        task_type="regression"
        if name == "diabetes" or name.startswith("synth_reg")
        else "classification",
        **kwargs,
    )


def suite(name: str, **kwargs: Any) -> list[Task]:
    """The tasks of a named suite (see :func:`suites`); keyword arguments go to :func:`builtin`."""
    if name not in _SUITES:
        raise TaskError(
            f"unknown task suite {name!r}; available: {', '.join(_SUITES)}."
            + did_you_mean(name, _SUITES)
        )
    return [builtin(n, **kwargs) for n in _SUITES[name]]
