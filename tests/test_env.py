from __future__ import annotations

import warnings

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

from hporl import ConfigError, HPOEnv, SearchSpace, SyntheticBackend, TorchBackend, rewards
from hporl.backends import SyntheticTask
from hporl.observation import TOKEN_PRESENT, ObservationLayout
from hporl.tasks import FEATURE_NAMES, builtin
from tests._helpers import SMALL_SPACE

SPACE = SearchSpace.builtin("optimizer")
SMALL = SearchSpace.from_dict({**SMALL_SPACE, "net": {"type": "fixed", "value": "mlp"}})


def synthetic_env(space=SPACE, budget=3, **kw):
    return HPOEnv(space, SyntheticBackend(space), SyntheticTask.sample(0, 5), budget=budget, **kw)


def run_episode(env, policy=None, seed=0):
    obs, _ = env.reset(seed=seed)
    rng = np.random.default_rng(seed)
    steps, infos, total = [], [], 0.0
    while True:
        mask = env.action_masks()
        action = policy(obs, mask) if policy else int(rng.choice(np.flatnonzero(mask)))
        steps.append((obs, mask, action))
        obs, reward, terminated, truncated, info = env.step(action)
        total += reward
        if info:
            infos.append((info, reward))
        if terminated or truncated:
            return steps, infos, total


def test_gymnasium_and_sb3_env_checkers():
    with warnings.catch_warnings():
        warnings.simplefilter("error", category=UserWarning)  # no checker warning either
        gym_check_env(synthetic_env(), skip_render_check=True)
    sb3_check_env(synthetic_env())
    real = HPOEnv(SPACE, TorchBackend(), [builtin("iris")], budget=2, epochs=1)
    gym_check_env(real, skip_render_check=True)
    sb3_check_env(real)


def test_masks_allow_only_the_current_parameters_bins():
    env = synthetic_env(n_bins=5)
    layout = env.layout
    for seed in range(20):
        env.reset(seed=seed)
        rng = np.random.default_rng(seed)
        while True:
            mask = env.action_masks()
            assert mask.any()
            name = SPACE.parameters[env._position].name
            n_valid = len(SPACE.bins(name, 5))
            assert mask[:n_valid].all() and not mask[n_valid:].any(), name
            _, _, terminated, _, _ = env.step(int(rng.choice(np.flatnonzero(mask))))
            if terminated:
                break
    assert layout.n_actions == max(len(SPACE.bins(p.name, 5)) for p in SPACE.chosen)


def test_conditional_parameters_are_skipped_and_fixed_filled():
    env = synthetic_env(SMALL, budget=1)
    for choice, expect_steps in (("adam", 2), ("sgd", 3)):
        env.reset(seed=0)
        idx = SMALL["optimizer"].choices.index(choice)
        _, _, done, _, info = env.step(idx)
        steps = 1
        while not done:
            _, _, done, _, info = env.step(0)
            steps += 1
        assert steps == expect_steps
        assert info["config"]["optimizer"] == choice
        assert ("momentum" in info["config"]) == (choice == "sgd")
        assert info["config"]["net"] == "mlp"


def test_reward_is_the_normalised_improvement_and_return_is_the_best():
    env = synthetic_env(budget=4)
    approach = rewards.get("best_metric")
    for seed in range(5):
        _, infos, total = run_episode(env, seed=seed)
        values = [approach(i["result"]) for i, _ in infos]
        assert [i["value"] for i, _ in infos] == pytest.approx(values)
        best = values[0]
        assert infos[0][1] == pytest.approx(values[0])
        for (_, reward), v in zip(infos[1:], values[1:], strict=True):
            assert reward == pytest.approx(max(0.0, v - best))
            best = max(best, v)
        assert total == pytest.approx(max(values))


def test_diverged_trial_gets_the_floor():
    env = synthetic_env(SMALL, budget=1)
    env.reset(seed=0)
    env.step(1)  # adam
    lr_bins = SMALL.bins("lr", env.layout.n_bins)
    _, reward, done, _, info = env.step(len(lr_bins) - 1)  # the highest lr diverges
    assert done and info["result"].status == "diverged"
    assert reward == rewards.get("best_metric").floor


