"""The LCBench surrogate backend: parity with yahpo_gym, the TrialResult contract, caching."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from hporl.backends import LCBenchBackend, LCBenchTask, TrialResult
from hporl.backends.lcbench import OUTPUT_NAMES
from hporl.exceptions import ConfigError
from hporl.space import SearchSpace

DATA_DIR = Path(
    os.environ.get("HPORL_YAHPO_DATA")
    or Path(__file__).resolve().parents[2] / ".." / "shared" / "benchmarks" / "yahpo" / "lcbench"
).resolve()

if not (DATA_DIR / "model.onnx").is_file():
    pytest.skip(
        f"LCBench surrogate data not found at {DATA_DIR} (set HPORL_YAHPO_DATA)",
        allow_module_level=True,
    )
pytest.importorskip("onnxruntime", reason="needs onnxruntime: pip install 'hporl[bench]'")


@pytest.fixture(scope="module")
def backend() -> LCBenchBackend:
    return LCBenchBackend(DATA_DIR)


@pytest.fixture(scope="module")
def default_config() -> dict:
    return SearchSpace.builtin("lcbench").default()


def test_parity_with_yahpo_gym_reference(backend: LCBenchBackend) -> None:
    ref = json.loads((DATA_DIR / "parity_reference.json").read_text())
    assert tuple(ref["output_names"]) == OUTPUT_NAMES
    records = ref["records"]
    assert len(records) >= 600
    configs = [r["config"] for r in records]
    out = backend.predict(
        [c["OpenML_task_id"] for c in configs], configs, [c["epoch"] for c in configs]
    )
    expected = np.array([[r["outputs"][k] for k in OUTPUT_NAMES] for r in records])
    rel = np.abs(out - expected) / np.maximum(np.abs(expected), 1e-12)
    worst = np.unravel_index(int(rel.argmax()), rel.shape)
    assert rel.max() < 1e-3, f"record {worst[0]}, {OUTPUT_NAMES[worst[1]]}: rel {rel.max():.2e}"
    assert {c["OpenML_task_id"] for c in configs} == set(backend.task_ids)


def test_tasks_and_features(backend: LCBenchBackend) -> None:
    tasks = backend.tasks()
    assert len(tasks) == 34 and [t.name for t in tasks] == backend.task_ids
    assert tasks[0].name == "3945" and tasks[0].epochs == 52
    feats = np.stack([t.features() for t in tasks])
    assert feats.dtype == np.float32 and feats.shape[1] == tasks[0].features().shape[0]
    assert np.all((feats >= 0) & (feats <= 1))
    assert len({t.fingerprint for t in tasks}) == 34
    assert isinstance(backend.task("7593"), LCBenchTask)


def test_evaluate_meets_the_contract(backend: LCBenchBackend, default_config: dict) -> None:
    task = backend.task("3945")
    r = backend.evaluate(task, default_config)
    assert isinstance(r, TrialResult) and r.status == "ok" and r.reason is None
    assert r.metric_name == "accuracy" and r.chance_metric == 0.0
    assert r.epochs_done == 52 == len(r.loss_curve) == len(r.train_loss_curve)
    assert all(0.0 <= v <= 1.0 and math.isfinite(v) for v in r.curve)
    assert all(math.isfinite(v) for v in r.loss_curve)
    assert r.final_metric == r.curve[-1]
    assert r.best_metric == max(r.curve) == r.curve[r.best_epoch - 1]
    assert r.test_metric is not None and 0.0 <= r.test_metric <= 1.0
    assert r.wall_time > 0 and not r.stopped_early
    assert r.config == default_config
    assert backend.evaluate(task, default_config).to_dict() == r.to_dict()
    short = backend.evaluate(task, default_config, epochs=10)
    assert short.epochs_done == 10 and short.curve == r.curve[:10]
    assert backend.evaluate(task, default_config, epochs=500).epochs_done == 52


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("learning_rate", 0.5),
        ("batch_size", 8),
        ("num_layers", 2.5),
        ("max_dropout", float("nan")),
        ("momentum", "high"),
        ("optimizer", "adam"),
    ],
)
def test_bad_value_fails_naming_the_key(
    backend: LCBenchBackend, default_config: dict, key: str, value: object
) -> None:
    r = backend.evaluate(backend.task("3945"), {**default_config, key: value})
    assert r.status == "failed" and key in r.reason and r.curve == []


def test_missing_value_fails_naming_the_key(backend: LCBenchBackend, default_config: dict) -> None:
    config = {k: v for k, v in default_config.items() if k != "weight_decay"}
    r = backend.evaluate(backend.task("3945"), config)
    assert r.status == "failed" and "weight_decay" in r.reason


def test_config_without_fixed_params_is_accepted(
    backend: LCBenchBackend, default_config: dict
) -> None:
    config = {k: v for k, v in default_config.items() if k not in ("optimizer", "lr_schedule")}
    assert backend.evaluate(backend.task("3945"), config).ok


def test_on_epoch_stops_early(backend: LCBenchBackend, default_config: dict) -> None:
    seen: list[int] = []

    def stop_at_5(epoch: int, value: float) -> bool:
        seen.append(epoch)
        return epoch == 5

    r = backend.evaluate(backend.task("3945"), default_config, on_epoch=stop_at_5)
    assert r.stopped_early and r.epochs_done == 5 and seen == [1, 2, 3, 4, 5]
    assert r.status == "ok" and r.best_epoch <= 5


def test_evaluate_many_equals_evaluate(backend: LCBenchBackend) -> None:
    space = SearchSpace.builtin("lcbench")
    rng = np.random.default_rng(3)
    configs = [space.sample(rng) for _ in range(7)]
    configs.insert(3, {**configs[0], "momentum": 2.0})
    task = backend.task("167184")
    many = backend.evaluate_many(task, configs, epochs=13)
    one = [backend.evaluate(task, c, epochs=13) for c in configs]
    assert [r.to_dict() for r in many] == [r.to_dict() for r in one]
    assert many[3].status == "failed" and "momentum" in many[3].reason
    finals = backend.final_scores(task, [configs[0], configs[1]], epoch=13)
    assert finals.tolist() == [one[0].final_metric, one[1].final_metric]
    # many tasks in one prediction: the values of one call per task
    tasks = [task, backend.task("3945")]
    for epoch in (13, None):
        on = backend.final_scores_on(tasks, configs[:3], epoch=epoch)
        each = [backend.final_scores(t, configs[:3], epoch=epoch) for t in tasks]
        assert on.shape == (2, 3) and on.tolist() == [e.tolist() for e in each]


def test_normalisation_uses_and_reuses_cache(
    backend: LCBenchBackend, default_config: dict, tmp_path: Path, monkeypatch
) -> None:
    task = backend.task("3945")
    y_min, y_max = backend.normalisation(task, n=500, seed=0, cache_dir=tmp_path)
    files = list(tmp_path.glob("*.json"))
    assert len(files) == 1 and not list(tmp_path.glob("*.tmp"))
    stored = json.loads(files[0].read_text())
    assert stored["task"] == "3945" and stored["n"] == 500 and stored["data_version"]
    assert (stored["y_min"], stored["y_max"]) == (y_min, y_max)
    final = float(backend.final_scores(task, [default_config])[0])
    assert 0.0 <= y_min <= final <= y_max <= 1.0

    def no_predict(*args, **kwargs):
        raise AssertionError("the second call must read the cache")

    monkeypatch.setattr(backend, "predict", no_predict)
    assert backend.normalisation(task, n=500, seed=0, cache_dir=tmp_path) == (y_min, y_max)


def test_missing_data_dir_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        LCBenchBackend(tmp_path)
    message = str(err.value)
    assert str(tmp_path / "model.onnx") in message
    assert "data_dir=" in message and "HPORL_YAHPO_DATA" in message
    assert "encoding.json" in message and "config_space.json" in message


def test_unknown_task_id(backend: LCBenchBackend) -> None:
    with pytest.raises(ConfigError, match=r"unknown LCBench task id '3946'.*'3945'"):
        backend.task("3946")
