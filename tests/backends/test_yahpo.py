"""The YAHPO Gym reader: parity with yahpo_gym on two scenarios, the scenario's space (conditions,
constants, fidelities), targets, the TrialResult contract, errors and caching."""

from __future__ import annotations

import json
import math
import os
import pickle
import re
from pathlib import Path

import numpy as np
import pytest

from hporl.backends import LCBenchTask, TrialResult, YahpoBackend, YahpoTask
from hporl.backends.yahpo import REQUIRED_FILES, scenarios
from hporl.exceptions import ConfigError

SCENARIOS = ("lcbench", "rbv2_rpart")
_CANDIDATES = [
    Path(p).resolve()
    for p in (
        os.environ.get("HPORL_YAHPO_DATA", ""),
        Path(__file__).resolve().parents[2] / ".." / "shared" / "benchmarks" / "yahpo",
    )
    if p
]
ROOT = next(
    (p for p in _CANDIDATES if all((p / s / "model.onnx").is_file() for s in SCENARIOS)),
    _CANDIDATES[-1],
)

if not all((ROOT / s / "model.onnx").is_file() for s in SCENARIOS):
    pytest.skip(
        f"YAHPO data (lcbench, rbv2_rpart) not found under {ROOT} (set HPORL_YAHPO_DATA to "
        "the folder of scenario folders)",
        allow_module_level=True,
    )
pytest.importorskip("onnxruntime", reason="needs onnxruntime: pip install 'hporl[bench]'")


@pytest.fixture(scope="module")
def rpart() -> YahpoBackend:
    return YahpoBackend("rbv2_rpart", data_dir=ROOT / "rbv2_rpart")


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_parity_with_yahpo_gym_reference(scenario: str) -> None:
    backend = YahpoBackend(scenario, data_dir=ROOT / scenario)
    ref = json.loads((ROOT / scenario / "parity_reference.json").read_text())
    records = ref["records"]
    assert len(records) >= 600
    configs = [r["config"] for r in records]
    instance = ref.get("instance_param", "OpenML_task_id")
    out = backend.predict(
        [c[instance] for c in configs], configs, [c.get("epoch", 1) for c in configs]
    )
    expected = np.array([[r["outputs"][k] for k in backend.targets] for r in records])
    err = np.abs(out - expected)
    rel = err / np.maximum(np.abs(expected), 1e-12)
    bad = ~((rel < 1e-3) | (err < 2e-3))
    assert not bad.any(), (
        f"{bad.sum()} outputs off, e.g. record {np.argwhere(bad)[0][0]}: "
        f"rel {rel[bad].max():.2e}, abs {err[bad].max():.2e}"
    )
    assert {str(c[instance]) for c in configs} <= set(backend.task_ids)


def test_rbv2_rpart_space_and_fixed_inputs(rpart: YahpoBackend) -> None:
    space = rpart.space
    assert space.names == ["cp", "maxdepth", "minbucket", "minsplit"]
    cp = space["cp"]
    assert cp.kind == "float" and cp.log and cp.low == pytest.approx(9.118819655545162e-4)
    assert cp.high == 1.0 and cp.default == 0.01
    assert [space[n].kind for n in ("maxdepth", "minbucket", "minsplit")] == ["int"] * 3
    assert (space["maxdepth"].low, space["maxdepth"].high) == (1, 30)
    assert len(rpart.task_ids) == 117 and rpart.max_epoch == 1
    # fidelities at the top of their range, the imputation fixed as YAHPO's experiments fix it
    assert rpart.fixed_fidelities == {"trainsize": 1.0, "repl": 10}
    config = space.sample(np.random.default_rng(0))
    explicit = {**config, "trainsize": 1.0, "repl": 10, "num.impute.selected.cpo": "impute.mean"}
    other = {**config, "trainsize": 0.1, "repl": 1, "num.impute.selected.cpo": "impute.hist"}
    ids = ["1040"] * 3
    out = rpart.predict(ids, [config, explicit, other])
    assert out[0].tolist() == out[1].tolist() != out[2].tolist()


