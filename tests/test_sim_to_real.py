"""A policy meta-trained on the LCBench surrogate tunes real training of LCBench's MLP."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from hporl import Policy, PolicyError, SearchSpace, tune_model
from hporl.backends.lcbench import SIZE_FEATURE_NAMES, size_features, task_size_features
from hporl.tasks import builtin, models

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
    result = tune_model(
        data=builtin("moons", epochs=2, model=models.lcbench_mlp),
        policy=policy,
        n_trials=2,
        compare_default=False,
    )
    assert len(result.trials) == 2 and result.test_metric is not None
    assert set(result.config) >= {"learning_rate", "num_layers", "max_units", "max_dropout"}
