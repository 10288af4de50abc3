"""FanOutVecEnv: envs in process, their trainings at once on an executor's workers."""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import json
import os
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState
from stable_baselines3.common.vec_env import DummyVecEnv

from hporl import ConfigError, Evaluator, HPOEnv, SearchSpace, SyntheticBackend
from hporl.backends import SyntheticTask
from hporl.store import TrialStore
from hporl.vec_env import FanOutVecEnv

SPACE = SearchSpace.builtin("optimizer")


class CountingBackend(SyntheticBackend):
    """SyntheticBackend that counts its evaluations (in process: one local worker)."""

    def __init__(self, space: SearchSpace) -> None:
        super().__init__(space)
        self.calls: list[tuple[str, str]] = []

    def evaluate(self, task, config, **kwargs):
        self.calls.append((task.name, json.dumps(config, sort_keys=True)))
        return super().evaluate(task, config, **kwargs)


def env_fns(backend, tasks, n, *, n_workers=1, **kw):
    """``n`` env builders sharing one evaluator of ``backend`` (in process for one worker)."""
    kw = {"budget": 3, **kw}
    evaluator = Evaluator(backend, n_workers=n_workers)
    return [lambda: HPOEnv(SPACE, evaluator, tasks, **kw) for _ in range(n)]


class Step(NamedTuple):
    obs: np.ndarray  # before the step
    masks: list
    actions: np.ndarray
    rewards: np.ndarray
    dones: np.ndarray
    infos: list
    waiting: list  # which envs were waiting


def drive(vec, until, seed=0):
    """Step ``vec`` with random allowed actions, each env from its own generator (drawn only
    when it chooses), for ``until`` steps or until ``until(trace)``; the trace of Steps."""
    rngs = [np.random.default_rng(seed + i) for i in range(vec.num_envs)]
    vec.seed(seed)
    obs = vec.reset()
    trace: list[Step] = []
    while len(trace) < until if isinstance(until, int) else not until(trace):
        masks = vec.env_method("action_masks")
        waiting = vec.get_attr("waiting")
        actions = np.array(
            [
                0 if w else int(rng.choice(np.flatnonzero(m)))
                for m, w, rng in zip(masks, waiting, rngs, strict=True)
            ]
        )
        new_obs, rewards, dones, infos = vec.step(actions)
        trace.append(Step(obs, masks, actions, rewards, dones, infos, waiting))
        obs = new_obs
    return trace


def assert_plays_as_alone(trace, i, plain):
    """Env ``i`` of the trace, replayed through ``plain`` (a fresh HPOEnv built alike) with its
    own actions (not the forced ones), sees the same observations, chooses the same
    configurations and earns the same rewards: waiting changes when a trial ends, not what."""
    plain.reset(seed=i)  # vec.seed(s) seeds env i with s + i
    replay, wanted = [], []
    for step in trace:
        if "config" in step.infos[i]:
            wanted.append((step.infos[i]["config"], pytest.approx(float(step.rewards[i]))))
        if step.waiting[i]:
            continue
        np.testing.assert_array_equal(step.obs[i], plain.observe())
        _, reward, done, _, info = plain.step(step.actions[i])
        if "config" in info:
            replay.append((info["config"], reward))
        if done:
            plain.reset()
    # a trial still under way at the end: the plain env has had it, the fanned-out one not
    assert wanted == replay[: len(wanted)] and len(replay) - len(wanted) <= 1
    assert len(wanted) >= 2


@pytest.mark.parametrize("reward", ["best_metric", "improvement_over_reference"])
def test_one_env_fanned_out_steps_exactly_as_sb3s_dummy_vec_env(reward):
    tasks = SyntheticTask.sample(0, 4, n_features=19)
    dummy = DummyVecEnv(env_fns(SyntheticBackend(SPACE), tasks, 1, reward=reward))
    fan = FanOutVecEnv(env_fns(SyntheticBackend(SPACE), tasks, 1, reward=reward))
    try:
        expected, got = drive(dummy, 120), drive(fan, 120)
    finally:
        fan.close()
    for want, step in zip(expected, got, strict=True):
        assert step.waiting == [False]
        np.testing.assert_array_equal(want.obs, step.obs)
        np.testing.assert_array_equal(want.masks[0], step.masks[0])
        np.testing.assert_allclose(want.rewards, step.rewards)
        np.testing.assert_array_equal(want.dones, step.dones)
        assert want.infos[0].get("config") == step.infos[0].get("config")
    assert sum("config" in step.infos[0] for step in got) >= 120 // len(SPACE.chosen)