def test_observation_layout_and_no_task_identity():
    env = synthetic_env(SMALL, budget=2, history=2)
    obs, _ = env.reset(seed=0)
    layout = env.layout
    assert obs.shape == (layout.dim,) and obs.dtype == np.float32
    n_feat = layout.n_features
    np.testing.assert_allclose(obs[:n_feat], env.task.features())
    onehot = obs[n_feat : n_feat + 3]
    assert onehot.tolist() == [1.0, 0.0, 0.0]  # choosing "optimizer" first
    # a finished trial shows in the summary and history blocks
    _, _, _, _, info = env.step(1)
    obs, _, _, _, info = env.step(3)
    assert info["trial"] == 0
    summary_at = n_feat + 3 + SMALL.dim + 3
    assert obs[summary_at] == pytest.approx(0.5)  # 1 of K=2 trials done
    first_hist = obs[summary_at + 4 : summary_at + 4 + layout.trial_width]
    np.testing.assert_allclose(first_hist[: SMALL.dim], SMALL.encode(info["config"]))
    assert first_hist[SMALL.dim + TOKEN_PRESENT] == 1.0
    second = obs[summary_at + 4 + layout.trial_width :]
    assert not second.any()  # the second slot is still empty
    assert layout.tokens == (summary_at + 4, 2, layout.trial_width)
    # two tasks with the same features give the same observation whatever their names
    a, b = SyntheticTask("a", [0.1, 0.2, 0.3, 0.4]), SyntheticTask("b", [0.1, 0.2, 0.3, 0.4])
    env2 = HPOEnv(SMALL, SyntheticBackend(SMALL), [a])
    oa, _ = env2.reset(seed=0, options={"task": a})
    ob, _ = env2.reset(seed=0, options={"task": b})
    np.testing.assert_array_equal(oa, ob)


def test_real_tasks_features_and_cache(iris):
    env = HPOEnv(SPACE, TorchBackend(), [iris], budget=3, epochs=1)
    assert env.layout.n_features == len(FEATURE_NAMES)
    for seed in range(2):
        run_episode(env, policy=lambda obs, mask: int(np.flatnonzero(mask)[0]), seed=seed)
    assert (
        env.evaluator.n_trained == 1 and env.evaluator.n_memory_hits == 5
    )  # the same config six times, trained once


def test_reference_reward_evaluates_the_default_once(iris):
    env = HPOEnv(
        SPACE, TorchBackend(), [iris], budget=2, epochs=1, reward="improvement_over_reference"
    )
    _, infos, _ = run_episode(env, seed=3)
    assert env.evaluator.n_trained <= 3 and all(-1 <= i["value"] <= 1 for i, _ in infos)


def test_unmasked_actions_wrap_around():
    env = synthetic_env(SMALL, budget=1)
    env.reset(seed=0)
    n = env.action_space.n
    assert n > 3
    env.step(n - 1)  # beyond the 3 optimizer choices
    assert env._partial["optimizer"] == SMALL["optimizer"].choices[(n - 1) % 3]


def test_bad_arguments():
    with pytest.raises(ConfigError, match="budget"):
        synthetic_env(budget=0)
    with pytest.raises(ConfigError, match="at least one training task"):
        HPOEnv(SPACE, SyntheticBackend(SPACE), [])
    with pytest.raises(ConfigError, match="unknown reward approach"):
        synthetic_env(reward="best")


def test_layout_action_of_inverts_value_of():
    layout = ObservationLayout(SPACE, n_features=4, budget=3, n_bins=6)
    for position, p in enumerate(SPACE.parameters):
        if p.kind == "fixed":
            continue
        for a in range(len(SPACE.bins(p.name, 6))):
            assert layout.action_of(p.name, layout.value_of(position, a)) == a
