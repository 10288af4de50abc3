"""Budget-aware episodes and policies: each trial's fidelity is a decision (issue 16, part 2)."""

from __future__ import annotations

import itertools
import json
import re

import numpy as np
import pytest

from hporl import (
    ConfigError,
    HPOEnv,
    Policy,
    PolicyError,
    SyntheticBackend,
    TuneOptions,
    tune_model,
)
from hporl.backends import SyntheticTask
from hporl.env import FIDELITY_DECISION
from hporl.observation import DECIDE, FIDELITIES, ObservationLayout, epochs_at
from hporl.tasks import builtin
from tests._helpers import run_cli


class PrefixBackend(SyntheticBackend):
    """A synthetic backend whose curve of ``e`` epochs is the first ``e`` points of the full
    one (as a surrogate that predicts every epoch): trials can be continued."""

    resumable = True

    def evaluate(self, task, config, *, seed=0, epochs=None, checkpoint_dir=None, on_epoch=None):
        whole = super().evaluate(task, config, seed=seed, epochs=task.epochs)
        e = int(epochs or task.epochs)
        if not whole.ok:
            return whole
        from hporl.backends import TrialResult

        return TrialResult.from_curves(
            metric_name="accuracy",
            curve=whole.curve[:e],
            loss_curve=whole.loss_curve[:e],
            train_loss_curve=whole.train_loss_curve[:e],
            status="ok",
            epochs=e,
            config=dict(config),
        )


def _env(space, backend, *, budget=2, epochs=9):
    tasks = [SyntheticTask(f"t{i}", np.full(3, 0.2 * i + 0.1), epochs=epochs) for i in range(3)]
    return HPOEnv(space, backend, tasks, budget=budget, n_bins=8, fidelities=FIDELITIES)


def _play(env, decision, rng):
    """One trial: ``decision`` (an index into layout.decisions), then random masked bins."""
    assert env.action_masks()[decision], (decision, env.action_masks())
    _, reward, done, _, info = env.step(decision)
    while not info:
        _, reward, done, _, info = env.step(int(rng.choice(np.flatnonzero(env.action_masks()))))
    return reward, done, info


def test_env_in_epoch_mode_spends_epochs_as_chosen_and_ends_when_spent(small_space):
    env = _env(small_space, SyntheticBackend(small_space))  # 9 epochs a task, 18 per episode
    rng = np.random.default_rng(0)
    env.reset(seed=0)
    decisions = env.layout.decisions
    assert decisions == [("new", 0), ("new", 1), ("new", 2), ("continue", 0), ("continue", 1)]
    assert env.budget_epochs == 18 and env._position == DECIDE
    assert env.choosing == FIDELITY_DECISION
    env_copy = _env(small_space, SyntheticBackend(small_space))
    env_copy.reset(seed=0)
    env_copy.step(0)  # a new configuration: its parameters come next, in the space's order
    assert env_copy.choosing == small_space.parameters[0].name
    # Nothing to continue yet; every new trial fits.
    assert env.action_masks()[:5].tolist() == [True, True, True, False, False]
    _, done, info = _play(env, 0, rng)
    assert (info["fidelity"], info["epochs"], info["epochs_spent"]) == (1 / 9, 1, 1)
    assert info["result"].epochs_done == 1 and not done
    _, done, info = _play(env, 2, rng)
    assert (info["epochs"], info["epochs_spent"]) == (9, 10)
    # 8 epochs left: no full trial; not resumable, so continuing 1/9 -> 1/3 costs 3 epochs.
    assert env.action_masks()[:5].tolist() == [True, True, False, True, False]
    _, done, info = _play(env, 3, rng)
    assert info["continued"] and info["trial"] == 0 and info["epochs"] == 3
    assert len(env._trials) == 2 and env._trials[0][2] == pytest.approx(1 / 3)
    spent, total = info["epochs_spent"], 0.0
    while not done:
        reward, done, info = _play(env, 0, rng)  # one epoch at a time, to the last
        total += reward
    assert info["epochs_spent"] == env.epochs_spent == 18
    with pytest.raises(RuntimeError, match="episode is over"):
        env.step(0)
    assert spent == 13