@pytest.mark.parametrize("reward", ["best_metric", "improvement_over_reference"])
def test_envs_finish_their_trials_together_and_each_plays_as_a_plain_env(reward):
    tasks = SyntheticTask.sample(0, 4, n_features=19)
    backend = CountingBackend(SPACE)
    fan = FanOutVecEnv(env_fns(backend, tasks, 3, reward=reward))
    try:
        trace = drive(fan, 300)
    finally:
        fan.close()
    forced = np.zeros(fan.hpo[0].layout.n_actions, dtype=bool)
    forced[0] = True
    rounds, length = [], 0
    for step in trace:
        for mask, wait in zip(step.masks, step.waiting, strict=True):
            assert not wait or (mask == forced).all()  # a waiting env's one action: 0
        finished = ["config" in info for info in step.infos]
        assert all(finished) or not any(finished)  # a round ends for every env on one step
        length += 1
        if all(finished):
            assert not all(step.waiting)  # the last to choose ends the round
            rounds.append(length)
            length = 0
        else:
            assert not step.rewards.any()
    assert len(rounds) >= 300 // len(SPACE.chosen) and any(any(s.waiting) for s in trace)
    for i in range(3):
        plain = HPOEnv(SPACE, SyntheticBackend(SPACE), tasks, budget=3, reward=reward)
        assert_plays_as_alone(trace, i, plain)
    # one cache for all envs: no evaluation ran twice
    assert len(backend.calls) == len(set(backend.calls)) == fan.evaluator.n_trained


def test_envs_finishing_the_same_configuration_train_it_once():
    task = SyntheticTask.sample(1, 1, n_features=19)
    backend = CountingBackend(SPACE)
    fan = FanOutVecEnv(env_fns(backend, task, 2, budget=2))
    try:
        fan.reset()
        rng = np.random.default_rng(0)
        configs = []
        while len(configs) < 4:
            mask = fan.env_method("action_masks")[0]
            action = int(rng.choice(np.flatnonzero(mask)))
            _, rewards, _, infos = fan.step(np.array([action, action]))  # both envs alike
            if "config" in infos[0]:
                assert infos[0]["config"] == infos[1]["config"] and rewards[0] == rewards[1]
                configs.append(json.dumps(infos[0]["config"], sort_keys=True))
    finally:
        fan.close()
    # in process, the first env's evaluation is done when the second asks: served from memory
    assert len(backend.calls) == len(set(configs)) == fan.evaluator.n_trained
    assert fan.evaluator.n_memory_hits == 4


def test_fan_out_refuses_envs_it_cannot_step_together():
    tasks = SyntheticTask.sample(0, 2, n_features=19)
    fns = [
        lambda: HPOEnv(SPACE, SyntheticBackend(SPACE), tasks),
        lambda: HPOEnv(SPACE, SyntheticBackend(SPACE), tasks),
    ]
    with pytest.raises(ConfigError, match="share one Evaluator"):
        FanOutVecEnv(fns)
    with pytest.raises(ConfigError, match="wait must be one of round, own, got 'never'"):
        FanOutVecEnv(fns[:1], wait="never")


class Sleepy(SyntheticBackend):
    """Notes when and where each evaluation ran; the first evaluation of a configuration
    listed in ``kill`` kills its worker process."""

    def __init__(self, space, log_dir, kill=()):
        super().__init__(space)
        self.log_dir, self.kill = str(log_dir), [json.dumps(c, sort_keys=True) for c in kill]

    def evaluate(self, task, config, **kwargs):
        key = json.dumps(config, sort_keys=True)
        marker = Path(self.log_dir) / f"killed-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
        if key in self.kill and not marker.exists():
            marker.write_text(key)
            os._exit(1)
        start = time.time()
        time.sleep(1.0)
        with open(Path(self.log_dir) / f"{os.getpid()}.log", "a") as f:
            f.write(json.dumps([task.name, key, start, time.time()]) + "\n")
        return super().evaluate(task, config, **kwargs)


