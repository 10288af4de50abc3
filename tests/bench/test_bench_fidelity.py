"""`hporl bench` with a budget-aware policy (``policy.budget_unit: epochs``) on LCBench."""

from __future__ import annotations

import json

import pytest

from hporl import ConfigError
from hporl.backends.lcbench import LCBenchBackend
from hporl.bench import run
from hporl.observation import FIDELITIES
from tests._helpers import LCBENCH, LCBENCH_BENCH, needs_lcbench

TINY = {
    "budget": 3,
    "pretrain": {"candidates": 10, "epochs": 5},
    "agent": {"total_timesteps": 128, "params": {"n_steps": 64, "batch_size": 32}},
}


@needs_lcbench
def test_a_budget_aware_policy_needs_epoch_budgets(tmp_path):
    with pytest.raises(ConfigError, match="needs the bench's budget_unit: epochs"):
        run(
            {
                "benchmark": "lcbench",
                "data_dir": str(LCBENCH),
                "train_tasks": ["3945"],
                "test_tasks": ["34539"],
                "methods": ["policy"],
                "budgets": [1],
                "seeds": 1,
                "normalisation_samples": 50,
                "policy": {**TINY, "budget_unit": "epochs"},
            },
            out=tmp_path,
        )


@needs_lcbench
def test_lcbench_bench_with_a_budget_aware_policy(tmp_path):
    summary = run(
        {
            "benchmark": "lcbench",
            "data_dir": str(LCBENCH),
            "train_tasks": ["3945", "7593"],
            "test_tasks": ["34539"],
            "methods": ["policy", "full", "aware", "random+hyperband"],
            "budgets": [1, 3],
            "budget_unit": "epochs",
            "seeds": 1,
            "normalisation_samples": 200,
            "transfer_candidates": 20,
            "policy": TINY,
            # Sampled decisions are not needed: an untrained head still has to spend epochs.
            "policies": {
                "aware": {**TINY, "budget_unit": "epochs", "pretrain": None},
                "full": {**TINY, "probe": False},
            },
        },
        out=tmp_path,
    )
    m = summary["methods"]
    assert set(m) == {"policy", "full", "aware", "random+hyperband"}
    for b in ("1", "3"):
        assert 0 <= m["aware"]["regret"][b] <= 1
    assert "aware" in (tmp_path / "report.md").read_text()
    meta = json.loads((tmp_path / "policy_aware_fold0" / "policy" / "policy.json").read_text())
    assert meta["layout"]["fidelities"] == list(FIDELITIES)
    records = json.loads((tmp_path / "results.json").read_text())
    rows = sorted((r for r in records if r["method"] == "aware"), key=lambda r: r["trial"])
    assert rows and rows[-1]["epochs_spent"] <= 3 * 52
    assert [r["epochs_spent"] for r in rows] == [
        sum(r["epochs"] for r in rows[: i + 1]) for i in range(len(rows))
    ]
    for r in rows:
        assert r["fidelity"] in FIDELITIES and r["seconds"] >= 0
        if r["continues"] is None:
            assert r["epochs"] == round(r["fidelity"] * 52)
        else:  # the surrogate resumes: a continuation costs the extra epochs only
            before = rows[r["continues"] - 1]
            assert before["config"] == r["config"] and before["fidelity"] < r["fidelity"]
            assert r["epochs"] == round(r["fidelity"] * 52) - round(before["fidelity"] * 52)
        # only a full-fidelity trial scores (what a run found), as a pruned one
        assert (r["score"] is not None) == (r["fidelity"] == 1.0 and r["status"] == "ok")
    # The full-fidelity policy's proposals are probed (the default Probe): the first trains
    # fully, then probes of 17 epochs, the better of every two continued for 35 more; with 35
    # epochs left a new probe could not be continued, so the other one is.
    rows = sorted((r for r in records if r["method"] == "policy"), key=lambda r: r["trial"])
    assert [r["epochs"] for r in rows] == [52, 17, 17, 35, 35]
    assert [r["continues"] for r in rows[:3]] == [None, None, None]
    assert {rows[3]["continues"], rows[4]["continues"]} == {rows[1]["trial"], rows[2]["trial"]}
    probes = rows[1:3]
    continued = rows[rows[3]["continues"] - 1]
    assert continued in probes and continued["config"] == rows[3]["config"]
    # the probe continued is the one with the best score in its 17 epochs
    backend = LCBenchBackend(data_dir=LCBENCH)
    best = [backend.evaluate(backend.task("34539"), p["config"], epochs=17) for p in probes]
    assert continued is probes[max((0, 1), key=lambda i: best[i].best_metric)]
    assert [r["score"] is not None for r in rows] == [True, False, False, True, True]
    # probe: false, whole trainings
    assert [r["epochs"] for r in records if r["method"] == "full"] == [52, 52, 52]


