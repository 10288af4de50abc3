from __future__ import annotations

import json
import re

import numpy as np
import optuna
import pytest

from hporl import ConfigError
from hporl.bench import (
    METHODS,
    BenchConfig,
    TransferCandidates,
    make_sampler,
    normalised_regret,
    ranks,
    run,
)
from hporl.bench._report import summarise
from hporl.space import config_key
from tests._helpers import LCBENCH, needs_lcbench


def test_normalised_regret_and_ranks_on_hand_made_numbers():
    assert normalised_regret(0.9, 0.5, 1.0) == pytest.approx(0.2)
    assert normalised_regret(1.0, 0.5, 1.0) == 0.0
    assert normalised_regret(0.5, 0.5, 1.0) == 1.0
    assert ranks({"a": 0.1, "b": 0.3, "c": 0.1, "d": 0.0}) == {
        "d": 1.0,
        "a": 2.5,
        "c": 2.5,
        "b": 4.0,
    }


def test_summary_means_standard_errors_and_ranks():
    config = BenchConfig.load(
        {
            "benchmark": "small",
            "test_tasks": ["wine"],
            "methods": ["random", "tpe"],
            "budgets": [1, 2],
            "seeds": 2,
        }
    )
    records = []
    regrets = {
        ("random", 0): [0.5, 0.2],
        ("random", 1): [0.3, 0.3],
        ("tpe", 0): [0.4, 0.1],
        ("tpe", 1): [0.3, 0.0],
    }
    for (method, seed), values in regrets.items():
        for k, v in enumerate(values, start=1):
            records.append(
                {
                    "method": method,
                    "task": "wine",
                    "seed": seed,
                    "trial": k,
                    "regret": v,
                    "propose_seconds": 0.001 * k,
                }
            )
    s = summarise(records, config, train_tasks=[], test_tasks=["wine"])
    assert s["methods"]["random"]["regret"] == {"1": pytest.approx(0.4), "2": pytest.approx(0.25)}
    assert s["methods"]["tpe"]["regret"]["2"] == pytest.approx(0.05)
    assert s["methods"]["random"]["regret_se"]["1"] == pytest.approx(
        np.std([0.5, 0.3], ddof=1) / np.sqrt(2)
    )
    assert s["methods"]["tpe"]["rank"]["1"] == pytest.approx(
        1.25
    )  # 1 on seed 0, a tie (1.5) on seed 1
    assert s["methods"]["random"]["propose_seconds_median"] == pytest.approx(0.0015)


def test_runner_refuses_overlapping_splits_and_bad_keys():
    with pytest.raises(
        ConfigError, match=re.escape("tasks in both train_tasks and test_tasks: iris")
    ):
        BenchConfig.load(
            {"benchmark": "small", "train_tasks": ["iris", "wine"], "test_tasks": ["iris"]}
        )
    with pytest.raises(
        ConfigError, match=re.escape("unknown key 'budget'. Did you mean 'budgets'?")
    ):
        BenchConfig.load({"benchmark": "small", "test_tasks": ["iris"], "budget": [1]})
    with pytest.raises(ConfigError, match="need train_tasks"):
        BenchConfig.load({"benchmark": "small", "test_tasks": ["iris"], "methods": ["portfolio"]})
    with pytest.raises(ConfigError, match="unknown benchmark 'tabluar'"):
        run(
            {"benchmark": "tabluar", "test_tasks": ["iris"], "methods": ["random"]},
            out="/tmp/hporl-never",
        )


@pytest.mark.parametrize("method", [m for m in METHODS if m != "policy"])
def test_each_baseline_runs_as_an_optuna_sampler(method, small_space):
    rng = np.random.default_rng(0)
    configs = [small_space.sample(rng) for _ in range(6)]
    regret = rng.random((3, 6))
    transfer = TransferCandidates(configs, regret, values=1 - regret)
    sampler = make_sampler(method, space=small_space, seed=0, n_trials=4, transfer=transfer)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    seen = []
    for _ in range(4):
        trial = study.ask()
        config = small_space.suggest(trial)
        seen.append(config)
        study.tell(trial, float(np.log10(config["lr"])))
    assert len(study.trials) == 4
    if method == "best_average":
        assert seen == [configs[i] for i in np.argsort(regret.mean(0), kind="stable")[:4]]
    if method in ("portfolio", "transfer_gp"):
        assert seen[0] == configs[int(np.argmin(regret.mean(0)))]
    if method == "transfer_gp":  # candidates only, never one twice
        assert len({config_key(c) for c in seen}) == 4 and all(c in configs for c in seen)


def test_transfer_candidates_use_meta_train_tasks_only():
    regret = np.array([[0.0, 0.5, 1.0], [1.0, 0.5, 0.0]])
    t = TransferCandidates([{"i": 0}, {"i": 1}, {"i": 2}], regret)
    assert t.best_average(3)[0] == {"i": 0} and t.best_average(3)[1] == {
        "i": 1
    }  # ties broken by order
    assert t.portfolio(2) == [{"i": 0}, {"i": 2}]