def _forced(vec, configs):
    """Step every env through ``configs[i]`` (one per env) until each finishes it."""
    infos_out = [None] * vec.num_envs
    while any(i is None for i in infos_out):
        actions = []
        for env, config in zip(vec.hpo, configs, strict=True):
            if env.waiting:
                actions.append(0)
            else:
                name = env.space.parameters[env._position].name
                actions.append(env.layout.action_of(name, config[name]))
        _, _, _, infos = vec.step(np.array(actions))
        for i, info in enumerate(infos):
            if "config" in info:
                infos_out[i] = info
    return infos_out


@pytest.mark.slow
def test_trainings_of_one_step_run_at_once_on_workers_and_a_dead_worker_is_retried(tmp_path):
    tasks = SyntheticTask.sample(2, 2, n_features=19)
    rng = np.random.default_rng(3)
    bins = {p.name: SPACE.bins(p.name, 8) for p in SPACE.chosen}
    picks = []
    for _ in range(4):  # configurations every env can reach with its binned actions
        partial = {}
        for p in SPACE.parameters:
            if SPACE.is_active(p.name, partial) and p.name in bins:
                partial[p.name] = bins[p.name][int(rng.integers(len(bins[p.name])))]
        picks.append(SPACE.validate(partial))
    store = TrialStore(tmp_path / "t.db")
    evaluator = Evaluator(
        Sleepy(SPACE, tmp_path, kill=[picks[2]]), store=store, run="r", space=SPACE, n_workers=2
    )
    fan = FanOutVecEnv(
        [
            lambda i=i: HPOEnv(SPACE, evaluator, tasks[i : i + 1], budget=2, n_bins=8)
            for i in range(2)
        ]
    )
    try:
        # Both workers up (each imports torch first), so neither takes both of the next two.
        executor = fan.evaluator.executor
        cf.wait([executor.submit(SPACE.default(), task=tasks[0]) for _ in range(2)])
        fan.reset()
        first = _forced(fan, picks[:2])
        second = _forced(fan, picks[2:])  # picks[2] kills its worker the first time
    finally:
        fan.close()
    runs = [
        json.loads(line) for log in tmp_path.glob("*.log") for line in log.read_text().splitlines()
    ]
    assert len(list(tmp_path.glob("*.log"))) >= 2  # worker processes
    pairs = [r for r in runs if r[1] in {json.dumps(c, sort_keys=True) for c in picks[:2]}]
    assert len(pairs) == 2 and max(r[2] for r in pairs) < min(r[3] for r in pairs)  # overlap
    assert fan.evaluator.n_retried >= 1 and fan.evaluator.n_trained == 4
    assert all(info["result"].ok for info in first + second)
    trials = [
        t
        for n in optuna.get_all_study_names(store.url)
        for t in optuna.load_study(study_name=n, storage=store.url).trials
    ]
    assert len(trials) == 4 and all(t.state == TrialState.COMPLETE for t in trials)


class Delayed(SyntheticBackend):
    """SyntheticBackend that takes ``delays[task.name]`` seconds per evaluation."""

    def __init__(self, space, delays):
        super().__init__(space)
        self.delays = delays

    def evaluate(self, task, config, **kwargs):
        time.sleep(self.delays.get(task.name, 0.0))
        return super().evaluate(task, config, **kwargs)


@pytest.mark.slow
@pytest.mark.parametrize("wait", ["round", "own"])
def test_waiting_for_own_trainings_lets_a_fast_env_go_on_while_a_slow_one_trains(wait):
    slow, fast = SyntheticTask.sample(4, 2, n_features=19)
    backend = Delayed(SPACE, {slow.name: 1.5})
    evaluator = Evaluator(backend, n_workers=2)
    fan = FanOutVecEnv(
        [
            lambda: HPOEnv(SPACE, evaluator, [slow], budget=20),
            lambda: HPOEnv(SPACE, evaluator, [fast], budget=20),
        ],
        wait=wait,
    )
    try:
        trace = drive(fan, lambda t: sum("config" in step.infos[0] for step in t) >= 3)
    finally:
        fan.close()
    counts = [sum("config" in step.infos[i] for step in trace) for i in range(2)]
    if wait == "round":
        assert counts[1] == 3  # the fast env keeps to the slow one's rounds
    else:
        assert counts[1] > 6 and fan.n_waits > 0  # it went on while the slow one trained
    for i, task in enumerate((slow, fast)):
        assert_plays_as_alone(trace, i, HPOEnv(SPACE, SyntheticBackend(SPACE), [task], budget=20))
