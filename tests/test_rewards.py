from __future__ import annotations

import re

import pytest

from hporl import ConfigError, SearchSpace, TorchBackend, TrialResult, rewards
from hporl.rewards import normalized_score
from hporl.tasks import builtin


def result(curve, chance=0.1, status="ok", wall_time=1.0, epochs=None):
    return TrialResult.from_curves(
        metric_name="accuracy",
        curve=curve,
        status=status,
        chance_metric=chance,
        reason=None if status == "ok" else "x",
        wall_time=wall_time,
        epochs=epochs or len(curve),
    )


def test_normalised_score_is_chance_adjusted_and_clipped():
    assert normalized_score(0.1, 0.1) == 0.0
    assert normalized_score(1.0, 0.1) == 1.0
    assert normalized_score(0.55, 0.1) == pytest.approx(0.5)
    assert normalized_score(-5.0, 0.0) == -1.0  # a terrible regression R²
    assert normalized_score(None, 0.5) == -1.0


def test_same_relative_quality_gives_same_reward_across_tasks():
    # Halfway from chance to perfect on a 10-class and on a balanced 2-class task.
    ten = result([0.55], chance=0.1)
    two = result([0.75], chance=0.5)
    for name in ("final_metric", "best_metric", "curve_auc"):
        assert rewards.get(name)(ten) == pytest.approx(rewards.get(name)(two)) == pytest.approx(0.5)


@pytest.mark.parametrize("name", rewards.available())
def test_floor_for_diverged_and_failed(name):
    approach = rewards.get(name)
    ref = result([0.5])
    for status in ("diverged", "failed"):
        assert approach(result([], status=status), reference=ref) == approach.floor
    worst_ok = approach(result([0.0], chance=0.9, wall_time=1e6), reference=ref)
    assert approach.floor <= worst_ok


def test_each_approach():
    r = result([0.2, 0.8, 0.6], chance=0.0, wall_time=10.0)
    assert rewards.get("final_metric")(r) == pytest.approx(0.6)
    assert rewards.get("best_metric")(r) == pytest.approx(0.8)
    assert rewards.get("curve_auc")(r) == pytest.approx((0.2 + 0.8 + 0.6) / 3)
    stopped = result([0.2, 0.8], chance=0.0, epochs=4)
    assert rewards.get("curve_auc")(stopped) == pytest.approx((0.2 + 0.8 + 0.8 + 0.8) / 4)
    ref = result([0.5], chance=0.0, wall_time=10.0)
    assert rewards.get("improvement_over_reference")(r, reference=ref) == pytest.approx(0.3)
    tp = rewards.get("time_penalized", weight=0.1)
    assert tp(r, reference=ref) == pytest.approx(0.8 - 0.1 * 1.0)  # same time as the reference
    assert tp(result([0.8], chance=0.0, wall_time=30.0), reference=ref) == pytest.approx(
        0.8 - 0.1 * 2.0
    )
    with pytest.raises(ConfigError, match="needs a reference result"):
        rewards.get("improvement_over_reference")(r)


def test_unknown_approach_and_bad_arguments():
    with pytest.raises(ConfigError, match=re.escape("unknown reward approach 'best_metrics'")) as e:
        rewards.get("best_metrics")
    assert "Did you mean 'best_metric'?" in str(e.value)
    with pytest.raises(ConfigError, match="time_penalized needs weight >= 0"):
        rewards.get("time_penalized", weight=-1)
    with pytest.raises(ConfigError, match="reward approach 'best_metric'"):
        rewards.get("best_metric", weight=1)


def test_register_a_custom_approach():
    @rewards.register("test_halved")
    class Halved(rewards.RewardApproach):
        def score(self, result, reference):
            return 0.5 * normalized_score(result.best_metric, result.chance_metric)

    assert "test_halved" in rewards.available()
    assert rewards.get("test_halved")(result([1.0])) == pytest.approx(0.5)


def test_rewards_of_real_trials_rank_a_good_config_above_a_bad_one():
    task = builtin("iris")
    space = SearchSpace.builtin("optimizer")
    good = TorchBackend().evaluate(task, {**space.default(), "lr": 0.01}, seed=0, epochs=10)
    bad = TorchBackend().evaluate(task, {**space.default(), "lr": 1e-5}, seed=0, epochs=10)
    for name in rewards.available():
        if name.startswith("test_"):
            continue
        approach = rewards.get(name)
        assert approach(good, reference=bad) > approach(bad, reference=bad), name