def test_env_reward_is_the_best_full_fidelity_value_over_the_epoch_budget(small_space):
    env = _env(small_space, SyntheticBackend(small_space), budget=2)
    rng = np.random.default_rng(1)
    env.reset(seed=0)
    r_low, _, _low = _play(env, 0, rng)  # no full trial yet: the floor, for 1 of 18 epochs
    assert r_low == pytest.approx(env.reward_approach.floor / 18)
    r_full, done, full = _play(env, 2, rng)
    assert r_full == pytest.approx(9 / 18 * full["value"])
    returns = r_low + r_full
    while not done:
        r, done, _ = _play(env, 0, rng)
        returns += r
    # The mean over the 18 epochs of the best full-fidelity value found so far.
    assert returns == pytest.approx((env.reward_approach.floor + 17 * full["value"]) / 18)


def test_a_continued_trial_costs_the_extra_epochs_and_reads_the_longer_curve(small_space):
    backend = PrefixBackend(small_space)
    env = _env(small_space, backend, budget=1)
    rng = np.random.default_rng(2)
    env.reset(seed=0)
    _, _, first = _play(env, 0, rng)
    _, _, more = _play(env, 3, rng)  # the best 1/9 trial to 1/3
    assert more["continued"] and more["config"] == first["config"]
    assert (first["epochs"], more["epochs"], more["epochs_spent"]) == (1, 2, 3)
    whole = backend.evaluate(env.task, first["config"])
    assert more["result"].curve == whole.curve[:3]
    _, done, last = _play(env, 4, rng)  # 1/3 -> full: 6 more epochs
    assert (last["epochs"], last["epochs_spent"], last["fidelity"]) == (6, 9, 1.0)
    assert last["result"].curve == whole.curve and done  # 9 of 9 epochs spent
    assert len(env._trials) == 1


def test_a_continuation_that_would_train_no_further_is_not_offered(small_space):
    """On a task of 4 epochs 1/9 and 1/3 both round to one epoch: continuing a 1-epoch trial
    "to 1/3" trained nothing (seen on the real suite, 23 such decisions in 8 runs)."""
    aware = ObservationLayout(small_space, 3, 4, 8, 4, fidelities=FIDELITIES)
    probe = [(small_space.default(), 0.5, 1 / 9)]
    assert [epochs_at(f, 4) for f in FIDELITIES] == [1, 1, 4]
    mask = aware.decision_mask(probe, 10, 4, resumable=True)
    assert not mask[aware.decisions.index(("continue", 0))]
    assert mask[aware.decisions.index(("new", 0))]
    on_9 = aware.decision_mask(probe, 10, 9, resumable=True)  # 1 epoch -> 3: still offered
    assert on_9[aware.decisions.index(("continue", 0))]


def test_tokens_carry_each_trials_fidelity_and_old_layouts_load(small_space):
    plain = ObservationLayout(small_space, 3, 4, 8, 4)
    aware = ObservationLayout(small_space, 3, 4, 8, 4, fidelities=FIDELITIES)
    assert aware.dim == plain.dim + 2 + 4  # decision slot, epochs spent, one field per token
    config = small_space.default()
    block = aware.trials_block([(config, 0.5, 1 / 3), (config, 0.7, 1.0)], spent=0.25)
    assert block[4] == pytest.approx(0.25)
    _offset, n, width = aware.tokens
    tokens = block[5:].reshape(n, width)
    assert tokens[:2, -1].tolist() == pytest.approx([1 / 3, 1.0])
    assert ObservationLayout.from_dict(small_space, aware.to_dict()) == aware
    old = plain.to_dict()
    del old["fidelities"]  # a policy.json saved before budget-aware layouts
    assert ObservationLayout.from_dict(small_space, old) == plain
    assert not plain.budget_aware and plain.trial_width == aware.trial_width - 1
    with pytest.raises(ConfigError, match="fidelities must be increasing fractions"):
        ObservationLayout(small_space, 3, 4, 8, 4, fidelities=(0.5, 0.2, 1.0))
    assert [epochs_at(f, 52) for f in FIDELITIES] == [6, 17, 52]


