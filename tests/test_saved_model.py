"""A saved tuned model predicts on its own: in a new process, without the training data."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import hporl
from hporl import ConfigError, ModelError, Policy, Predictor, Task, TuneOptions, load_model
from hporl.tasks import Preprocessor, models
from hporl.tasks._task import _split
from tests._helpers import run_cli

COLUMNS = ["size", "colour", "weight"]

pytestmark = pytest.mark.filterwarnings("ignore:.*missing feature value")


def _rows(n: int, seed: int) -> np.ndarray:
    """Rows of a table with a numeric, a categorical and a numeric column, a few values missing."""
    rng = np.random.default_rng(seed)
    X = np.empty((n, 3), dtype=object)
    X[:, 0] = rng.normal(size=n).round(3)
    X[:, 1] = rng.choice(["red", "green", "blue"], size=n)
    X[:, 2] = rng.normal(size=n).round(3)
    X[rng.random(n) < 0.05, 0] = None
    X[rng.random(n) < 0.05, 1] = ""
    X[rng.random(n) < 0.05, 2] = np.nan
    return X


def _labels(X: np.ndarray) -> np.ndarray:
    size = np.array([0.0 if v is None else v for v in X[:, 0]], dtype=float)
    return np.where(size + (X[:, 1] == "red") > 0.5, "yes", "no")


def _write_csv(path, X, y=None):
    def cell(v):
        return "" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v)

    header = [*COLUMNS, "y"] if y is not None else COLUMNS
    lines = [",".join(header)]
    for i, row in enumerate(X):
        cells = [cell(v) for v in row] + ([str(y[i])] if y is not None else [])
        lines.append(",".join(cells))
    path.write_text("\n".join(lines) + "\n")
    return path


class _Frame:
    """Just what hporl reads of a pandas DataFrame (pandas is not a dependency)."""

    def __init__(self, columns, values):
        self.columns, self._values = list(columns), np.asarray(values, dtype=object)

    def to_numpy(self, dtype=None):
        return self._values.astype(dtype) if dtype is not None else self._values


def _untrained(task: Task, config=None) -> Predictor:
    torch.manual_seed(0)
    nets = [task.build_model(i, config) for i in range(len(task.models))]
    return Predictor.from_task(task, nets, config or {})


@pytest.fixture(scope="module")
def clf_task():
    X = _rows(150, 0)
    return Task.from_arrays(X, _labels(X), columns=COLUMNS, epochs=2)


def _tuned_and_saved(task, out):
    """Two trials of the packaged policy on ``task``, saved to ``out``."""
    res = hporl.tune_model(
        data=task, policy=Policy.default(), n_trials=2, options=TuneOptions(compare_default=False)
    )
    res.save(out)
    return res, out


@pytest.fixture(scope="module")
def tuned_clf(clf_task, tmp_path_factory):
    return _tuned_and_saved(clf_task, tmp_path_factory.mktemp("tuned_clf"))


@pytest.fixture(scope="module")
def tuned_reg(tmp_path_factory):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(150, 4))
    X[rng.random(X.shape) < 0.03] = np.nan
    y = 50 + 10 * np.nan_to_num(X[:, 0]) - 3 * np.nan_to_num(X[:, 1])
    task = Task.from_arrays(X, y, task_type="regression", epochs=2, model=models.mlp((16,)))
    res, out = _tuned_and_saved(task, tmp_path_factory.mktemp("tuned_reg"))
    return res, task, out


# -- round trips ----------------------------------------------------------------------------
def test_classification_round_trip_on_held_out_rows(clf_task, tuned_clf):
    res, out = tuned_clf
    new = _rows(40, seed=7)
    loaded = load_model(out)
    assert loaded.classes == ["no", "yes"] and loaded.columns == COLUMNS
    assert loaded.config == res.config and loaded.task_type == "classification"
    # The same numbers as the model in memory, from raw rows with missing values.
    proba = loaded.predict_proba(new)
    assert np.array_equal(proba, res.predictor.predict_proba(new))
    with torch.no_grad():
        res.model.eval()
        logits = res.model(torch.from_numpy(clf_task.preprocessor.transform(new)))
    assert np.array_equal(proba, torch.softmax(logits, 1).numpy())
    labels = loaded.predict(new)
    assert set(labels) <= {"yes", "no"}
    assert list(labels) == ["no" if p[0] > p[1] else "yes" for p in proba]
    np.testing.assert_allclose(proba.sum(1), 1.0, rtol=1e-6)
    # One implementation: the preprocessing of new rows is the one that made the test split.
    X = _rows(150, 0)
    codes = np.unique(_labels(X), return_inverse=True)[1]
    _, _, test_idx = _split(150, codes, 0.2, 0.2, 0)
    assert np.array_equal(clf_task.preprocessor.transform(X[test_idx]), clf_task.X_test.numpy())
    # By column name, in any order.
    frame = _Frame(COLUMNS[::-1], new[:, ::-1])
    assert np.array_equal(loaded.predict_proba(frame), proba)


def test_regression_round_trip_in_target_units(tuned_reg):
    res, task, out = tuned_reg
    loaded = load_model(out)
    assert loaded.task_type == "regression" and loaded.classes is None
    assert loaded.factories == [{"factory": "mlp", "kwargs": {"hidden": [16], "dropout": 0.0}}]
    rng = np.random.default_rng(5)
    new = rng.normal(size=(30, 4))
    new[0, 2] = np.nan  # imputed with the train median
    pred = loaded.predict(new)
    assert np.array_equal(pred, res.predictor.predict(new))
    with torch.no_grad():
        res.model.eval()
        z = res.model(torch.from_numpy(task.preprocessor.transform(new))).reshape(-1).double()
    expected = z.numpy() * task.info["y_std"] + task.info["y_mean"]
    np.testing.assert_allclose(pred, expected, rtol=1e-12)
    with pytest.raises(ModelError, match="predict_proba is for classification"):
        loaded.predict_proba(new)


def test_onnx_runs_what_torch_runs(clf_task, tuned_clf, tuned_reg):
    ort = pytest.importorskip("onnxruntime")
    run = lambda path, x: ort.InferenceSession(  # noqa: E731
        str(path), providers=["CPUExecutionProvider"]
    ).run(None, {"x": x})[0]
    _, out = tuned_clf
    meta = json.loads((out / "model.json").read_text())
    if meta["networks"][0]["onnx"] is None:
        pytest.skip(meta["networks"][0]["onnx_note"])
    new = _rows(25, seed=3)
    loaded = load_model(out)
    x = loaded.features(new).numpy()
    np.testing.assert_allclose(run(out / "model.onnx", x), loaded.outputs(new).numpy(), atol=1e-5)
    # A categorical column: the network alone, and model.json says why there is no pipeline.
    assert not (out / "pipeline.onnx").exists()
    assert "'colour'" in meta["networks"][0]["pipeline_note"]
    # All numeric: raw rows (NaN = missing) through preprocessing, network and target scale.
    _, _, out = tuned_reg
    loaded = load_model(out)
    rng = np.random.default_rng(6)
    new = rng.normal(size=(20, 4)).astype(np.float32)
    new[3, 1] = np.nan
    x = loaded.features(new).numpy()
    np.testing.assert_allclose(run(out / "model.onnx", x), loaded.outputs(new).numpy(), atol=1e-5)
    np.testing.assert_allclose(run(out / "pipeline.onnx", new), loaded.predict(new), atol=1e-4)


def test_numeric_classification_pipeline_gives_probabilities(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    rng = np.random.default_rng(2)
    X = rng.normal(size=(60, 3))
    X[4, 1] = np.nan
    task = Task.from_arrays(X, np.where(X[:, 0] > 0, 3, 7), epochs=1)
    _untrained(task).save(tmp_path)
    new = rng.normal(size=(9, 3)).astype(np.float32)
    new[0, 0] = np.nan
    session = ort.InferenceSession(
        str(tmp_path / "pipeline.onnx"), providers=["CPUExecutionProvider"]
    )
    loaded = load_model(tmp_path)
    np.testing.assert_allclose(
        session.run(None, {"x": new})[0], loaded.predict_proba(new), atol=1e-5
    )
    assert loaded.classes == [3, 7] and set(loaded.predict(new)) <= {3, 7}


# -- a new user, new processes ----------------------------------------------------------------
@pytest.mark.slow
def test_tune_a_csv_then_predict_in_a_new_process(tmp_path):
    X = _rows(160, 0)
    csv = _write_csv(tmp_path / "train.csv", X, _labels(X))
    new_csv = _write_csv(tmp_path / "new.csv", _rows(30, seed=9))
    out = tmp_path / "tuned"
    res = hporl.tune_model(
        data=str(csv),
        target="y",
        epochs=2,
        n_trials=2,
        out=out,
        options=TuneOptions(compare_default=False),
    )
    expected = res.predictor.predict_proba(new_csv)
    script = textwrap.dedent(
        f"""
        import json, hporl
        m = hporl.load_model({str(out)!r})
        print(json.dumps({{"labels": m.predict({str(new_csv)!r}).tolist(),
                          "proba": m.predict_proba({str(new_csv)!r}).tolist()}}))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    np.testing.assert_allclose(got["proba"], expected, rtol=0, atol=1e-7)
    assert got["labels"] == res.predictor.predict(new_csv).tolist()
    # The command line, in another process: a CSV of labels and probabilities.
    preds = tmp_path / "preds.csv"
    cmd = [sys.executable, "-m", "hporl.cli", "predict", "--model", out, "--data", new_csv]
    proc = subprocess.run(
        [*map(str, cmd), "--out", str(preds)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    lines = preds.read_text().splitlines()
    assert lines[0] == "prediction,proba_no,proba_yes" and len(lines) == 31
    assert [line.split(",")[0] for line in lines[1:]] == got["labels"]
    np.testing.assert_allclose(
        [[float(v) for v in line.split(",")[1:]] for line in lines[1:]], expected, atol=1e-7
    )


def test_cli_tune_out_then_predict(tmp_path, capsys):
    rng = np.random.default_rng(4)
    X = rng.normal(size=(120, 2))
    y = 3 * X[:, 0] + rng.normal(scale=0.1, size=120)
    csv = tmp_path / "reg.csv"
    csv.write_text(
        "a,b,y\n" + "\n".join(f"{r[0]:.4f},{r[1]:.4f},{t:.4f}" for r, t in zip(X, y, strict=True))
    )
    new = tmp_path / "new.csv"
    new.write_text("b,a\n0.5,1.0\n,-1.0\n")  # any column order; a missing value
    out = tmp_path / "tuned"
    args = ("--data", csv, "--target", "y", "--trials", "2", "--epochs", "2", "--out", out)
    code, text, err = run_cli("tune", *args, capsys=capsys)
    assert code in (0, None), err
    assert "hporl predict --model" in text
    assert {"model.json", "model.safetensors", "model.pt", "report.json"} <= {
        p.name for p in out.iterdir()
    }
    code, text, err = run_cli("predict", "--model", out, "--data", new, capsys=capsys)
    assert code in (0, None), err
    lines = text.strip().splitlines()
    assert lines[0] == "prediction" and len(lines) == 3
    np.testing.assert_allclose([float(v) for v in lines[1:]], load_model(out).predict(new))


# -- refusals ----------------------------------------------------------------------------------
def test_rows_with_missing_or_extra_columns_are_refused(clf_task, tmp_path, capsys):
    _untrained(clf_task).save(tmp_path / "m")
    m = load_model(tmp_path / "m")
    new = _rows(5, seed=1)
    takes = "the model takes 'size', 'colour', 'weight'"
    cases = [
        (
            _Frame(["size", "weight"], new[:, [0, 2]]),
            f"the input does not have the model's columns: missing column(s) 'colour'; {takes}",
        ),
        (
            _Frame([*COLUMNS, "y"], np.column_stack([new, ["a"] * 5])),
            f"the input does not have the model's columns: unexpected column(s) 'y' (drop them); {takes}",
        ),
        (
            _Frame(["size", "color", "weight"], new),
            "the input does not have the model's columns: missing column(s) 'colour'; "
            f"unexpected column(s) 'color' (drop them); {takes}",
        ),
        (
            new[:, :2],
            "the input has 2 columns; the model takes 3, in this order: 'size', 'colour', 'weight'",
        ),
    ]
    for X, message in cases:
        with pytest.raises(ConfigError, match=re.escape(message)):
            m.predict(X)
    X = _rows(5, seed=2)
    bad = _write_csv(tmp_path / "with_target.csv", X, _labels(X))
    code, _, err = run_cli("predict", "--model", tmp_path / "m", "--data", bad, capsys=capsys)
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("hporl: error: the input does not have the model's columns: ")
    assert "unexpected column(s) 'y'" in err


def test_a_numeric_column_with_text_is_refused(clf_task):
    new = _rows(4, seed=1)
    new[2, 0] = "big"
    with pytest.raises(
        hporl.TaskError, match=re.escape("'size' is numeric but row 2 holds text ('big')")
    ):
        _untrained(clf_task).predict(new)


def test_edited_files_are_refused(clf_task, tmp_path):
    onnx = importlib.util.find_spec("onnx") is not None
    saved = tmp_path / "m"
    _untrained(clf_task).save(saved)
    original = {p.name: p.read_bytes() for p in saved.iterdir()}

    def restore():
        for name, data in original.items():
            (saved / name).write_bytes(data)

    meta = json.loads(original["model.json"])
    meta["classes"] = ["yes", "no"]  # swapped labels would silently invert every prediction
    (saved / "model.json").write_text(json.dumps(meta))
    with pytest.raises(
        ModelError, match=re.escape("was edited by hand: its checksum does not match")
    ):
        load_model(saved)
    restore()
    edits = ["model.safetensors", *(["model.onnx"] if onnx else [])]
    for name in edits:
        data = bytearray(original[name])
        data[-5] ^= 0xFF
        (saved / name).write_bytes(bytes(data))
        message = (
            f"{saved / name} is corrupted or was changed: its sha256 does not match model.json"
        )
        with pytest.raises(ModelError, match=re.escape(message)):
            load_model(saved)
        restore()
    (saved / "model.safetensors").unlink()
    with pytest.raises(
        ModelError, match=re.escape(f"{saved} is incomplete: model.safetensors is missing")
    ):
        load_model(saved)
    restore()
    assert load_model(saved).predict(_rows(3, 1)).shape == (3,)


def test_a_directory_that_is_not_a_saved_model(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    old = tmp_path / "old"
    old.mkdir()
    torch.save({}, old / "model.pt")
    cases = [
        (tmp_path / "empty", f"{tmp_path / 'empty'} is not a saved model: model.json is missing"),
        (tmp_path / "absent", f"{tmp_path / 'absent'} is not a saved model: no such directory"),
        (old, f"{old} holds model.pt but no model.json: it was saved by an older hporl"),
    ]
    for directory, message in cases:
        with pytest.raises(ModelError, match=re.escape(message)):
            load_model(directory)
    (tmp_path / "empty" / "model.json").write_text("{not json")
    with pytest.raises(ModelError, match=re.escape("model.json is not valid JSON")):
        load_model(tmp_path / "empty")
    data = tmp_path / "new.csv"
    data.write_text("a\n1\n")
    code, _, err = run_cli("predict", "--model", old, "--data", data, capsys=capsys)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"hporl: error: {old} holds model.pt but no model.json")


# -- models JSON cannot describe, several models ------------------------------------------------
def test_a_user_model_needs_its_factory_at_load(tmp_path):
    def my_net(input_shape, n_outputs):
        return torch.nn.Sequential(
            torch.nn.Linear(input_shape[0], 7), torch.nn.Tanh(), torch.nn.Linear(7, n_outputs)
        )

    X = _rows(60, 0)
    task = Task.from_arrays(X, _labels(X), columns=COLUMNS, model=my_net, epochs=1)
    p = _untrained(task)
    p.save(tmp_path)
    meta = json.loads((tmp_path / "model.json").read_text())
    assert meta["networks"][0]["factory"] is None and meta["networks"][0]["name"] == "my_net"
    with pytest.raises(ModelError, match=re.escape("network 'my_net' in")) as err:
        load_model(tmp_path)
    assert "pass the factory or module it was tuned with, load_model(dir, model=...)" in str(
        err.value
    )
    new = _rows(6, 3)
    assert np.array_equal(
        load_model(tmp_path, model=my_net).predict_proba(new), p.predict_proba(new)
    )
    with pytest.raises(ModelError, match="do not fit network 'my_net'"):
        load_model(tmp_path, model=models.make_mlp)


def test_several_networks_need_an_index(tmp_path):
    X = _rows(60, 0)
    task = Task.from_arrays(
        X, _labels(X), columns=COLUMNS, model=[models.make_mlp, models.linear], epochs=1
    )
    p = _untrained(task)
    p.save(tmp_path, onnx=False)
    assert {"model_0.safetensors", "model_1.safetensors"} <= {f.name for f in tmp_path.iterdir()}
    with pytest.raises(
        ModelError,
        match=re.escape(
            "the model holds 2 networks (0 make_mlp, 1 linear); choose one with load_model(..., index=I)"
        ),
    ):
        load_model(tmp_path).predict(X)
    new = _rows(5, 2)
    for i in (0, 1):
        p.index = i
        assert np.array_equal(
            load_model(tmp_path, index=i).predict_proba(new), p.predict_proba(new)
        )


# -- the preprocessing -------------------------------------------------------------------------------
def test_preprocessor_round_trips_through_json():
    X = _rows(80, 0)
    prep = Preprocessor.fit(X, COLUMNS)
    again = Preprocessor.from_dict(json.loads(json.dumps(prep.to_dict())))
    new = _rows(20, 4)
    new[0, 1] = "purple"  # a category not seen in training: all zeros
    assert np.array_equal(again.transform(new), prep.transform(new))
    assert prep.feature_names == ["size", "weight", "colour=blue", "colour=green", "colour=red"]
    assert prep.transform(new)[0, 2:].tolist() == [0.0, 0.0, 0.0]
    images = np.random.default_rng(0).normal(size=(10, 2, 4, 4))
    prep = Preprocessor.fit(images)
    again = Preprocessor.from_dict(json.loads(json.dumps(prep.to_dict())))
    assert np.array_equal(again.transform(images), prep.transform(images))
    with pytest.raises(
        ConfigError, match=re.escape("samples of shape (2, 4); the model takes (2, 4, 4)")
    ):
        prep.transform(images[:, :, 0])


def test_an_image_model_and_its_pipeline(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.normal(loc=3.0, size=(40, 2, 8, 8))
    task = Task.from_arrays(images, rng.integers(0, 3, 40), epochs=1)
    p = _untrained(task)
    p.save(tmp_path)
    loaded = load_model(tmp_path)
    new = rng.normal(loc=3.0, size=(5, 2, 8, 8)).astype(np.float32)
    assert loaded.factories == [{"factory": "make_cnn", "kwargs": {}}]
    assert np.array_equal(loaded.predict_proba(new), p.predict_proba(new))
    with pytest.raises(ConfigError, match=re.escape("the model takes (2, 8, 8)")):
        loaded.predict(new[:, :1])
    ort = pytest.importorskip("onnxruntime")
    if not (tmp_path / "pipeline.onnx").exists():
        pytest.skip("onnx is not installed")
    session = ort.InferenceSession(
        str(tmp_path / "pipeline.onnx"), providers=["CPUExecutionProvider"]
    )
    np.testing.assert_allclose(
        session.run(None, {"x": new})[0], loaded.predict_proba(new), atol=1e-5
    )


def test_a_pandas_dataframe_by_column_name(clf_task):
    pd = pytest.importorskip("pandas")
    p = _untrained(clf_task)
    new = _rows(8, 5)
    frame = pd.DataFrame(new[:, ::-1], columns=COLUMNS[::-1])
    assert np.array_equal(p.predict_proba(frame), p.predict_proba(new))
