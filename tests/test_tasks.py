from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from torch import nn

from hporl import Task, TaskError
from hporl.tasks import FEATURE_NAMES, available, builtin, models, suite, suites


def blobs(n=120, d=5, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    X = rng.normal(size=(n, d)) + y[:, None]
    return X, y


# -- bad input, raised before any training --------------------------------------------------------
def test_lengths_differ():
    X, y = blobs()
    with pytest.raises(TaskError, match=re.escape("X has 120 rows but y has 119")):
        Task.from_arrays(X, y[:-1])


def test_inf_in_features_names_column():
    X, y = blobs()
    X = X.astype(object)
    X[3, 2] = np.inf
    with pytest.raises(TaskError, match=re.escape("feature column 'x2' contains inf")):
        Task.from_arrays(X, y, seed=1)


def test_inf_in_image_features():
    X = np.zeros((40, 1, 4, 4))
    X[7, 0, 1, 1] = np.inf
    with pytest.raises(TaskError, match=re.escape("X contains NaN or inf (first at row 7)")):
        Task.from_arrays(X, np.arange(40) % 2)


def test_missing_target_value():
    X, _ = blobs(n=20)
    y = np.array([0.0, 1.0] * 10)
    y[[4, 9]] = np.nan
    with pytest.raises(TaskError, match=re.escape("the target has 2 missing value(s) (rows 4, 9)")):
        Task.from_arrays(X, y)


def test_empty_split():
    X, y = blobs(n=4, classes=2)
    with pytest.raises(TaskError, match=re.escape("the val split is empty: 4 rows are too few")):
        Task.from_arrays(X, y, val_size=0.1, test_size=0.25)


def test_one_class_target():
    X, _ = blobs(n=30)
    with pytest.raises(TaskError, match=re.escape("the classification target has one class ('a')")):
        Task.from_arrays(X, np.array(["a"] * 30), task_type="classification")


def test_model_output_shape_mismatch():
    X, y = blobs()
    with pytest.raises(
        TaskError, match=re.escape("model 'Sequential' returns shape (2, 2) for a batch of 2")
    ):
        Task.from_arrays(X, y, model=nn.Sequential(nn.Linear(5, 2)))


def test_model_that_fails_on_the_input():
    X, y = blobs()
    with pytest.raises(TaskError, match="model 'Linear' fails on a batch of shape"):
        Task.from_arrays(X, y, model=nn.Linear(7, 3))


def test_factory_must_return_a_module():
    X, y = blobs()
    with pytest.raises(TaskError, match=r"returned int, not an nn\.Module"):
        Task.from_arrays(X, y, model=lambda shape, n: 3)


def test_entirely_empty_column():
    X, y = blobs()
    X = X.astype(object)
    X[:, 1] = None
    with pytest.raises(TaskError, match=re.escape("column 'x1' is entirely empty")):
        Task.from_arrays(X, y)


# -- preprocessing --------------------------------------------------------------------------------
def test_mixed_columns_imputed_and_one_hot_fitted_on_train():
    rng = np.random.default_rng(0)
    n = 200
    color = rng.choice(["red", "green", "blue"], n).astype(object)
    num = rng.normal(5.0, 3.0, n).astype(object)
    num[[1, 2, 3]] = None
    color[[5]] = ""
    y = (np.array([c == "red" for c in color]) ^ (rng.random(n) < 0.1)).astype(int)
    X = np.stack([num, color], axis=1)
    with pytest.warns(UserWarning, match="missing feature value"):
        task = Task.from_arrays(X, y, columns=["num", "color"])
    assert task.input_shape == (4,)  # 1 numeric + 3 one-hot
    assert torch.isfinite(task.X_train).all()
    assert abs(float(task.X_train[:, 0].mean())) < 1e-5  # standardised on the train split
    assert set(task.X_train[:, 1:].unique().tolist()) == {0.0, 1.0}
    f = dict(zip(FEATURE_NAMES, task.features(), strict=False))
    assert f["frac_categorical"] == pytest.approx(0.75)
    assert f["frac_missing"] > 0


def test_splits_are_disjoint_stratified_and_seeded():
    X, y = blobs(n=300)
    X = np.hstack([X, np.arange(300)[:, None]])  # a row id to trace rows
    a = Task.from_arrays(X, y, seed=0)
    b = Task.from_arrays(X, y, seed=0)
    c = Task.from_arrays(X, y, seed=1)
    assert torch.equal(a.X_train, b.X_train)
    assert not torch.equal(a.X_train, c.X_train)
    assert (len(a.X_train), len(a.X_val), len(a.X_test)) == (180, 60, 60)
    assert len(torch.unique(a.y_val)) == 3
    ids = [set(np.round(t[:, -1].numpy(), 3)) for t in (a.X_train, a.X_val, a.X_test)]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])


def test_task_type_inference_and_regression_target_standardised():
    X, _ = blobs(n=100)
    reg = Task.from_arrays(X, np.linspace(0, 50, 100) ** 1.5)
    assert reg.task_type == "regression" and reg.n_outputs == 1
    assert abs(float(reg.y_train.mean())) < 1e-5
    clf = Task.from_arrays(X, np.array(["a", "b"] * 50))
    assert clf.task_type == "classification" and clf.classes == ["a", "b"]


