"""FanOutVecEnv: envs in process, their trainings at once on an executor's workers."""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState
from stable_baselines3.common.vec_env import DummyVecEnv

from hporl import ConfigError, HPOEnv, SearchSpace, SyntheticBackend
from hporl.backends import SyntheticTask
from hporl.executors import LocalExecutor
from hporl.store import StoredBackend, TrialStore
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


def env_fns(backend, tasks, n, **kw):
    kw = {"budget": 3, **kw}
    return [lambda: HPOEnv(SPACE, backend, tasks, **kw) for _ in range(n)]


def drive(vec, steps, seed=0):
    """Random allowed actions; per step: observations, masks, actions, rewards, dones, infos
    and which envs were waiting."""
    rng = np.random.default_rng(seed)
    vec.seed(seed)
    obs = vec.reset()
    trace = []
    for _ in range(steps):
        masks = vec.env_method("action_masks")
        waiting = vec.get_attr("waiting")
        actions = np.array([int(rng.choice(np.flatnonzero(m))) for m in masks])
        new_obs, rewards, dones, infos = vec.step(actions)
        trace.append((obs, masks, actions, rewards, dones, infos, waiting))
        obs = new_obs
    return trace


@pytest.mark.parametrize("reward", ["best_metric", "improvement_over_reference"])
def test_one_env_fanned_out_steps_exactly_as_sb3s_dummy_vec_env(reward):
    tasks = SyntheticTask.sample(0, 4, n_features=19)
    dummy = DummyVecEnv(env_fns(SyntheticBackend(SPACE), tasks, 1, reward=reward))
    fan = FanOutVecEnv(env_fns(SyntheticBackend(SPACE), tasks, 1, reward=reward), LocalExecutor(1))
    try:
        expected, got = drive(dummy, 120), drive(fan, 120)
    finally:
        fan.close()
    for (obs, masks, _, rew, done, infos, _), (obs2, masks2, _, rew2, done2, infos2, wait) in zip(
        expected, got, strict=True
    ):
        assert wait == [False]
        np.testing.assert_array_equal(obs, obs2)
        np.testing.assert_array_equal(masks[0], masks2[0])
        np.testing.assert_allclose(rew, rew2)
        np.testing.assert_array_equal(done, done2)
        assert infos[0].get("config") == infos2[0].get("config")
    assert sum("config" in step[5][0] for step in got) >= 120 // len(SPACE.chosen)


@pytest.mark.parametrize("reward", ["best_metric", "improvement_over_reference"])
def test_envs_finish_their_trials_together_and_each_plays_as_a_plain_env(reward):
    tasks = SyntheticTask.sample(0, 4, n_features=19)
    backend = CountingBackend(SPACE)
    fan = FanOutVecEnv(env_fns(backend, tasks, 3, reward=reward), LocalExecutor(1))
    try:
        trace = drive(fan, 300)
    finally:
        fan.close()
    forced = np.zeros(fan.hpo[0].layout.n_actions, dtype=bool)
    forced[0] = True
    rounds, length = [], 0
    for _, masks, _, rewards, _, infos, waiting in trace:
        for mask, wait in zip(masks, waiting, strict=True):
            assert not wait or (mask == forced).all()  # a waiting env's one action: 0
        finished = ["config" in info for info in infos]
        assert all(finished) or not any(finished)  # a round ends for every env on one step
        length += 1
        if all(finished):
            assert not all(waiting)  # the last to choose ends the round
            rounds.append(length)
            length = 0
        else:
            assert not rewards.any()
    assert len(rounds) >= 300 // len(SPACE.chosen) and any(w.count(True) for *_, w in trace)
    # Each env, replayed alone with its own actions (not the forced ones), chooses the same
    # configurations and earns the same rewards: waiting changes when a trial ends, not what.
    for i in range(3):
        plain = HPOEnv(SPACE, SyntheticBackend(SPACE), tasks, budget=3, reward=reward)
        plain.reset(seed=i)  # vec.seed(0) seeds env i with 0 + i
        replay, wanted = [], []
        for obs, _, actions, rewards, _, infos, waiting in trace:
            if "config" in infos[i]:
                wanted.append((infos[i]["config"], pytest.approx(float(rewards[i]))))
            if waiting[i]:
                continue
            np.testing.assert_array_equal(obs[i], plain.observe())
            _, reward_i, done, _, info = plain.step(actions[i])
            if "config" in info:
                replay.append((info["config"], reward_i))
            if done:
                plain.reset()
        # the round still open at the end: the plain env has had its trial, the fanned one not
        assert wanted == replay[: len(wanted)] and len(replay) - len(wanted) <= 1
    # one cache for all envs: no evaluation ran twice
    assert len(backend.calls) == len(set(backend.calls)) == fan.n_trained