@pytest.fixture(scope="module")
def aware_policy(tmp_path_factory):
    from hporl import run_experiment

    out = tmp_path_factory.mktemp("aware")
    policy = run_experiment(
        {
            "name": "aware",
            "tasks": ["iris", "wine"],
            "backend": {"epochs": 9},
            "budget": 2,
            "budget_unit": "epochs",
            "agent": {
                "total_timesteps": 128,
                "net_arch": [16],
                "params": {"n_steps": 64, "batch_size": 32},
            },
        },
        out=out,
    )
    return policy, out


def test_budget_aware_policy_saves_loads_and_proposes_a_fidelity(aware_policy, tmp_path):
    policy, out = aware_policy
    assert policy.budget_aware and policy.fidelities == FIDELITIES
    loaded = Policy.load(out)
    assert loaded.budget_aware and loaded.layout == policy.layout
    meta = json.loads((out / "policy" / "policy.json").read_text())
    assert meta["layout"]["fidelities"] == list(FIDELITIES)
    assert meta["meta"]["budget_unit"] == "epochs"
    task = builtin("iris", epochs=9)
    choice = loaded.suggest_trial(task, [], epochs_left=18, full_epochs=9)
    assert choice == policy.suggest_trial(task, [], epochs_left=18, full_epochs=9)
    assert choice.continues is None and choice.fidelity in FIDELITIES
    assert choice.epochs == choice.cost == epochs_at(choice.fidelity, 9)
    assert policy.space.validate(choice.config) == choice.config
    # Only what fits: with 2 epochs left, a full trial is out.
    low = loaded.suggest_trial(task, [], epochs_left=2, full_epochs=9, rng=0, deterministic=False)
    assert low.epochs <= 2
    assert loaded.suggest_trial(task, [], epochs_left=0, full_epochs=9) is None
    # A continuation names the trial it continues.
    history = [(choice.config, 0.8, 1 / 9)]
    seen = set()
    for seed in range(40):
        c = loaded.suggest_trial(
            task, history, epochs_left=18, full_epochs=9, deterministic=False, rng=seed
        )
        seen.add(c.continues)
        if c.continues is not None:
            assert c.config == choice.config and c.fidelity == pytest.approx(1 / 3)
    assert 0 in seen


def test_a_trial_count_policy_does_not_choose_fidelities(tiny_policy):
    policy, _ = tiny_policy
    assert not policy.budget_aware
    with pytest.raises(PolicyError, match="budgets in trials, not epochs"):
        policy.suggest_trial(builtin("iris"), [], epochs_left=10, full_epochs=5)


def test_tune_model_with_budget_epochs_never_exceeds_the_budget(aware_policy, tmp_path):
    policy, _ = aware_policy
    task = builtin("wine", epochs=9)
    res = tune_model(
        data=task,
        policy=policy,
        budget_epochs=20,
        out=tmp_path,
        options=TuneOptions(compare_default=False),
    )
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["budget_aware"] and report["budget_epochs"] == 20
    assert report["epochs_spent"] <= 20 and res.trials
    # Real training resumes under a budget in epochs: a continuation costs the extra epochs.
    assert report["epochs_spent"] == sum(t["epochs_cost"] for t in res.trials)
    by_number = {t["number"]: t for t in res.trials}
    for t in res.trials:
        before = by_number.get(t["continues"])
        extra = t["epochs"] - (before["epochs"] if before else 0)
        assert t["epochs_cost"] == extra
    assert all(t["fidelity"] in FIDELITIES for t in res.trials)
    assert all(t["epochs"] == epochs_at(t["fidelity"], 9) for t in res.trials)
    full = [t for t in res.trials if t["fidelity"] == 1.0 and t["status"] == "ok"]
    if full:  # the final model comes from a full-fidelity trial
        assert res.config in [t["config"] for t in full]
    # Resumed with the same budget: nothing more to spend.
    again = tune_model(data=task, policy=policy, budget_epochs=20, out=tmp_path)
    assert len(again.trials) == len(res.trials)