def test_evaluate_meets_the_contract(rpart: YahpoBackend) -> None:
    task = rpart.task("1040")
    assert isinstance(task, YahpoTask) and task.epochs == 1
    assert task.features().shape == (0,)  # nothing is known of rbv2 tasks without their data
    config = rpart.space.default()
    r = rpart.evaluate(task, config)
    assert isinstance(r, TrialResult) and r.status == "ok" and r.reason is None
    assert r.metric_name == "accuracy" == task.metric_name and r.chance_metric == 0.0
    assert r.epochs_done == 1 == len(r.loss_curve) == len(r.train_loss_curve)
    assert 0.0 <= r.final_metric <= 1.0 and r.best_epoch == 1 and r.test_metric is None
    assert r.loss_curve[0] > 0 and math.isfinite(r.loss_curve[0])  # logloss
    assert r.wall_time > 0 and r.config == config
    assert rpart.evaluate(task, config, epochs=30).epochs_done == 1
    assert rpart.final_scores(task, [config]).tolist() == [r.final_metric]


@pytest.mark.parametrize(
    ("key", "value"), [("cp", 2.0), ("maxdepth", 2.5), ("minsplit", "many"), ("cp", math.nan)]
)
def test_bad_value_fails_naming_the_key(rpart: YahpoBackend, key: str, value: object) -> None:
    r = rpart.evaluate(rpart.task("1040"), {**rpart.space.default(), key: value})
    assert r.status == "failed" and key in r.reason and r.curve == []


def test_evaluate_many_equals_evaluate(rpart: YahpoBackend) -> None:
    rng = np.random.default_rng(3)
    configs = [rpart.space.sample(rng) for _ in range(7)]
    configs.insert(2, {k: v for k, v in configs[0].items() if k != "minbucket"})
    task = rpart.task("1049")
    many = rpart.evaluate_many(task, configs)
    assert [r.to_dict() for r in many] == [rpart.evaluate(task, c).to_dict() for c in configs]
    assert many[2].status == "failed" and "minbucket" in many[2].reason


def test_a_minimised_target_is_negated(rpart: YahpoBackend) -> None:
    logloss = YahpoBackend("rbv2_rpart", data_dir=ROOT / "rbv2_rpart", target="logloss")
    assert rpart.target == rpart.default_target == "acc"
    task, config = logloss.task("1040"), logloss.space.default()
    raw = logloss.predict(["1040"], [config])[0, logloss.targets.index("logloss")]
    r = logloss.evaluate(task, config)
    assert r.metric_name == "neg_logloss" and r.final_metric == pytest.approx(-float(raw))
    assert task.fingerprint != rpart.task("1040").fingerprint  # another target, another cache
    lo, hi = logloss.normalisation(task, n=50)
    assert lo < hi <= 0


def test_unknown_target_names_the_targets() -> None:
    with pytest.raises(ConfigError, match=r"unknown target 'loglos'.*: acc, bac, .*'logloss'"):
        YahpoBackend("rbv2_rpart", data_dir=ROOT / "rbv2_rpart", target="loglos")


def test_lcbench_is_an_instance_of_the_reader() -> None:
    backend = YahpoBackend("lcbench", data_dir=ROOT / "lcbench")
    task = backend.task("3945")
    assert isinstance(task, LCBenchTask) and task.features().shape == (3,)
    assert backend.space.name == "lcbench" and task.epochs == backend.max_epoch == 52
    assert backend.target == "val_accuracy" and backend.feature_names[0].startswith("log10")
    r = backend.evaluate(task, backend.space.default(), epochs=5)
    assert r.epochs_done == 5 and 0.0 <= r.test_metric <= 1.0