# -- CSV ------------------------------------------------------------------------------------------
def test_from_csv(tmp_path):
    X, y = blobs(n=60)
    path = tmp_path / "data.csv"
    lines = ["a,b,c,d,e,city,label"]
    for row, label in zip(X, y, strict=False):
        lines.append(
            ",".join(f"{v:.4f}" for v in row) + f",{'paris' if label else 'rome'},c{label}"
        )
    path.write_text("\n".join(lines) + "\n")
    task = Task.from_csv(path, target="label", epochs=2)
    assert task.name == "data" and task.n_outputs == 3 and task.input_shape == (7,)
    with pytest.raises(TaskError, match=re.escape("no target column 'lable'")) as e:
        Task.from_csv(path, target="lable")
    assert "Did you mean 'label'?" in str(e.value)


def test_from_csv_not_a_csv(tmp_path):
    path = tmp_path / "model.bin"
    path.write_bytes(b"\x00\x01\x02binary")
    with pytest.raises(TaskError, match="is not a CSV file"):
        Task.from_csv(path, target="y")
    with pytest.raises(TaskError, match="cannot read CSV file"):
        Task.from_csv(tmp_path / "absent.csv", target="y")


# -- built-ins, features, fingerprint -------------------------------------------------------------
@pytest.mark.parametrize(
    "name",
    ["iris", "wine", "breast_cancer", "diabetes", "digits_image", "synth_clf_3", "synth_reg_2"],
)
def test_builtin_tasks(name):
    task = builtin(name)
    f = task.features()
    assert f.shape == (len(FEATURE_NAMES),) and f.dtype == np.float32
    assert np.all((f >= -1) & (f <= 1))
    if name == "digits_image":
        assert task.input_shape == (1, 8, 8) and task.input_kind == "image"
        assert f[FEATURE_NAMES.index("model_conv")] == 1.0


def test_builtin_mnist1d_generates_offline(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    task = builtin("mnist1d")
    assert task.input_shape == (1, 40) and task.n_outputs == 10
    assert list(tmp_path.iterdir()) == []  # no pickle written, nothing downloaded


def test_unknown_builtin_and_suite():
    with pytest.raises(TaskError, match=re.escape("unknown built-in task 'digit'")) as e:
        builtin("digit")
    assert "Did you mean 'digits'?" in str(e.value)
    with pytest.raises(TaskError, match=re.escape("unknown task suite 'tabluar'")):
        suite("tabluar")
    assert "synth_clf_N" in available() and "tabular" in suites()


def test_features_are_comparable_and_not_the_name():
    small = builtin("iris").features()
    big = builtin("digits").features()
    i = FEATURE_NAMES.index("log_n_train")
    assert big[i] > small[i]
    renamed = builtin("iris")
    renamed.name = "something else"
    assert np.array_equal(renamed.features(), small)


def test_generated_family_is_reproducible_and_varied():
    a, b = builtin("synth_clf_4"), builtin("synth_clf_4")
    assert torch.equal(a.X_train, b.X_train) and a.fingerprint == b.fingerprint
    shapes = {
        (builtin(f"synth_clf_{i}").input_shape, builtin(f"synth_clf_{i}").n_outputs)
        for i in range(6)
    }
    assert len(shapes) >= 3


def test_fingerprint_depends_on_data_model_and_epochs(iris):
    assert iris.fingerprint == builtin("iris").fingerprint
    assert iris.fingerprint != builtin("iris", model=models.linear).fingerprint
    assert iris.fingerprint != iris.with_epochs(3).fingerprint
    assert iris.fingerprint != builtin("iris", seed=1).fingerprint


def test_list_of_models_and_module_copies():
    X, y = blobs()
    module = nn.Sequential(nn.Linear(5, 3))
    task = Task.from_arrays(X, y, model=[models.make_mlp, module])
    assert [m.name for m in task.models] == ["make_mlp", "Sequential"]
    copy1, copy2 = task.build_model(1), task.build_model(1)
    assert copy1 is not module and torch.equal(copy1[0].weight, copy2[0].weight)


def test_lcbench_mlp_reads_config():
    task = builtin("iris", model=models.lcbench_mlp)
    small = task.build_model(0, {"num_layers": 1, "max_units": 64, "max_dropout": 0.0})
    big = task.build_model(0, {"num_layers": 4, "max_units": 512, "max_dropout": 0.5})
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(big) > count(small)
    assert sum(isinstance(m, nn.Linear) for m in big.modules()) == 5


def test_the_task_type_says_whether_it_was_given_or_inferred_and_why():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 4))
    counts = Task.from_arrays(X, rng.integers(0, 40, size=300))
    assert counts.task_type == "classification"
    assert counts.info["task_type_reason"].startswith(
        "inferred from the target: whole numbers with 40 distinct values (<= 50)"
    )
    assert "task_type=" in counts.info["task_type_reason"]  # says how to choose
    values = Task.from_arrays(X, rng.normal(size=300))
    assert values.task_type == "regression"
    assert "numbers with fractions" in values.info["task_type_reason"]
    given = Task.from_arrays(X, rng.integers(0, 40, size=300), task_type="regression")
    assert given.task_type == "regression" and given.info["task_type_reason"] == "given"
    assert given.metric_name == "r2"