def test_budget_epochs_with_a_trial_count_policy_runs_full_trials(tiny_policy, tmp_path):
    policy, _ = tiny_policy
    task = builtin("iris", epochs=2)
    options = TuneOptions(compare_default=False, probe=None)  # by default it probes (test_probe)
    res = tune_model(data=task, policy=policy, budget_epochs=5, out=tmp_path, options=options)
    assert len(res.trials) == 2 and all(t["epochs"] == 2 for t in res.trials)
    assert not res.extra["budget_aware"] and res.extra["probe"] is None
    with pytest.raises(ConfigError, match="less than one full training of 2 epochs"):
        tune_model(data=task, policy=policy, budget_epochs=1, options=options)
    with pytest.raises(ConfigError, match="not both"):
        tune_model(data=task, policy=policy, budget_epochs=4, n_trials=2, options=options)
    with pytest.raises(ConfigError, match="cannot be combined with a pruner"):
        tune_model(data=task, policy=policy, budget_epochs=4, pruner="asha", options=options)


def test_cli_budget_epochs_errors_are_one_line(csv_file, capsys):
    code, _, err = run_cli(
        "tune",
        "--data",
        csv_file,
        "--target",
        "y",
        "--trials",
        "2",
        "--budget-epochs",
        "9",
        capsys=capsys,
    )
    assert code == 2 and err.strip().count("\n") == 0
    assert re.search("--trials or --budget-epochs, not both", err)


def test_the_halving_expert_probes_cheaply_and_promotes_the_best_rung_by_rung(small_space):
    """``expert: halving``: the portfolio's first at full fidelity, then successive halving over
    the next portfolio configurations (9 probes at 1/9, the best 3 continued to 1/3, the best
    of those to full), played in the env itself; returns-to-go are the env's rewards."""
    from hporl.pretrain import PretrainConfig, build_portfolio, halving_steps

    tasks = [SyntheticTask(f"t{i}", np.full(3, 0.2 * i + 0.1), epochs=9) for i in range(3)]
    env = HPOEnv(
        small_space, PrefixBackend(small_space), tasks, budget=4, n_bins=8, fidelities=FIDELITIES
    )
    portfolio = build_portfolio(env, tasks, PretrainConfig(candidates=40, expert="halving"))
    steps = halving_steps(env, tasks, portfolio)
    layout = env.layout
    decided = [layout.decisions[a] for a, o in zip(steps["actions"], steps["obs"], strict=True)
               if o[layout.n_features + len(layout.params)] == 1.0]  # fmt: skip
    per_task = len(decided) // len(tasks)
    first = decided[:per_task]
    assert first[0] == ("new", len(FIDELITIES) - 1)  # the anchor, at full fidelity
    assert first[1:10] == [("new", 0)] * 9  # nine cheap probes
    assert first[10:14] == [("continue", 0)] * 3 + [("continue", 1)]  # promoted rung by rung
    # returns-to-go, episode by episode (a new one where the trial count falls back to 0):
    # summed to the episode's end, so each episode's first is its largest and none carries over
    starts = [0, *np.flatnonzero(np.diff(steps["trial"]) < 0) + 1, len(steps["trial"])]
    assert len(starts) - 1 == len(tasks)
    for a, b in itertools.pairwise(starts):
        episode = steps["returns"][a:b]
        assert episode[0] == episode.max() > episode[-1] > 0