def test_envs_finishing_the_same_configuration_train_it_once():
    task = SyntheticTask.sample(1, 1, n_features=19)
    backend = CountingBackend(SPACE)
    fan = FanOutVecEnv(env_fns(backend, task, 2, budget=2), LocalExecutor(1))
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
    assert len(backend.calls) == len(set(configs)) and fan.n_shared == 4
    assert sum(fan.get_attr("n_evaluations")) == len(set(configs))


def test_fan_out_refuses_envs_it_cannot_step_together():
    tasks = SyntheticTask.sample(0, 2, n_features=19)
    fns = [
        lambda: HPOEnv(SPACE, SyntheticBackend(SPACE), tasks),
        lambda: HPOEnv(SPACE, SyntheticBackend(SPACE), tasks),
    ]
    with pytest.raises(ConfigError, match="share one backend"):
        FanOutVecEnv(fns, LocalExecutor(1))
    with pytest.raises(ConfigError, match="wait must be one of round, own, got 'never'"):
        FanOutVecEnv(fns[:1], LocalExecutor(1), wait="never")


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
    backend = StoredBackend(Sleepy(SPACE, tmp_path, kill=[picks[2]]), store, run="r", space=SPACE)
    fan = FanOutVecEnv(
        [lambda i=i: HPOEnv(SPACE, backend, tasks[i : i + 1], budget=2) for i in range(2)],
        "local",
    )
    try:
        assert not isinstance(fan.inner, StoredBackend)  # workers train; only we write
        # Both workers up (each imports torch first), so neither takes both of the next two.
        cf.wait([fan.executor.submit(SPACE.default(), task=tasks[0]) for _ in range(2)])
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
    assert fan.n_retried >= 1 and fan.n_trained == 4
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
    fan = FanOutVecEnv(
        [
            lambda: HPOEnv(SPACE, backend, [slow], budget=20),
            lambda: HPOEnv(SPACE, backend, [fast], budget=20),
        ],
        "local",
        wait=wait,
    )
    try:
        trace = []
        fan.seed(0)
        obs = fan.reset()
        rngs = [np.random.default_rng(i) for i in range(2)]
        counts = [0, 0]
        while counts[0] < 3:
            waiting = fan.get_attr("waiting")
            actions = np.array(
                [
                    0 if w else int(rng.choice(np.flatnonzero(env.action_masks())))
                    for w, rng, env in zip(waiting, rngs, fan.hpo, strict=True)
                ]
            )
            new_obs, rewards, _, infos = fan.step(actions)
            trace.append((obs, actions, rewards, infos, waiting))
            obs = new_obs
            counts = [c + ("config" in info) for c, info in zip(counts, infos, strict=True)]
    finally:
        fan.close()
    if wait == "round":
        assert counts[1] == 3  # the fast env keeps to the slow one's rounds
    else:
        assert counts[1] > 6 and fan.n_waits > 0  # it went on while the slow one trained
    for i, task in enumerate((slow, fast)):  # waiting changes when a trial ends, not what
        plain = HPOEnv(SPACE, SyntheticBackend(SPACE), [task], budget=20)
        plain.reset(seed=i)
        replay, wanted = [], []
        for obs_i, actions, rewards, infos, waiting in trace:
            if "config" in infos[i]:
                wanted.append((infos[i]["config"], pytest.approx(float(rewards[i]))))
            if waiting[i]:
                continue
            np.testing.assert_array_equal(obs_i[i], plain.observe())
            _, reward, done, _, info = plain.step(actions[i])
            if "config" in info:
                replay.append((info["config"], reward))
            if done:
                plain.reset()
        assert wanted == replay[: len(wanted)] and len(replay) - len(wanted) <= 1
