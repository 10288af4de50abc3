from __future__ import annotations

import json

import numpy as np
import pytest

from hporl import HPOEnv, Policy, SyntheticBackend, run_experiment
from hporl.agents import AgentConfig, build_agent, make_vec_env
from hporl.backends import SyntheticTask
from hporl.observation import ObservationLayout
from hporl.pretrain import (
    PretrainConfig,
    adaptive_orders,
    behaviour_clone,
    build_portfolio,
    expert_steps,
    greedy_portfolio,
    grid_candidates,
)


def test_greedy_portfolio_known_answer():
    # rows: tasks, columns: candidates (higher is better)
    values = np.array(
        [
            [1.0, 0.0, 0.6],
            [1.0, 0.0, 0.6],
            [0.0, 1.0, 0.6],
        ]
    )
    # alone, c0 has mean regret 1/3, c2 0.4, c1 2/3; with c0 chosen, c1 removes the last regret
    assert greedy_portfolio(values, 1) == [0]
    assert greedy_portfolio(values, 2) == [0, 1]
    assert greedy_portfolio(values, 5) == [0, 1, 2]  # never more than the candidates


def test_adaptive_expert_reads_features_and_scores():
    # two families of tasks; candidates 0 and 1 suit family A, 2 and 3 family B; candidate 4 is
    # middling everywhere. Features tell the families apart for tasks 0-3; tasks 4 and 5 have
    # uninformative features, and only their scores can tell.
    a = [1.0, 0.9, 0.0, 0.1, 0.5]
    b = [0.0, 0.1, 1.0, 0.9, 0.5]
    values = np.array([a, a, b, b, a, b])
    features = np.array([[0.0], [0.1], [5.0], [5.1], [2.5], [2.5]])
    orders = adaptive_orders(values, features, 3, bandwidth=0.5, match=4.0, min_seen=2)
    assert orders[0][0] in (0, 1) and orders[2][0] in (2, 3)  # the features pay at trial 1
    # tasks 4 and 5 (same features): their scores part them
    assert orders[4] != orders[5]
    regret = values.max(1, keepdims=True) - values
    for t in (4, 5):
        assert regret[t, orders[t]].min() == 0.0  # each finds its family's best within 3
    flat = adaptive_orders(values, np.zeros((6, 1)), 3, match=0.0)
    # no features and no matching: the greedy portfolio of the other tasks
    assert flat[0] == greedy_portfolio(values[1:], 3)


@pytest.mark.parametrize("sampling", ["snapped", "grid"])
def test_behaviour_cloning_reproduces_the_adaptive_expert(env, small_space, sampling):
    tasks = env.tasks
    portfolio = build_portfolio(
        env, tasks, PretrainConfig(candidates=12, candidate_sampling=sampling, expert="adaptive")
    )
    assert portfolio.per_task is not None and len(portfolio.per_task) == len(tasks)
    cfg = AgentConfig(net_arch=[64, 64], params={"n_steps": 32, "batch_size": 16})
    agent = build_agent(cfg, make_vec_env([lambda: env]))
    stats = behaviour_clone(
        agent, cfg.algorithm, expert_steps(env, tasks, portfolio), PretrainConfig(epochs=400)
    )
    assert stats["action_accuracy"] >= 0.95
    policy = Policy.from_agent(
        agent, env.layout, algorithm=cfg.algorithm, policy_kwargs=cfg.policy_kwargs(env.layout)
    )
    hits = 0
    for t, task in enumerate(tasks):
        first, second = (portfolio.candidates[i] for i in portfolio.order_for(t))
        hits += policy.suggest(task) == first
        hits += policy.suggest(task, [(first, env.evaluate(task, first))]) == second
    assert hits >= 2 * len(tasks) - 1


@pytest.fixture()
def env(small_space):
    return HPOEnv(
        small_space,
        SyntheticBackend(small_space),
        SyntheticTask.sample(0, 6, n_features=3),
        budget=2,
    )