def test_the_halving_expert_samples_new_configurations_once_the_portfolio_is_spent(small_space):
    from hporl.pretrain import PretrainConfig, build_portfolio, halving_steps

    tasks = [SyntheticTask(f"t{i}", np.full(3, 0.3 * i + 0.1), epochs=9) for i in range(2)]
    env = HPOEnv(
        small_space, PrefixBackend(small_space), tasks, budget=4, n_bins=8, fidelities=FIDELITIES
    )
    portfolio = build_portfolio(env, tasks, PretrainConfig(candidates=4, expert="halving"))
    assert len(portfolio.candidates) == 4  # a bracket alone probes 9
    steps = halving_steps(env, tasks, portfolio)  # ran out of candidates: StopIteration
    layout = env.layout
    new = [a for a, o in zip(steps["actions"], steps["obs"], strict=True)
           if o[layout.n_features + len(layout.params)] == 1.0
           and layout.decisions[a][0] == "new"]  # fmt: skip
    assert len(new) > 2 * len(portfolio.candidates)


def test_a_budget_aware_policy_hands_over_and_a_resumed_run_proposes_the_same(
    aware_policy, tmp_path
):
    policy, _ = aware_policy
    task = builtin("wine", epochs=9)
    options = TuneOptions(compare_default=False, then="tpe", handover=1)
    kwargs = {"data": task, "policy": policy, "budget_epochs": 40, "options": options}
    whole = tune_model(**kwargs, out=tmp_path / "whole")
    report = json.loads((tmp_path / "whole" / "report.json").read_text())
    assert (report["then"], report["handover"]) == ("tpe", 1)
    spent, cut = 0, None
    for i, t in enumerate(whole.trials):
        spent += t["epochs_cost"]
        if spent >= 9 and cut is None:
            cut = i + 1  # the policy has spent one full training's epochs
    assert report["epochs_spent"] == spent <= 40
    after = whole.trials[cut:]
    assert after and all((t["fidelity"], t["epochs"]) == (1.0, 9) for t in after)

    class Stop(Exception):
        pass

    def stop_after_3(done, total, config, result):
        if done == cut + 1:
            raise Stop

    with pytest.raises(Stop):  # interrupted after the first trial handed over
        tune_model(**kwargs, out=tmp_path / "resumed", callback=stop_after_3)
    resumed = tune_model(**kwargs, out=tmp_path / "resumed")
    assert [t["config"] for t in resumed.trials] == [t["config"] for t in whole.trials]
    assert [t["fidelity"] for t in resumed.trials] == [t["fidelity"] for t in whole.trials]


def test_the_halving_expert_orders_only_the_candidates_an_episode_can_reach(
    small_space, monkeypatch
):
    """Ordering all of a 10,000-candidate sample greedily took hours; an episode of budget B
    reaches at most B * 9 + 1 new configurations at 1/9 of the epochs. The greedy order's
    prefix is the same however far it goes, so the expert plays the same steps."""
    import hporl.pretrain as pretrain
    from hporl.pretrain import PretrainConfig, build_portfolio, halving_steps

    tasks = [SyntheticTask(f"t{i}", np.full(3, 0.3 * i + 0.1), epochs=9) for i in range(2)]
    env = HPOEnv(
        small_space, PrefixBackend(small_space), tasks, budget=2, n_bins=8, fidelities=FIDELITIES
    )
    portfolio = build_portfolio(env, tasks, PretrainConfig(candidates=40, expert="halving"))
    original = pretrain.greedy_portfolio
    asked: list[int] = []

    def recording(values, k):
        asked.append(k)
        return original(values, k)

    monkeypatch.setattr(pretrain, "greedy_portfolio", recording)
    bounded = halving_steps(env, tasks, portfolio)
    assert asked == [2 * 9 + 1] and len(portfolio.candidates) > asked[0]
    monkeypatch.setattr(pretrain, "greedy_portfolio", lambda v, k: original(v, v.shape[1]))
    whole = halving_steps(env, tasks, portfolio)
    assert np.array_equal(bounded["actions"], whole["actions"])
