"""`hporl bench` on any YAHPO Gym scenario: ``benchmark: yahpo/<scenario>`` (lcbench an alias)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from hporl import ConfigError
from hporl.bench import BenchConfig, run
from hporl.bench._runner import _feature_names, yahpo_scenario
from tests._helpers import RPART, needs_rpart, run_cli
from tests._helpers import RPART_TINY as TINY


def test_benchmark_names() -> None:
    assert yahpo_scenario("yahpo/rbv2_rpart") == "rbv2_rpart"
    assert yahpo_scenario("lcbench") == yahpo_scenario("yahpo/lcbench") == "lcbench"
    assert yahpo_scenario("tabular") is yahpo_scenario("yahpo/") is None
    assert _feature_names("yahpo/rbv2_rpart") == []  # no metadata known: zero task features
    assert _feature_names("lcbench") == _feature_names("yahpo/lcbench") != []


def test_surrogate_checks_hold_for_any_scenario() -> None:
    base = {"benchmark": "yahpo/rbv2_rpart", "test_tasks": ["1040"], "methods": ["random"]}
    with pytest.raises(
        ConfigError, match=re.escape("the rbv2_rpart surrogate knows only the rbv2_rpart space")
    ):
        BenchConfig.load({**base, "space": "optimizer"})
    BenchConfig.load({**base, "space": "rbv2_rpart"})
    with pytest.raises(ConfigError, match="final_training needs real training"):
        BenchConfig.load({**base, "final_training": True})
    with pytest.raises(ConfigError, match="'target' chooses a YAHPO surrogate's output"):
        BenchConfig.load({**base, "benchmark": "small", "target": "acc"})


@needs_rpart
def test_bad_scenario_target_and_task_are_named(tmp_path: Path) -> None:
    base = {**TINY, "methods": ["random"]}
    with pytest.raises(ConfigError, match=r"unknown target 'accuracy'.*acc, bac"):
        run({**base, "target": "accuracy"}, out=tmp_path)
    with pytest.raises(ConfigError, match=r"unknown yahpo/rbv2_rpart task ids: 1057"):
        run({**base, "test_tasks": ["1057"]}, out=tmp_path)
    with pytest.raises(ConfigError, match=r"rbv2_rpart surrogate file missing: .*model\.onnx"):
        run({**base, "data_dir": str(tmp_path)}, out=tmp_path / "out")
    with pytest.raises(ConfigError, match="rbv2_rprt"):
        run({**base, "benchmark": "yahpo/rbv2_rprt", "data_dir": None}, out=tmp_path)


@needs_rpart
def test_hporl_bench_on_a_tiny_rbv2_rpart_config(tmp_path: Path, capsys) -> None:
    bench = tmp_path / "bench.yaml"
    bench.write_text(json.dumps(TINY))  # JSON is YAML
    code, _, err = run_cli("bench", bench, "--out", tmp_path / "out", capsys=capsys)
    assert code == 0, err
    out = tmp_path / "out"
    for name in ("results.json", "summary.json", "report.md", "plots/regret.png"):
        assert (out / name).exists(), name
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["methods"]) == set(TINY["methods"])
    assert summary["test_tasks"] == ["1056", "1063"]
    for m in summary["methods"].values():
        assert set(m["regret"]) == {"1", "3"} and all(0 <= v <= 1 for v in m["regret"].values())
    records = json.loads((out / "results.json").read_text())
    assert len(records) == 3 * 2 * 3 and {r["status"] for r in records} == {"ok"}
    assert set(records[0]["config"]) == {"cp", "maxdepth", "minbucket", "minsplit"}
    assert "yahpo/rbv2_rpart" in (out / "report.md").read_text()


@needs_rpart
def test_bench_with_a_minimised_target(tmp_path: Path) -> None:
    summary = run({**TINY, "methods": ["random"], "target": "logloss"}, out=tmp_path)
    regret = summary["methods"]["random"]["regret"]
    assert regret["3"] <= regret["1"] <= 1
    records = json.loads((tmp_path / "results.json").read_text())
    assert all(r["score"] < 0 for r in records)  # -logloss: higher is better


def test_example_split_covers_the_scenario() -> None:
    example = Path(__file__).resolve().parents[2] / "examples" / "bench_rbv2_rpart.yaml"
    config = BenchConfig.load(example)
    assert config.scenario == "rbv2_rpart" and config.seeds == 3
    assert (len(config.train_tasks), len(config.test_tasks)) == (80, 37)
    if (RPART / "model.onnx").is_file():
        from hporl.backends import YahpoBackend

        tasks = YahpoBackend("rbv2_rpart", data_dir=RPART).task_ids
        assert sorted(config.train_tasks + config.test_tasks) == sorted(tasks)


@needs_rpart
def test_named_policies_are_methods_beside_the_default_one(tmp_path: Path) -> None:
    # the default recipe and an old one (layout version 1, flat MLP) side by side, each
    # meta-trained on the fold's train tasks
    tiny_agent = {"total_timesteps": 256, "n_envs": 4, "params": {"n_steps": 32}}
    config = {
        **TINY,
        "methods": ["policy", "policy_v1", "portfolio"],
        "policy": {"agent": tiny_agent, "pretrain": {"candidates": 30, "epochs": 5}, "after": 1},
        "policies": {
            "policy_v1": {
                "layout_version": 1,
                "history": 3,
                "agent": {**tiny_agent, "extractor": "mlp"},
                "pretrain": {"candidates": 30, "epochs": 5},
                "then": "gp",
            }
        },
    }
    summary = run(config, out=tmp_path)
    assert {"policy", "policy_v1", "portfolio"} <= set(summary["methods"])
    old = json.loads((tmp_path / "policy_policy_v1_fold0" / "policy" / "policy.json").read_text())
    new = json.loads((tmp_path / "policy_fold0" / "policy" / "policy.json").read_text())
    assert old["layout"]["version"] == 1 and "extractor" not in old["policy_kwargs"]
    assert new["layout"]["version"] == 2 and new["policy_kwargs"]["extractor"]["name"] == "history"
    with pytest.raises(ConfigError, match="policy 'random' has the name of a built-in method"):
        BenchConfig.load({**config, "policies": {"random": {}}})


@needs_rpart
@pytest.mark.parametrize("unit", ["trials", "epochs"])
def test_the_default_policy_method_on_a_surrogate_is_transfer_gp_and_trains_nothing(
    tmp_path: Path, unit: str
) -> None:
    """With train tasks on a surrogate, ``policy: {}`` is transfer GP from the first trial (its
    refined first proposal beat the policy's on held-out tasks), with budgets in trials or in
    epochs: no policy is meta-trained, and it proposes what the ``transfer_gp`` method
    proposes, each trial trained fully."""
    config = {**TINY, "methods": ["policy", "transfer_gp"], "budget_unit": unit}
    summary = run(config, out=tmp_path)
    assert set(summary["methods"]) == {"policy", "transfer_gp"}
    assert not list(tmp_path.glob("policy*_fold*"))
    records = json.loads((tmp_path / "results.json").read_text())
    runs = {
        m: [(r["task"], r["config"]) for r in records if r["method"] == m]
        for m in ("policy", "transfer_gp")
    }
    assert runs["policy"] == runs["transfer_gp"] and len(runs["policy"]) == 2 * 3
    if unit == "epochs":
        assert all(r["epochs"] == r["full_epochs"] and r["status"] == "ok" for r in records)