def test_grid_candidates_are_distinct_on_grid_and_start_with_the_default(env, small_space):
    cands = grid_candidates(env, 12, np.random.default_rng(0))
    assert len(cands) == 12
    assert len({json.dumps(c, sort_keys=True) for c in cands}) == 12
    assert cands[0]["optimizer"] == small_space.default()["optimizer"]
    for c in cands:
        assert small_space.validate(c) == c
        for name, value in c.items():
            assert value in small_space.bins(name, env.layout.n_bins)


@pytest.mark.parametrize("sampling", ["space", "grid"])
def test_behaviour_cloning_reproduces_the_portfolio(env, small_space, sampling):
    tasks = env.tasks
    portfolio = build_portfolio(
        env, tasks, PretrainConfig(candidates=10, candidate_sampling=sampling, expert="portfolio")
    )
    assert len(portfolio.order) == 2
    regret = portfolio.mean_regret()
    assert regret[1] <= regret[0]
    if sampling == "space":  # exact draws: their values join the action bins
        extra = ObservationLayout.extra_bins_of(small_space, portfolio.configs)
        env = HPOEnv(small_space, env.evaluator, tasks, budget=2, extra_bins=extra)
        for name, values in extra:
            assert set(values) <= set(env.layout.bins[env.layout._param_index[name]])
    cfg = AgentConfig(net_arch=[64, 64], params={"n_steps": 32, "batch_size": 16})
    agent = build_agent(cfg, make_vec_env([lambda: env]))
    stats = behaviour_clone(
        agent, cfg.algorithm, expert_steps(env, tasks, portfolio), PretrainConfig(epochs=300)
    )
    assert stats["action_accuracy"] == 1.0
    policy = Policy.from_agent(
        agent, env.layout, algorithm=cfg.algorithm, policy_kwargs=cfg.policy_kwargs(env.layout)
    )
    first, second = portfolio.configs
    for task in tasks:
        assert policy.suggest(task) == first
        result = env.evaluate(task, first)
        assert policy.suggest(task, [(first, result)]) == second


def test_run_experiment_with_pretrain_writes_the_portfolio(tmp_path):
    policy = run_experiment(
        {
            "tasks": [{"synthetic": 8, "n_features": 3}],
            "backend": {"name": "synthetic"},
            "space": "optimizer",
            "budget": 3,
            "pretrain": {"candidates": 16, "epochs": 50},
            "agent": {"total_timesteps": 64, "params": {"n_steps": 32, "batch_size": 16}},
        },
        out=tmp_path,
    )
    data = json.loads((tmp_path / "portfolio.json").read_text())
    assert len(data["portfolio"]) == 3 and 3 <= data["candidates"] <= 16
    # every candidate draw on every task, then the portfolio's grid versions it plays
    assert 8 * data["candidates"] <= data["evaluations"] <= 8 * (data["candidates"] + 3)
    assert policy.space.validate(data["portfolio"][0]) == data["portfolio"][0]


def test_anchoring_keeps_the_opening_through_rl(tmp_path):
    from hporl.pretrain import anchored

    data = {"trial": np.array([0, 0, 1, 2]), "actions": np.array([5, 6, 7, 8])}
    assert anchored(data, 1)["actions"].tolist() == [5, 6]
    assert anchored(data, 0) is None
    policy = run_experiment(
        {
            "tasks": [{"synthetic": 6, "n_features": 3}],
            "backend": {"name": "synthetic"},
            "space": "optimizer",
            "budget": 2,
            "pretrain": {
                "candidates": 16,
                "epochs": 200,
                "anchor_trials": 1,
                "anchor_epochs": 20,
                "expert": "portfolio",
            },
            # a large learning rate that would wreck the cloned opening without the anchor
            "agent": {
                "total_timesteps": 256,
                "learning_rate": 3e-3,
                "params": {"n_steps": 64, "batch_size": 32},
            },
        },
        out=tmp_path,
    )
    first = json.loads((tmp_path / "portfolio.json").read_text())["portfolio"][0]
    for task in SyntheticTask.sample(0, 6, n_features=3):
        assert policy.suggest(task) == first
