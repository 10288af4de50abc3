"""``HandoverSampler``: a policy's first trials, then another optuna sampler on the same study;
and a bench policy method with ``then`` / ``after``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import optuna
import pytest

from hporl import ConfigError, SearchSpace
from hporl.bench import BenchConfig, run
from hporl.bench._samplers import FixedSequenceSampler
from hporl.sampler import HandoverSampler
from tests._helpers import RPART_TINY as TINY
from tests._helpers import needs_rpart


def _objective(space: SearchSpace):
    def objective(trial: optuna.Trial) -> float:
        config = space.suggest(trial)
        return float(config["lr"]) if "lr" in config else 0.0

    return objective


def test_trials_before_the_handover_come_from_the_first_sampler(small_space):
    fixed = [small_space.sample(np.random.default_rng(i)) for i in range(3)]
    first = FixedSequenceSampler(small_space, fixed * 10, seed=0)
    seen: list[int] = []

    class Counting(optuna.samplers.TPESampler):
        def infer_relative_search_space(self, study, trial):  # called once per trial it samples
            seen.append(trial.number)
            return super().infer_relative_search_space(study, trial)

    sampler = HandoverSampler(first, Counting(seed=0, n_startup_trials=2), after=3)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    study.optimize(_objective(small_space), n_trials=6)
    got = [small_space.from_optuna_params(t.params) for t in study.trials]
    assert got[:3] == [small_space.validate(c) for c in fixed]
    assert seen == [3, 4, 5]  # the second sampler proposed no trial before the handover
    assert got[3:] != got[:3]


def test_after_zero_is_the_second_sampler_alone_and_negative_is_refused(small_space):
    sampler = HandoverSampler(
        FixedSequenceSampler(small_space, [small_space.default()] * 5),
        optuna.samplers.RandomSampler(seed=1),
        after=0,
    )
    study = optuna.create_study(sampler=sampler)
    study.optimize(_objective(small_space), n_trials=3)
    alone = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    alone.optimize(_objective(small_space), n_trials=3)
    assert [t.params for t in study.trials] == [t.params for t in alone.trials]
    with pytest.raises(ValueError, match="after must be >= 0"):
        HandoverSampler(sampler, sampler, after=-1)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"then": "gpp"}, r"policies.handed.then must be one of random, tpe, gp, cmaes, transfer_gp, got 'gpp'.*gp"),
        ({"then": None, "after": 3}, r"policies.handed.after needs policies.handed.then"),
        ({"then": "gp", "after": -1}, r"policies.handed.after must be a whole number >= 0, got -1"),
        ({"then": "gp", "after": 2.5}, r"after must be a whole number >= 0, got 2.5"),
    ],
)  # fmt: skip
def test_bad_handover_settings_are_named(settings, message):
    config = {**TINY, "methods": ["handed"], "policies": {"handed": settings}}
    with pytest.raises(ConfigError, match=message):
        BenchConfig.load(config)


@needs_rpart
def test_a_bench_policy_hands_over_after_its_trials(tmp_path: Path) -> None:
    tiny_agent = {"total_timesteps": 256, "n_envs": 4, "params": {"n_steps": 32}}
    policy = {"agent": tiny_agent, "pretrain": {"candidates": 30, "epochs": 5}, "then": None}
    run({**TINY, "methods": ["policy"], "budgets": [1, 5], "policy": policy}, out=tmp_path / "a")
    path = str(tmp_path / "a" / "policy_fold0")
    config = {
        **TINY,
        "methods": ["policy", "handed"],
        "budgets": [1, 5],
        "policy_path": path,
        "policy": {"then": None},  # alone (by default it hands over to transfer GP)
        "policies": {"handed": {"path": path, "then": "random", "after": 2}},
    }
    run(config, out=tmp_path / "b")
    rows = json.loads((tmp_path / "b" / "results.json").read_text())
    for task in TINY["test_tasks"]:
        by = {
            m: [r["config"] for r in rows if r["method"] == m and r["task"] == task]
            for m in ("policy", "handed")
        }
        assert len(by["handed"]) == 5
        assert by["handed"][:2] == by["policy"][:2]  # the policy's own proposals
        assert by["handed"][2:] != by["policy"][2:]  # then random search's


def test_tune_model_hands_over_after_the_policys_trials(tiny_policy, tmp_path):
    from hporl import TuneOptions, tune_model
    from hporl.tasks import builtin

    policy, _ = tiny_policy
    task = builtin("wine", epochs=2)
    alone = tune_model(
        data=task, policy=policy, n_trials=4, options=TuneOptions(compare_default=False, then=None)
    )
    handed = tune_model(
        data=task,
        policy=policy,
        n_trials=4,
        out=tmp_path / "run",
        options=TuneOptions(compare_default=False, then="random"),  # after policy.budget = 2
    )
    assert policy.budget == 2
    configs = [[t["config"] for t in r.trials] for r in (alone, handed)]
    assert configs[1][:2] == configs[0][:2]
    assert configs[1][2:] != configs[0][2:]
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert (report["then"], report["handover"]) == ("random", 2)
    again = tune_model(  # resumed: the same four, then random search's fifth
        data=task,
        policy=policy,
        n_trials=5,
        out=tmp_path / "run",
        options=TuneOptions(compare_default=False, then="random"),
    )
    assert [t["config"] for t in again.trials[:4]] == configs[1]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"then": "bayes"}, r"then must be one of random, tpe, gp, cmaes .*got 'bayes'"),
        ({"then": None, "handover": 3}, r"handover needs then"),
        ({"then": "gp", "handover": 0}, r"handover must be a positive integer, got 0"),
        ({"handover": True}, r"handover must be a positive integer, got True"),
    ],
)
def test_bad_handover_options_are_refused(options, message):
    from hporl import TuneOptions

    with pytest.raises(ConfigError, match=message):
        TuneOptions(**options)


def test_cli_tune_with_then(tiny_policy, csv_file, tmp_path, capsys):
    from tests._helpers import run_cli

    _, meta = tiny_policy
    out = tmp_path / "tuned"
    args = ["tune", "--data", csv_file, "--target", "y", "--policy", meta / "policy"]
    code, _, err = run_cli(*args, "--trials", "3", "--epochs", "1", "--then", "tpe",
                           "--handover", "1", "--out", out, capsys=capsys)  # fmt: skip
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    assert (report["then"], report["handover"], len(report["trials"])) == ("tpe", 1, 3)
    code, _, err = run_cli(*args, "--then", "bo", "--out", tmp_path / "x", capsys=capsys)
    assert code == 2 and err.strip().splitlines() == [
        "hporl: error: then must be one of random, tpe, gp, cmaes (the sampler after the "
        "policy's trials), got 'bo'."
    ]


def test_by_default_gp_takes_over_after_the_policys_budget_and_models_at_once(tiny_policy):
    from hporl import TuneOptions, tune_model
    from hporl.sampler import HANDOVER, PolicySampler, handover_after
    from hporl.tasks import builtin

    policy, _ = tiny_policy
    task = builtin("iris", epochs=1)
    sampler = HandoverSampler.after_policy(PolicySampler(policy, task=task))
    assert sampler.after == policy.budget == 2 and handover_after(policy, 7) == 7
    assert sampler.sampler_at(1) is sampler.first
    gp = sampler.sampler_at(2)
    assert isinstance(gp, optuna.samplers.GPSampler)
    assert gp._n_startup_trials == 2  # its model starts on the policy's trials
    big = type("P", (), {"budget": 30})()
    assert handover_after(big) == HANDOVER == 10
    result = tune_model(
        data=task, policy=policy, n_trials=3, options=TuneOptions(compare_default=False)
    )
    assert (result.extra["then"], result.extra["handover"]) == ("gp", 2)
    assert len({json.dumps(t["config"], sort_keys=True) for t in result.trials}) == 3


def test_a_trial_finished_elsewhere_between_asking_and_sampling_is_no_error():
    """optuna's GP infers its search space from the study's trials as its storage has cached
    them, and samples from the trials read afresh: a trial that another process finished in
    between, without one of the inferred parameters (a conditional one), made it raise KeyError
    in a worker sharing a study (seen once in a full test run)."""
    from optuna.distributions import FloatDistribution

    x, y = FloatDistribution(0, 1), FloatDistribution(0, 1)

    class Stale(optuna.samplers.GPSampler):  # what a stale cache makes it infer
        def infer_relative_search_space(self, study, trial):
            return {"x": x, "y": y}

    first = optuna.samplers.RandomSampler(seed=0)
    sampler = HandoverSampler(first, Stale(seed=0, n_startup_trials=2), after=0)
    study = optuna.create_study(sampler=sampler)
    for i in range(3):
        study.add_trial(optuna.trial.create_trial(
            params={"x": i / 4, "y": i / 4}, distributions={"x": x, "y": y}, value=float(i)))  # fmt: skip
    study.add_trial(  # another worker's trial, without y
        optuna.trial.create_trial(params={"x": 0.9}, distributions={"x": x}, value=3.0)
    )
    trial = study.ask()
    assert 0 <= trial.suggest_float("x", 0, 1) <= 1
    assert 0 <= trial.suggest_float("y", 0, 1) <= 1


def test_the_handover_counts_the_whole_study_under_hyperband(small_space):
    """Hyperband shows samplers only the asked trial's bracket: the handover's place must
    still count every earlier trial of the study."""
    fixed = [small_space.sample(np.random.default_rng(i)) for i in range(4)]
    seen: list[int] = []

    class Counting(optuna.samplers.RandomSampler):
        def infer_relative_search_space(self, study, trial):
            seen.append(trial.number)
            return super().infer_relative_search_space(study, trial)

    first = FixedSequenceSampler(small_space, fixed * 10, seed=0)
    study = optuna.create_study(
        direction="maximize",
        sampler=HandoverSampler(first, Counting(seed=0), after=4),
        pruner=optuna.pruners.HyperbandPruner(min_resource=1, max_resource=27),
        study_name="brackets",
    )

    def objective(trial):
        config = small_space.suggest(trial)
        for epoch in range(1, 4):
            trial.report(float(config.get("lr", 0.1)) * epoch, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return float(config.get("lr", 0.1))

    study.optimize(objective, n_trials=8)
    got = [small_space.from_optuna_params(t.params) for t in study.trials]
    assert got[:4] == [small_space.validate(c) for c in fixed]
    assert seen == [4, 5, 6, 7]