def test_bench_on_real_training_writes_all_files(tmp_path):
    config = {
        "benchmark": "small",
        "train_tasks": ["iris"],
        "test_tasks": ["wine"],
        "methods": list(METHODS),
        "budgets": [1, 2],
        "seeds": 1,
        "epochs": 1,
        "normalisation_samples": 3,
        "transfer_candidates": 3,
        "policy": {
            "agent": {"total_timesteps": 32, "params": {"n_steps": 32, "batch_size": 16}},
            "pretrain": {"candidates": 3, "epochs": 5},
            "budget": 2,
        },
    }
    summary = run(config, out=tmp_path)
    for name in ("results.json", "summary.json", "report.md", "plots/regret.png", "plots/rank.png"):
        assert (tmp_path / name).exists(), name
    results = json.loads((tmp_path / "results.json").read_text())
    assert len(results) == len(METHODS) * 2
    keys = {
        "method",
        "task",
        "seed",
        "trial",
        "score",
        "best_so_far",
        "regret",
        "propose_seconds",
        "config",
    }
    assert keys <= set(results[0])
    assert set(summary["methods"]) == set(METHODS)
    assert set(summary["methods"]["random"]) >= {
        "regret",
        "regret_se",
        "rank",
        "propose_seconds_median",
    }
    assert summary["train_tasks"] == ["iris"] and summary["test_tasks"] == ["wine"]
    # the policy was meta-trained on the train task only
    meta = json.loads((tmp_path / "policy_fold0" / "policy" / "policy.json").read_text())
    assert meta["training_tasks"] == ["iris"]
    assert all(r["regret"] is None or r["regret"] >= 0 for r in results)


def test_folds_keep_test_tasks_out_of_training(tmp_path):
    from hporl.bench._runner import _folds

    config = BenchConfig.load(
        {"benchmark": "small", "folds": 2, "methods": ["random"], "test_tasks": []}
    )
    folds = _folds(config, ["a", "b", "c", "d", "e"])
    assert len(folds) == 2
    assert sorted(t for _, te in folds for t in te) == ["a", "b", "c", "d", "e"]
    for train, test in folds:
        assert not set(train) & set(test)


@pytest.mark.slow
@needs_lcbench
def test_hporl_bench_on_a_tiny_lcbench_config(tmp_path):
    import subprocess
    import sys

    bench = tmp_path / "bench.yaml"
    bench.write_text(
        f"benchmark: lcbench\ndata_dir: {LCBENCH}\ntrain_tasks: ['3945', '7593']\ntest_tasks: ['34539', '167152']\n"
        "methods: [policy, random, tpe, gp, cmaes, best_average, portfolio, transfer_gp]\nbudgets: [1, 2]\nseeds: 1\n"
        "normalisation_samples: 200\ntransfer_candidates: 20\n"
        "policy: {budget: 2, after: 1, pretrain: {candidates: 10, epochs: 5}, agent: "
        "{total_timesteps: 64, params: {n_steps: 32, batch_size: 16}}}\n"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "hporl.cli", "bench", str(bench), "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=600,
        env={**__import__("os").environ, "HPORL_CACHE_DIR": str(tmp_path)},
    )
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "out"
    for name in ("results.json", "summary.json", "report.md", "plots/regret.png", "plots/rank.png"):
        assert (out / name).exists(), name
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["methods"]) == set(METHODS)
    assert summary["test_tasks"] == ["167152", "34539"] and summary["seeds"] == 1
    for m in summary["methods"].values():
        assert set(m["regret"]) == {"1", "2"}
        assert all(0 <= v <= 1.0 for v in m["regret"].values())
    records = json.loads((out / "results.json").read_text())
    assert len(records) == len(METHODS) * 2 * 2
    assert {r["task"] for r in records} == {"34539", "167152"}
    policy = json.loads((out / "policy_fold0" / "policy" / "policy.json").read_text())
    assert sorted(policy["training_tasks"]) == ["3945", "7593"]


@needs_lcbench
def test_lcbench_transfer_never_sees_test_tasks(tmp_path):
    from hporl.bench._runner import _Bench

    config = BenchConfig.load(
        {
            "benchmark": "lcbench",
            "data_dir": str(LCBENCH),
            "train_tasks": ["3945"],
            "test_tasks": ["7593"],
            "methods": ["portfolio"],
            "transfer_candidates": 5,
        }
    )
    bench = _Bench(config, tmp_path)
    seen = []
    original = bench.backend.final_scores_on

    def spy(tasks, configs, **kw):  # tasks, or (normalisation, when not cached) their ids
        seen.extend(str(getattr(task, "name", task)) for task in tasks)
        return original(tasks, configs, **kw)

    bench.backend.final_scores_on = spy
    bench.transfer_candidates(config.train_tasks)
    assert set(seen) == {"3945"}


@pytest.mark.slow
def test_bench_with_parallel_trials_on_a_local_pool(tmp_path):
    config = {
        "benchmark": "small",
        "test_tasks": ["wine"],
        "methods": ["random", "tpe"],
        "budgets": [2, 4],
        "seeds": 1,
        "epochs": 1,
        "normalisation_samples": 3,
        "parallel": 2,
    }
    run(config, out=tmp_path)
    results = json.loads((tmp_path / "results.json").read_text())
    trials = [r for r in results if "trial" in r]
    assert len(trials) == 8 and {r["method"] for r in trials} == {"random", "tpe"}
    for method in ("random", "tpe"):  # a batch never holds the same configuration twice
        configs = [json.dumps(r["config"], sort_keys=True) for r in trials if r["method"] == method]
        assert len(set(configs)) == 4
    url = f"sqlite:///{tmp_path / 'trials.db'}"
    study = optuna.load_study(study_name="bench/wine", storage=url)
    stored = {json.dumps(t.user_attrs["hporl_config"], sort_keys=True) for t in study.trials}
    ran = {json.dumps(r["config"], sort_keys=True) for r in trials}
    assert ran <= stored  # every evaluation recorded, by the pool's workers too
