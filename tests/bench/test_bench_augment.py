"""`hporl bench` with a space of its own, fixed configurations as methods and final training."""

from __future__ import annotations

import json
import re

import pytest

from hporl import ConfigError, TaskError
from hporl.bench import BenchConfig, run

FIXED = {
    "none": {"augment": "none"},
    "trivialaugment": {"augment": "trivialaugment"},
    "randaugment": {"augment": "randaugment", "randaugment_n": 2, "randaugment_m": 9},
}


def test_augmentation_bench_with_final_training(tmp_path):
    config = {
        "benchmark": "images",
        "space": "autoaugment",
        "test_tasks": ["digits_image"],
        "methods": ["none", "trivialaugment", "randaugment", "random"],
        "fixed": FIXED,
        "budgets": [1, 2],
        "seeds": 1,
        "epochs": 1,
        "normalisation_samples": 2,
        "final_training": True,
    }
    summary = run(config, out=tmp_path)
    finals = json.loads((tmp_path / "finals.json").read_text())
    assert [f["method"] for f in finals] == config["methods"]
    for f in finals:
        assert f["test_metric"] is not None and 0.0 <= f["test_metric"] <= 1.0
        assert f["final_epochs"] == 1
    by_method = {f["method"]: f for f in finals}
    assert by_method["randaugment"]["config"] == FIXED["randaugment"]
    assert set(summary["final_test"]) == set(config["methods"])
    assert summary["final_test"]["none"]["per_task"] == {
        "digits_image": by_method["none"]["test_metric"]
    }
    results = json.loads((tmp_path / "results.json").read_text())
    assert [r["config"] for r in results if r["method"] == "trivialaugment"] == [
        FIXED["trivialaugment"]
    ] * 2
    report = (tmp_path / "report.md").read_text()
    assert "## Test metric of the final model (K=2)" in report
    assert "| randaugment | randaugment 1 | randaugment 2 |" in report


def test_bench_config_errors_for_methods_and_spaces(tmp_path):
    base = {"benchmark": "images", "test_tasks": ["digits_image"], "space": "autoaugment"}
    with pytest.raises(
        ConfigError,
        match=re.escape(
            "bench config: unknown method 'nne'; methods: policy, random, tpe, gp, cmaes, "
            "best_average, portfolio, transfer_gp, none. Did you mean 'none'?"
        ),
    ):
        BenchConfig.load(base | {"methods": ["nne"], "fixed": {"none": {"augment": "none"}}})
    with pytest.raises(
        ConfigError,
        match=re.escape(
            "bench config: fixed configuration 'random' has the name of a built-in method"
        ),
    ):
        BenchConfig.load(base | {"methods": ["random"], "fixed": {"random": {}}})
    with pytest.raises(
        ConfigError,
        match=re.escape(
            "fixed configuration 'ra': parameter 'randaugment_m': value 99 is outside [0, 30]"
        ),
    ):
        run(
            base
            | {
                "methods": ["ra"],
                "fixed": {
                    "ra": {"augment": "randaugment", "randaugment_n": 2, "randaugment_m": 99}
                },
            },
            out=tmp_path / "a",
        )
    with pytest.raises(
        ConfigError, match=re.escape("space 'autoaugmnt' is neither a built-in space")
    ):
        run(base | {"space": "autoaugmnt", "methods": ["random"]}, out=tmp_path / "b")
    with pytest.raises(
        TaskError,
        match=re.escape("needs an image task (inputs of shape (C, H, W)); task 'iris' has tabular"),
    ):
        run(
            {
                "benchmark": "small",
                "test_tasks": ["iris"],
                "space": ["optimizer", "autoaugment"],
                "methods": ["random"],
            },
            out=tmp_path / "c",
        )
    with pytest.raises(ConfigError, match="the lcbench surrogate knows only the lcbench space"):
        BenchConfig.load({"benchmark": "lcbench", "test_tasks": ["3945"], "space": "autoaugment"})
