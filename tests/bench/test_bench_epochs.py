"""`hporl bench` with ``budget_unit: epochs``: regret against epochs spent, pruned peers."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from hporl import ConfigError
from hporl.bench import PRUNED_METHODS, BenchConfig, run
from hporl.bench._report import _epoch_curves
from hporl.bench._samplers import split_method
from tests._helpers import LCBENCH, LCBENCH_BENCH, needs_lcbench

BASE = {"benchmark": "lcbench", "test_tasks": ["34539"], "budgets": [1, 3]}


def test_pruned_methods_need_epoch_budgets():
    BenchConfig.load({**BASE, "methods": list(PRUNED_METHODS), "budget_unit": "epochs"})
    with pytest.raises(
        ConfigError,
        match=re.escape("method 'tpe+asha' prunes trials: it needs budget_unit: epochs"),
    ):
        BenchConfig.load({**BASE, "methods": ["tpe+asha"]})
    with pytest.raises(ConfigError, match="parallel must be 1, got 2"):
        BenchConfig.load(
            {**BASE, "benchmark": "small", "methods": ["random+hyperband"], "parallel": 2}
            | {"budget_unit": "epochs"}
        )
    with pytest.raises(ConfigError, match=r"unknown method 'tpe\+ash'.*Did you mean 'tpe\+asha'"):
        BenchConfig.load({**BASE, "methods": ["tpe+ash"], "budget_unit": "epochs"})
    with pytest.raises(ConfigError, match="budget_unit"):
        BenchConfig.load({**BASE, "methods": ["random"], "budget_unit": "epoch"})
    assert split_method("tpe+asha") == ("tpe", "asha")
    assert split_method("random+median") == ("random", "median")
    assert split_method("portfolio+asha") == ("portfolio+asha", None)


def _row(trial, cost, spent, regret, status="ok"):
    return {
        "method": "m",
        "task": "t",
        "seed": 0,
        "trial": trial,
        "regret": regret,
        "epochs": cost,
        "epochs_spent": spent,
        "full_epochs": 10,
        "status": status,
    }


def test_regret_at_an_epoch_budget_counts_the_trials_that_fit_in_it():
    rows = [
        _row(1, 10, 10, 0.5),
        _row(2, 1, 11, 0.5, "pruned"),  # found nothing: the best so far stays
        _row(3, 10, 21, 0.2),
        _row(4, 10, 31, 0.1),
    ]
    curves = _epoch_curves(rows, [0.5, 1, 2, 2.1, 3, 3.1])
    assert curves["m"][("t", 0)] == [1.0, 0.5, 0.5, 0.2, 0.2, 0.1]


@needs_lcbench
def test_lcbench_in_epoch_budgets(tmp_path):
    methods = ["random", "tpe", "random+hyperband", "tpe+asha"]
    summary = run(
        {
            "benchmark": "lcbench",
            "data_dir": str(LCBENCH),
            "test_tasks": ["34539", "167152"],
            "methods": methods,
            "budgets": [1, 3, 10],
            "budget_unit": "epochs",
            "seeds": 1,
            "normalisation_samples": 200,
        },
        out=tmp_path,
    )
    assert summary["budget_unit"] == "epochs"
    for name in ("results.json", "summary.json", "report.md", "plots/regret.png"):
        assert (tmp_path / name).exists(), name
    report = (tmp_path / "report.md").read_text()
    assert "| method | B=1 | B=3 | B=10 |" in report and "epochs per trial" in report
    m = summary["methods"]
    for method in methods:
        regret = [m[method]["regret"][b] for b in ("1", "3", "10")]
        assert regret == sorted(regret, reverse=True) and 0 <= regret[-1] <= 1
    # Full fidelity: every trial costs LCBench's 52 epochs, ten of them in B = 10.
    assert m["random"]["epochs_per_trial"] == m["tpe"]["epochs_per_trial"] == 52
    assert m["random"]["trials_per_run"] == 10 and m["random"]["pruned_fraction"] == 0
    # The pruners stop most trials early: more trials for the same epochs.
    for method in ("random+hyperband", "tpe+asha"):
        assert m[method]["epochs_per_trial"] < 26 and m[method]["pruned_fraction"] > 0.5
        assert m[method]["trials_per_run"] > 20
    records = json.loads((tmp_path / "results.json").read_text())
    for r in records:
        if r["status"] == "pruned":
            assert r["score"] is None and 1 <= r["epochs"] < 52 and r["value"] is not None
        else:
            assert r["epochs"] == 52 and r["score"] == pytest.approx(r["value"])
    runs = {(r["method"], r["task"]) for r in records}
    for method, task in runs:
        rows = sorted(
            (r for r in records if (r["method"], r["task"]) == (method, task)),
            key=lambda r: r["trial"],
        )
        spent = [r["epochs_spent"] for r in rows]
        assert spent == [sum(r["epochs"] for r in rows[: i + 1]) for i in range(len(rows))]
        assert spent[-2] < 10 * 52 <= spent[-1]  # trials until the largest budget is spent


def test_real_training_in_epoch_budgets_reports_the_training_seconds(tmp_path):
    summary = run(
        {
            "benchmark": "small",
            "test_tasks": ["wine"],
            "methods": ["random", "random+hyperband"],
            "budgets": [1, 2],
            "budget_unit": "epochs",
            "seeds": 1,
            "epochs": 3,
            "normalisation_samples": 3,
        },
        out=tmp_path,
    )
    records = json.loads((tmp_path / "results.json").read_text())
    assert all(r["seconds"] > 0 for r in records)
    for method in ("random", "random+hyperband"):
        rows = [r for r in records if r["method"] == method]
        seconds = summary["methods"][method]["train_seconds_per_run"]
        assert seconds == pytest.approx(sum(r["seconds"] for r in rows))  # one run
    assert "training s per run |" in (tmp_path / "report.md").read_text()


@needs_lcbench
def test_a_hyperband_run_is_the_same_run_twice(tmp_path):
    """optuna's Hyperband draws a trial's bracket from a hash of the study's name: an unnamed
    study (a random name) made two runs of the same bench differ."""
    config = {
        **LCBENCH_BENCH,
        "test_tasks": ["34539"],
        "methods": ["random+hyperband"],
        "budgets": [1, 10],
        "budget_unit": "epochs",
        "seeds": 1,
        "normalisation_samples": 50,
    }
    runs = []
    for out in ("a", "b"):
        run(config, out=tmp_path / out)
        rows = json.loads((tmp_path / out / "results.json").read_text())
        runs.append([(r["config"], r["epochs"], r["status"]) for r in rows])
    assert runs[0] == runs[1]


@pytest.mark.parametrize(
    ("settings", "extra", "message"),
    [
        ({"pruner": "mediam"}, {}, r"policies.p.pruner must be one of median, asha, hyperband"),
        ({"pruner": "median"}, {"budget_unit": "trials"}, r"policies.p.pruner .*budget_unit"),
        ({"pruner": "asha", "budget_unit": "epochs"}, {}, r"a budget-aware policy chooses"),
    ],
)
def test_bad_policy_pruners_are_named(settings, extra, message):
    config = {**BASE, "budget_unit": "epochs", "train_tasks": ["3945"], "methods": ["p"]}
    with pytest.raises(ConfigError, match=message):
        BenchConfig.load({**config, "policies": {"p": settings}, **extra})


@needs_lcbench
def test_a_policy_method_with_a_pruner_stops_trials_and_spends_fewer_epochs(tmp_path):
    tiny = {
        "budget": 3,
        "pretrain": {"candidates": 20, "epochs": 5},
        "agent": {"total_timesteps": 128, "params": {"n_steps": 64, "batch_size": 32}},
    }
    config = {
        **LCBENCH_BENCH,
        "train_tasks": ["3945", "7593"],
        "test_tasks": ["34539"],
        "budgets": [1, 6],
        "budget_unit": "epochs",
        "seeds": 1,
        "normalisation_samples": 100,
        "transfer_candidates": 20,
    }
    run({**config, "methods": ["policy"], "policy": tiny}, out=tmp_path / "a")
    path = str(tmp_path / "a" / "policy_fold0")
    policies = {"pruned": {"path": path, "pruner": "asha", "then": None}}
    summary = run({**config, "methods": ["pruned"], "policies": policies}, out=tmp_path / "b")
    rows = json.loads((tmp_path / "b" / "results.json").read_text())
    assert any(r["status"] == "pruned" and r["epochs"] < 52 for r in rows)
    assert summary["methods"]["pruned"]["trials_per_run"] > 6  # more trials for the epochs
    assert rows[-1]["epochs_spent"] <= 6 * 52 + 52


TRANSFER_EPOCHS = {
    **LCBENCH_BENCH,
    "train_tasks": ["3945", "7593", "126025", "126026", "146212", "167104"],
    "test_tasks": ["34539"],
    "budgets": [1, 3, 5],
    "budget_unit": "epochs",
    "seeds": 1,
    "normalisation_samples": 200,
    "transfer_candidates": 300,
}


@needs_lcbench
def test_budget_aware_transfer_gp_stops_trials_at_rungs_and_reads_them(tmp_path):
    """``policy: {}`` on a surrogate with budgets in epochs is budget-aware transfer GP: after
    its first two trials, each trial stops at a rung unless it is likely enough to beat the best
    complete one; a stopped trial is partial (no score) and costs the epochs up to its rung, a
    trial that goes on costs a full training. ``rungs: false`` trains every trial fully, as the
    ``transfer_gp`` method does; ``per_cost`` chooses by expected improvement per expected
    epochs once trials can stop, so it proposes differently from then on."""
    rungs = {"at": [0.25, 0.5], "chance": 0.9, "after": 2}
    config = {
        **TRANSFER_EPOCHS,
        "methods": ["policy", "full", "transfer_gp", "per_cost"],
        "policy": {"rungs": rungs},
        "policies": {"full": {"rungs": False}, "per_cost": {"rungs": rungs | {"per_cost": True}}},
    }
    summary = run(config, out=tmp_path)
    records = json.loads((tmp_path / "results.json").read_text())
    rows = {
        m: sorted((r for r in records if r["method"] == m), key=lambda r: r["trial"])
        for m in config["methods"]
    }
    aware = rows["policy"]
    assert [r["epochs"] for r in aware[:2]] == [52, 52]  # the portfolio stage trains fully
    partial = [r for r in aware if r["status"] == "partial"]
    assert partial and all(r["epochs"] in (13, 26) and r["score"] is None for r in partial)
    assert all(r["fidelity"] == r["epochs"] / 52 for r in aware)
    assert all(r["epochs"] == 52 and r["score"] is not None for r in aware if r not in partial)
    spent = [r["epochs_spent"] for r in aware]
    assert spent == list(np.cumsum([r["epochs"] for r in aware]))
    assert spent[-2] < 5 * 52 <= spent[-1]
    assert len(aware) > len(rows["transfer_gp"])  # the epochs it saved went into more trials
    assert summary["methods"]["policy"]["pruned_fraction"] > 0
    # the same first trials; without rungs, the transfer_gp method's run
    assert [r["config"] for r in aware[:2]] == [r["config"] for r in rows["transfer_gp"][:2]]
    assert [r["config"] for r in rows["full"]] == [r["config"] for r in rows["transfer_gp"]]
    assert all(r["epochs"] == 52 for r in rows["full"])
    per_cost = rows["per_cost"]
    assert [r["config"] for r in per_cost[:2]] == [r["config"] for r in aware[:2]]
    assert [r["config"] for r in per_cost[2:]] != [r["config"] for r in aware[2:]]
    assert per_cost[-2]["epochs_spent"] < 5 * 52 <= per_cost[-1]["epochs_spent"]


@needs_lcbench
def test_freeze_thaw_trains_a_stopped_trial_on_and_costs_the_epochs_left(tmp_path):
    """``rungs: {resume: true}``: a trial stopped at a rung may later be trained on to the end
    (:meth:`Rungs.resumed`); its row continues the stopped one's, costs the epochs left and
    scores the full training, and the run's epochs add up."""
    config = {
        **TRANSFER_EPOCHS,
        "methods": ["policy"],
        "policy": {"rungs": {"at": [0.25, 0.5], "chance": 0.9, "after": 2, "resume": True}},
    }
    run(config, out=tmp_path)
    rows = sorted(json.loads((tmp_path / "results.json").read_text()), key=lambda r: r["trial"])
    by_trial = {r["trial"]: r for r in rows}
    resumed = [r for r in rows if r.get("continues") is not None]
    assert resumed
    for r in resumed:
        before = by_trial[r["continues"]]
        assert before["status"] == "partial" and before["trial"] < r["trial"]
        assert r["config"] == before["config"] and r["score"] is not None
        assert r["epochs"] == 52 - before["epochs"] and r["fidelity"] == 1.0
    assert len({r["continues"] for r in resumed}) == len(resumed)  # each resumed once
    spent = [r["epochs_spent"] for r in rows]
    assert spent == list(np.cumsum([r["epochs"] for r in rows]))
    assert spent[-2] < 5 * 52 <= spent[-1]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            {"budget_unit": "trials"},
            r"policy.rungs: budget-aware transfer GP .* budget_unit: epochs",
        ),
        ({"policy_path": "somewhere"}, r"policy.rungs: budget-aware transfer GP"),
        ({"policy": {"rungs": True, "pruner": "asha"}}, r"rungs and policy.pruner both stop"),
        ({"policy": {"rungs": {"at": [0.5, 0.25]}}}, r"policy.rungs at must be increasing"),
        ({"policy": {"rungs": "half"}}, r"policy.rungs must be true, false or a mapping"),
    ],
)
def test_bad_rungs_are_named(extra, message):
    config = {**TRANSFER_EPOCHS, "methods": ["policy"], "policy": {"rungs": True}}
    with pytest.raises(ConfigError, match=message):
        BenchConfig.load({**config, **extra})
    BenchConfig.load(config)