def test_unknown_scenario_and_missing_folder(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HPORL_YAHPO_DATA", str(ROOT))
    assert {"lcbench", "rbv2_rpart"} <= set(scenarios())
    with pytest.raises(ConfigError, match=r"unknown YAHPO scenario 'rbv2_rprt'.*rbv2_rpart"):
        YahpoBackend("rbv2_rprt")
    with pytest.raises(ConfigError) as err:
        YahpoBackend("rbv2_rpart", data_dir=tmp_path)
    message = str(err.value)
    assert str(tmp_path / "model.onnx") in message and "data_dir=" in message
    assert all(name in message for name in REQUIRED_FILES)
    # the folder of scenario folders, and a scenario folder as the first argument, work too
    assert YahpoBackend("rbv2_rpart", data_dir=ROOT).data_dir == (ROOT / "rbv2_rpart")
    assert YahpoBackend(ROOT / "rbv2_rpart").scenario == "rbv2_rpart"
    with pytest.raises(ConfigError, match=re.escape("unknown rbv2_rpart task id '104'")):
        YahpoBackend("rbv2_rpart").task("104")


def test_environment_variable_may_name_the_scenario_folder(monkeypatch) -> None:
    monkeypatch.setenv("HPORL_YAHPO_DATA", str(ROOT / "rbv2_rpart"))
    assert YahpoBackend("rbv2_rpart").data_dir == ROOT / "rbv2_rpart"
    with pytest.raises(ConfigError, match="rbv2_svm"):
        YahpoBackend("rbv2_svm")


def test_pickles_without_its_session(rpart: YahpoBackend) -> None:
    rpart.final_scores("1040", [rpart.space.default()])  # the session exists now
    copy = pickle.loads(pickle.dumps(rpart))
    assert copy._session is None
    config = rpart.space.default()
    assert copy.evaluate("1040", config).to_dict() == rpart.evaluate("1040", config).to_dict()


def test_normalisation_is_cached_per_scenario(rpart: YahpoBackend, tmp_path: Path, monkeypatch):
    norm = rpart.normalisation("1040", n=100, cache_dir=tmp_path)
    (path,) = tmp_path.glob("*.json")
    stored = json.loads(path.read_text())
    assert stored["scenario"] == "rbv2_rpart" and stored["task"] == "1040"
    assert (stored["y_min"], stored["y_max"]) == norm and 0 <= norm[0] < norm[1] <= 1

    def no_predict(*args, **kwargs):
        raise AssertionError("the second call must read the cache")

    monkeypatch.setattr(rpart, "predict", no_predict)
    assert rpart.normalisation("1040", n=100, cache_dir=tmp_path) == norm


# -- a fabricated scenario: conditions, constants and an epoch fidelity ---------------------------
FAKE_SPACE = {
    "hyperparameters": [
        {"name": "task_id", "type": "categorical", "choices": ["7", "9"], "default": "7"},
        {"name": "epoch", "type": "uniform_int", "lower": 1, "upper": 4, "default": 2},
        {"name": "kernel", "type": "categorical", "choices": ["linear", "radial", "poly"]},
        {"name": "gamma", "type": "uniform_float", "lower": 1e-3, "upper": 10.0, "log": True},
        {"name": "degree", "type": "uniform_int", "lower": 2, "upper": 5},
        {"name": "shrink", "type": "categorical", "choices": ["yes", "no"]},
        {"name": "width", "type": "uniform_int", "lower": 1, "upper": 8},
        {"name": "fixed_opt", "type": "constant", "value": "on"},
        {"name": "tail", "type": "uniform_float", "lower": 0.0, "upper": 1.0},
        {"name": "mode", "type": "categorical", "choices": ["a", "b"]},
        {"name": "rate", "type": "uniform_float", "lower": 0.0, "upper": 1.0},
    ],
    "conditions": [
        {"child": "gamma", "parent": "kernel", "type": "IN", "values": ["radial", "poly"]},
        {"child": "degree", "parent": "kernel", "type": "EQ", "value": "poly"},
        {"child": "shrink", "parent": "kernel", "type": "NEQ", "value": "linear"},
        {"child": "tail", "parent": "fixed_opt", "type": "EQ", "value": "off"},
        {
            "child": "mode",
            "type": "AND",
            "conditions": [
                {"child": "mode", "parent": "fixed_opt", "type": "EQ", "value": "off"},
                {"child": "mode", "parent": "kernel", "type": "IN", "values": ["linear", "poly"]},
            ],
        },
        {"child": "rate", "parent": "mode", "type": "EQ", "value": "a"},
    ],
    "forbiddens": [],
}
FAKE_ENCODING = {
    "task_id": {"#na#": 0, "7": 1, "9": 2},
    "kernel": {"#na#": 0, "linear": 1, "poly": 2, "radial": 3},
    "shrink": {"#na#": 0, "no": 1, "yes": 2},
    "fixed_opt": {"#na#": 0, "on": 1},
    "mode": {"#na#": 0, "a": 1, "b": 2},
}
FAKE_REFERENCE = {
    "scenario": "fake_svm",
    "input_layout": {
        "cat_names": ["task_id", "kernel", "shrink", "fixed_opt", "mode"],
        "cont_names": ["gamma", "degree", "width", "tail", "rate", "epoch"],
    },
    "instance_param": "task_id",
    "fidelity_params": ["epoch"],
    "targets": ["auc", "timetrain", "mystery"],
    "records": [],
}


@pytest.fixture
def fake(tmp_path: Path, monkeypatch) -> tuple[YahpoBackend, list]:
    folder = tmp_path / "fake_svm"
    folder.mkdir()
    (folder / "config_space.json").write_text(json.dumps(FAKE_SPACE))
    (folder / "encoding.json").write_text(json.dumps(FAKE_ENCODING))
    (folder / "parity_reference.json").write_text(json.dumps(FAKE_REFERENCE))
    (folder / "model.onnx").write_bytes(b"")  # never loaded: the inputs are caught below
    backend = YahpoBackend(folder)
    fed: list = []

    def run(x_cat, x_cont):
        fed.append((x_cat, x_cont))
        return np.tile(np.array([[0.75, 3.0, 1.0]], dtype=np.float32), (len(x_cat), 1))

    monkeypatch.setattr(backend, "_run", run)
    return backend, fed


def test_conditions_constants_and_inactive_inputs(fake) -> None:
    backend, fed = fake
    space = backend.space
    assert backend.scenario == "fake_svm" and backend.max_epoch == 4
    # the constant and the parameters it switches off (tail, mode; rate through mode) are none
    assert space.names == ["kernel", "gamma", "degree", "shrink", "width"]
    assert space["gamma"].when == (("kernel", ("radial", "poly")),)
    assert space["degree"].when == (("kernel", ("poly",)),)
    assert space["shrink"].when == (("kernel", ("radial", "poly")),)
    linear = {"kernel": "linear", "width": 3}
    poly = {"kernel": "poly", "gamma": 0.5, "degree": 3, "shrink": "no", "width": 2}
    assert space.validate(linear) == linear and space.validate(poly) == poly
    backend.predict(["7", "9"], [linear, poly], [2, 9])
    x_cat, x_cont = fed[-1]
    assert x_cat.dtype == np.int32 and x_cont.dtype == np.float32
    # task, kernel, shrink (#na# when inactive), the constant, mode (never active)
    assert x_cat.tolist() == [[1, 1, 0, 1, 0], [2, 2, 1, 1, 0]]
    # gamma, degree (0 when inactive), width, tail and rate (never active), epoch (in 1..4)
    assert x_cont.tolist() == [[0, 0, 3, 0, 0, 2], [0.5, 3, 2, 0, 0, 4]]
    r = backend.evaluate("7", linear)
    assert r.ok and r.epochs_done == 4 and r.metric_name == "auc" and r.chance_metric == 0.5
    assert r.loss_curve == [-0.75] * 4 and r.wall_time == 3.0
    missing = backend.evaluate("7", {"kernel": "radial", "shrink": "yes", "width": 1})
    assert missing.status == "failed" and "gamma" in missing.reason
    with pytest.raises(ConfigError, match=r"'mystery'.*whether higher or lower.*auc, timetrain"):
        YahpoBackend(backend.data_dir, target="mystery")


def test_fixed_fidelities_can_be_chosen() -> None:
    with pytest.raises(ConfigError, match=r"fidelities: 'x' is not a fixed fidelity.*trainsize"):
        YahpoBackend("rbv2_rpart", data_dir=ROOT / "rbv2_rpart", fidelities={"repl": 1, "x": 2})
    with pytest.raises(ConfigError, match=r"fidelities: .*'repl'.*outside"):
        YahpoBackend("rbv2_rpart", data_dir=ROOT / "rbv2_rpart", fidelities={"repl": 11})
    small = YahpoBackend("rbv2_rpart", data_dir=ROOT / "rbv2_rpart", fidelities={"trainsize": 0.1})
    full = YahpoBackend("rbv2_rpart", data_dir=ROOT / "rbv2_rpart")
    assert small.fixed_fidelities == {"trainsize": 0.1, "repl": 10}
    assert small.task("1040").fingerprint != full.task("1040").fingerprint
    config = full.space.default()
    assert small.final_scores("1040", [config]) != full.final_scores("1040", [config])
