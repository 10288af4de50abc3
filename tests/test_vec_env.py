"""FanOutVecEnv: envs in process, their trainings at once on an executor's workers."""

from __future__ import annotations

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
    kw = {"budget": 3, "pad_inactive": True, **kw}
    return [lambda: HPOEnv(SPACE, backend, tasks, **kw) for _ in range(n)]


def drive(vec, steps, seed=0):
    """Random allowed actions; what the vec env gave back at every step."""
    rng = np.random.default_rng(seed)
    vec.seed(seed)
    obs = vec.reset()
    trace = [obs]
    for _ in range(steps):
        masks = vec.env_method("action_masks")
        actions = np.array([int(rng.choice(np.flatnonzero(m))) for m in masks])
        obs, rewards, dones, infos = vec.step(actions)
        configs = [info.get("config") for info in infos]
        trace.append((obs, rewards, dones, configs))
    return trace


@pytest.mark.parametrize("reward", ["best_metric", "improvement_over_reference"])
def test_fan_out_steps_exactly_as_sb3s_dummy_vec_env(reward):
    tasks = SyntheticTask.sample(0, 4, n_features=19)
    dummy = DummyVecEnv(env_fns(SyntheticBackend(SPACE), tasks, 3, reward=reward))
    backend = CountingBackend(SPACE)
    fan = FanOutVecEnv(env_fns(backend, tasks, 3, reward=reward), LocalExecutor(1))
    try:
        expected, got = drive(dummy, 200), drive(fan, 200)
    finally:
        fan.close()
    np.testing.assert_array_equal(expected[0], got[0])
    finished = 0
    for (obs, rew, done, configs), (obs2, rew2, done2, configs2) in zip(
        expected[1:], got[1:], strict=True
    ):
        np.testing.assert_array_equal(obs, obs2)
        np.testing.assert_allclose(rew, rew2)
        np.testing.assert_array_equal(done, done2)
        assert configs == configs2
        finished += sum(c is not None for c in configs)
    assert finished >= 3 * (200 // len(SPACE.chosen)) and done.dtype == bool
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
        for _ in range(4 * len(SPACE.chosen)):
            mask = fan.env_method("action_masks")[0]
            action = int(rng.choice(np.flatnonzero(mask)))
            _, rewards, _, infos = fan.step(np.array([action, action]))  # both envs alike
            if "config" in infos[0]:
                assert infos[0]["config"] == infos[1]["config"] and rewards[0] == rewards[1]
                configs.append(json.dumps(infos[0]["config"], sort_keys=True))
    finally:
        fan.close()
    assert len(configs) == 4
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
            if env._padding:
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
        [
            lambda i=i: HPOEnv(SPACE, backend, tasks[i : i + 1], budget=2, pad_inactive=True)
            for i in range(2)
        ],
        "local",
    )
    try:
        assert not isinstance(fan.inner, StoredBackend)  # workers train; only we write
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
