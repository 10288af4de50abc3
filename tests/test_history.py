"""The whole-history observation (layout version 2), its set encoder, and task augmentation."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from hporl import ConfigError, HPOEnv, SearchSpace, SyntheticBackend
from hporl.agents import AgentConfig, HistoryExtractor, sb3_policy_kwargs
from hporl.backends import SyntheticTask
from hporl.env import TaskAugmentation
from hporl.observation import TOKEN_PRESENT, ObservationLayout, trial_score
from tests._helpers import SMALL_SPACE

SMALL = SearchSpace.from_dict(SMALL_SPACE)
FIELDS = ("score", "z", "rank", "is_best", "gap", "failed", "present", "index")


def _layout(budget=4, history=None):
    return ObservationLayout(SMALL, 2, budget, 16, budget if history is None else history)


def _tokens(layout, trials):
    _offset, n, width = layout.tokens
    block = layout.trials_block(trials)
    return block[4:].reshape(n, width)


def _field(token, name):
    return token[SMALL.dim + FIELDS.index(name)]


def test_tokens_hold_scores_in_episode_form_and_flags():
    layout = _layout(budget=4)
    rng = np.random.default_rng(0)
    configs = [SMALL.sample(rng) for _ in range(3)]
    tokens = _tokens(layout, [(configs[0], 0.2), (configs[1], None), (configs[2], 0.6)])
    first, failed, third, empty = tokens
    np.testing.assert_allclose(first[: SMALL.dim], SMALL.encode(configs[0]), rtol=1e-6)
    assert _field(first, "score") == pytest.approx(0.2)
    assert _field(first, "z") == pytest.approx(-1.0)  # z-scored among the episode's scores
    assert _field(third, "z") == pytest.approx(1.0)
    assert (_field(first, "rank"), _field(third, "rank")) == (0.0, 1.0)
    assert (_field(first, "is_best"), _field(third, "is_best")) == (0.0, 1.0)
    assert _field(first, "gap") == pytest.approx(-0.4)
    assert _field(failed, "failed") == 1.0 and _field(failed, "score") == 0.0
    assert [_field(t, "index") for t in tokens[:3]] == pytest.approx([0, 0.25, 0.5])
    assert all(_field(t, "present") == 1.0 for t in tokens[:3]) and not empty.any()


def test_scores_are_read_invariantly_to_the_tasks_scale():
    # z-score and rank do not change when every score is moved and stretched (another task)
    layout = _layout(budget=3)
    rng = np.random.default_rng(1)
    configs = [SMALL.sample(rng) for _ in range(3)]
    raw = [0.1, 0.5, 0.3]
    a = _tokens(layout, list(zip(configs, raw, strict=False)))
    b = _tokens(layout, list(zip(configs, [0.9 + 0.01 * s for s in raw], strict=False)))
    for name in ("z", "rank", "is_best"):
        assert [_field(t, name) for t in a] == pytest.approx([_field(t, name) for t in b])


def test_more_trials_than_slots_keep_the_best_and_the_latest():
    layout = _layout(budget=10, history=4)
    scores = [0.9, 0.1, 0.8, 0.2, 0.3, 0.4, 0.5]
    trials = [({"optimizer": "sgd", "lr": 0.01}, s) for s in scores]
    assert layout.kept(trials) == [0, 2, 5, 6]  # the two best, then the two most recent
    assert layout.kept(trials[:3]) == [0, 1, 2]


def test_a_version_1_layout_still_loads_as_saved():
    old = ObservationLayout.from_dict(SMALL, {"n_features": 2, "budget": 3, "history": 3})
    assert old.version == 1 and old.trial_width == SMALL.dim + 4
    assert _layout().version == 2
    with pytest.raises(ConfigError, match="version must be 1 or 2"):
        ObservationLayout(SMALL, 2, 3, version=3)


def _extractor(layout, d_model=8):
    offset, n, width = layout.tokens
    space = gym.spaces.Box(-2, 2, shape=(layout.dim,), dtype=np.float32)
    return HistoryExtractor(
        space,
        d_model=d_model,
        head_dim=offset,
        n_tokens=n,
        token_width=width,
        present=SMALL.dim + TOKEN_PRESENT,
    )


def test_history_extractor_ignores_empty_slots_and_reads_present_ones():
    torch.manual_seed(0)
    layout = _layout(budget=4)
    net = _extractor(layout)
    rng = np.random.default_rng(0)
    trials = [(SMALL.sample(rng), 0.3), (SMALL.sample(rng), 0.7)]
    obs = layout.observe(np.zeros(2), 0, {}, trials)
    offset, _n, width = layout.tokens
    junk = obs.copy()
    junk[offset + 2 * width : offset + 3 * width - 1] = 1.5  # an empty slot, present flag 0
    junk[offset + 2 * width + SMALL.dim + TOKEN_PRESENT] = 0.0
    other = layout.observe(np.zeros(2), 0, {}, [trials[0], (trials[1][0], 0.1)])
    with torch.no_grad():
        a, b, c = net(torch.as_tensor(np.stack([obs, junk, other])))
    assert a.shape == (4 * 8,)
    torch.testing.assert_close(a, b)  # what sits in an empty slot is never read
    assert not torch.allclose(a, c)  # a different score is
    empty = layout.observe(np.zeros(2), 0, {}, [])
    with torch.no_grad():
        assert torch.isfinite(net(torch.as_tensor(empty)[None])).all()


def test_history_extractor_refuses_a_layout_that_does_not_fit():
    layout = _layout(budget=4)
    offset, n, width = layout.tokens
    space = gym.spaces.Box(-2, 2, shape=(layout.dim + 1,), dtype=np.float32)
    with pytest.raises(ConfigError, match="does not match the observation"):
        HistoryExtractor(
            space, d_model=8, head_dim=offset, n_tokens=n, token_width=width, present=0
        )
    kwargs = AgentConfig().policy_kwargs(layout)
    assert kwargs["extractor"]["n_tokens"] == 4
    assert sb3_policy_kwargs(kwargs)["features_extractor_class"] is HistoryExtractor
    assert "extractor" not in AgentConfig(extractor="mlp").policy_kwargs(layout)


def test_task_augmentation_moves_the_landscape_not_what_the_policy_sees():
    tasks = SyntheticTask.sample(0, 3)
    augment = TaskAugmentation(shift=0.2, warp=0.5, noise=0.0)
    env = HPOEnv(SMALL, SyntheticBackend(SMALL), tasks, budget=2, augment=augment)
    env.reset(seed=3)
    assert env._shift and all(abs(d) <= 0.2 for d in env._shift.values())
    mask = env.action_masks()
    info = {}
    while "config" not in info:
        _, _, _, _, info = env.step(int(np.flatnonzero(mask)[-1]))
        mask = env.action_masks()
    chosen = info["config"]
    moved = env._moved(chosen)
    assert moved != chosen  # evaluated elsewhere ...
    again = env.evaluator.evaluate(env.task, moved, seed=0)
    assert info["result"].best_metric == again.best_metric
    seen = env._trials[-1][1]  # ... and its score warped, monotonically
    score = trial_score(info["result"])
    assert env._warp != pytest.approx(1.0)
    assert seen == pytest.approx(np.sign(score) * abs(score) ** env._warp)
    # an episode on a named task is the task as it is
    env.reset(seed=3, options={"task": tasks[0]})
    assert env._shift == {} and env._moved(chosen) == chosen


def test_proposals_encode_the_history_once_and_propose_the_same(trained, monkeypatch):
    from hporl import policy as policy_module

    assert isinstance(trained.network.pi_features_extractor, HistoryExtractor)
    rng = np.random.default_rng(0)
    task = SyntheticTask.sample(3, 1)[0]
    histories = [[]]
    for k in range(1, 4):
        histories.append([(trained.space.sample(rng), float(rng.random())) for _ in range(k)])
    fast = [trained.suggest(task, h) for h in histories]
    sampled = [trained.suggest(task, h, deterministic=False, rng=7) for h in histories]

    class Never:  # no extractor is one: every step runs the whole network
        pass

    monkeypatch.setattr(policy_module, "HistoryExtractor", Never)
    assert [trained.suggest(task, h) for h in histories] == fast
    assert [trained.suggest(task, h, deterministic=False, rng=7) for h in histories] == sampled