def test_a_probe_setting_is_checked():
    with pytest.raises(ConfigError, match=r"policies\.full\.probe must be true, false or"):
        run(
            {
                "benchmark": "lcbench",
                "train_tasks": ["3945"],
                "test_tasks": ["34539"],
                "methods": ["full"],
                "budgets": [1],
                "budget_unit": "epochs",
                "policies": {"full": {**TINY, "probe": 0.5}},
            }
        )


@needs_lcbench
def test_lcbench_continuation_costs_the_extra_epochs_and_is_the_surrogates_curve():
    import numpy as np

    from hporl import HPOEnv, SearchSpace
    from hporl.backends.lcbench import LCBenchBackend

    backend = LCBenchBackend(data_dir=LCBENCH)
    env = HPOEnv(
        SearchSpace.builtin("lcbench"),
        backend,
        backend.tasks()[:2],
        budget=1,
        fidelities=FIDELITIES,
    )
    assert env.resumable
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    info: dict = {}
    env.step(0)  # a new configuration at 1/9: 6 of 52 epochs
    while not info:
        _, _, _, _, info = env.step(int(rng.choice(np.flatnonzero(env.action_masks()))))
    assert (info["epochs"], info["result"].epochs_done) == (6, 6)
    _, _, done, _, more = env.step(env.layout.decisions.index(("continue", 0)))
    assert more["continued"] and (more["epochs"], more["epochs_spent"]) == (11, 17)
    whole = backend.evaluate(env.task, info["config"], epochs=52)
    assert more["result"].curve == pytest.approx(whole.curve[:17])
    _, _, done, _, last = env.step(env.layout.decisions.index(("continue", 1)))
    assert (last["epochs"], last["epochs_spent"], done) == (35, 52, True)
    assert last["result"].curve == pytest.approx(whole.curve)


@needs_lcbench
def test_a_budget_aware_policy_hands_over_full_trainings_after_its_epochs(tmp_path):
    aware = {**TINY, "budget_unit": "epochs", "pretrain": None}
    config = {
        **LCBENCH_BENCH,
        "train_tasks": ["3945", "7593"],
        "test_tasks": ["34539"],
        "methods": ["alone", "handed"],
        "budgets": [1, 4],
        "budget_unit": "epochs",
        "seeds": 1,
        "normalisation_samples": 200,
        "transfer_candidates": 20,
        "policies": {"alone": {**aware, "then": None}},
    }
    run({**config, "methods": ["alone"]}, out=tmp_path / "a")
    path = str(tmp_path / "a" / "policy_alone_fold0")
    handed = {"path": path, "then": "random", "after": 1}
    run({**config, "policies": {"alone": {"path": path, "then": None}, "handed": handed}},
        out=tmp_path / "b")  # fmt: skip
    records = json.loads((tmp_path / "b" / "results.json").read_text())
    rows = {
        m: sorted((r for r in records if r["method"] == m), key=lambda r: r["trial"])
        for m in ("alone", "handed")
    }
    cut = next(i for i, r in enumerate(rows["handed"]) if r["epochs_spent"] >= 52) + 1
    policy_part = [(r["config"], r["fidelity"], r["epochs"]) for r in rows["handed"][:cut]]
    assert policy_part == [(r["config"], r["fidelity"], r["epochs"]) for r in rows["alone"][:cut]]
    after = rows["handed"][cut:]
    assert after, "random search got no epochs after the policy's"
    for r in after:  # full trainings by the sampler handed over to, new configurations
        assert (r["fidelity"], r["epochs"], r["continues"]) == (1.0, 52, None)
        assert r["config"] not in [x["config"] for x in rows["alone"]]
    assert rows["handed"][-1]["epochs_spent"] <= 4 * 52
    assert 4 * 52 - rows["handed"][-1]["epochs_spent"] < 52  # no room left for one more
