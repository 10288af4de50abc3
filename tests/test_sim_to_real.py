"""A policy meta-trained on the LCBench surrogate tunes real training of LCBench's MLP: it reads
a real task through the feature set its feature names name."""

from __future__ import annotations

import json
import math
import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from hporl import Policy, PolicyError, SearchSpace, TuneOptions, tune_model
from hporl.backends import LCBenchTask
from hporl.observation import ObservationLayout
from hporl.tasks import (
    FEATURE_NAMES,
    SIZE_FEATURE_NAMES,
    builtin,
    feature_sets,
    models,
    register_feature_set,
    size_features,
    task_size_features,
)
from tests._helpers import accuracy_on_test_split

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = Path(
    os.environ.get("HPORL_YAHPO_DATA")
    or ROOT / ".." / "shared" / "benchmarks" / "yahpo" / "lcbench"
).resolve()


def test_size_features_of_a_real_task_match_the_lcbench_formula():
    task = builtin("moons", seed=0)
    rows = len(task.X_train) + len(task.X_val) + len(task.X_test)
    expected = [math.log10(rows) / 7, math.log10(2) / 4, math.log2(2) / 7]
    assert np.allclose(task_size_features(task), expected)
    assert np.allclose(size_features(10**9, 10**6, 1000), [1.0, 1.0, 1.0])  # clipped
    with pytest.raises(PolicyError, match="an LCBench policy tunes classification tasks"):
        task_size_features(builtin("diabetes"))


def _untrained_policy(feature_names, n_features=3):
    layout = ObservationLayout(
        SearchSpace.builtin("lcbench"), n_features=n_features, budget=2, n_bins=4
    )
    kwargs = {"net_arch": [8], "activation": "tanh"}
    network = Policy._new_network("maskable_ppo", kwargs, layout)
    return Policy(
        network,
        algorithm="maskable_ppo",
        policy_kwargs=kwargs,
        layout=layout,
        feature_names=feature_names,
    )


def test_an_lcbench_policy_reads_a_real_task_by_its_size(tmp_path):
    _untrained_policy(SIZE_FEATURE_NAMES).save(tmp_path)
    policy = Policy.load(tmp_path)
    task = builtin("moons", seed=0)
    assert np.array_equal(policy.task_features(task), task_size_features(task))
    config = policy.suggest(task)
    assert SearchSpace.builtin("lcbench").validate(config) == config
    # a simulated LCBench task gives its own size features, from OpenML's figures
    sim = LCBenchTask("3945")
    assert np.array_equal(policy.task_features(sim), sim.features())
    with pytest.raises(PolicyError, match="an LCBench policy tunes classification tasks"):
        policy.task_features(builtin("diabetes"))


def test_an_hporl_policy_reads_a_real_task_by_its_meta_features():
    policy = _untrained_policy(list(FEATURE_NAMES), n_features=len(FEATURE_NAMES))
    task = builtin("moons", seed=0)
    assert np.array_equal(policy.task_features(task), task.features())


def test_an_unknown_feature_set_is_refused_for_a_real_task():
    policy = _untrained_policy(["rows", "columns", "classes"])
    msg = (
        "the policy reads task features ['rows', 'columns', 'classes'], which no feature set "
        "computes for a Task (known: 'hporl', 'size'); register them with "
        "hporl.tasks.register_feature_set, or pass the feature vector instead"
    )
    with pytest.raises(PolicyError, match=re.escape(msg)):
        policy.task_features(builtin("moons", seed=0))
    assert policy.task_features([0.1, 0.2, 0.3]).shape == (3,)  # a feature vector is read as is


def test_a_registered_feature_set_is_computed_for_a_real_task(monkeypatch):
    registry = "hporl.tasks._features._REGISTRY"
    monkeypatch.setattr(registry, {s.names: s for s in feature_sets()})
    register_feature_set("shape", ["rows", "columns", "classes"], lambda t: [len(t.X_train), 2, 2])
    policy = _untrained_policy(["rows", "columns", "classes"])
    task = builtin("moons", seed=0)
    assert policy.task_features(task).tolist() == [len(task.X_train), 2, 2]


@pytest.mark.slow
@pytest.mark.skipif(not (DATA_DIR / "model.onnx").is_file(), reason="LCBench data not found")
def test_lcbench_policy_tunes_real_training(tmp_path):
    pytest.importorskip("onnxruntime")
    sys.path.insert(0, str(ROOT / "scripts"))
    import train_lcbench_policy

    train_lcbench_policy.main(["--quick", "--out", str(tmp_path / "policy")])
    policy = Policy.load(tmp_path / "policy", space=SearchSpace.builtin("lcbench"))
    assert policy.feature_names == SIZE_FEATURE_NAMES
    assert json.loads((tmp_path / "policy" / "TRAINING.json").read_text())["space"] == "lcbench"
    task = builtin("moons", epochs=2, model=models.lcbench_mlp)
    result = tune_model(
        data=task, policy=policy, n_trials=2, options=TuneOptions(compare_default=False)
    )
    assert len(result.trials) == 2 and all(t["status"] == "ok" for t in result.trials)
    # the first trial is the policy's proposal from the task's size features
    assert result.trials[0]["config"] == policy.suggest(task)
    best = max(result.trials, key=lambda t: t["best_val_metric"])
    assert (
        result.config == best["config"] == SearchSpace.builtin("lcbench").validate(best["config"])
    )
    # the funnel MLP was built with the tuned configuration and scores what is reported
    hidden = [m for m in result.model.modules() if isinstance(m, torch.nn.Linear)][:-1]
    assert len(hidden) == result.config["num_layers"]
    assert hidden[0].out_features == result.config["max_units"]
    assert 0.0 <= result.test_metric <= 1.0
    assert result.test_metric == pytest.approx(accuracy_on_test_split(result.model, task))
