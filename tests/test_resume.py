"""Meta-training resumes from its store and its checkpoints; damaged checkpoints are refused."""

from __future__ import annotations

import json
import re

import pytest

from hporl import ConfigError, run_experiment
from hporl.agents import AgentConfig, latest_checkpoint, train_agent
from hporl.backends import SyntheticTask
from tests._helpers import make_env_fn


@pytest.fixture
def experiment(tiny_experiment):
    """The tiny experiment with half its PPO steps (these tests count trials, not learning)."""
    agent = {"total_timesteps": 64, "net_arch": [16], "params": {"n_steps": 32, "batch_size": 16}}
    return tiny_experiment(name="resume", agent=agent)


def test_meta_training_run_again_trains_nothing_twice(experiment, tmp_path):
    store = tmp_path / "store.db"
    run_experiment(experiment, out=tmp_path / "a", storage=store)
    first = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert first["trained"] > 0 and first["store_hits"] == 0
    run_experiment(experiment, out=tmp_path / "b", storage=store)
    second = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert second["trained"] == 0 and second["store_hits"] == first["trained"]


def test_meta_training_stores_trials_in_its_run_directory(experiment, tmp_path):
    import optuna

    run_experiment(experiment, out=tmp_path)
    url = f"sqlite:///{tmp_path / 'trials.db'}"
    names = optuna.get_all_study_names(url)
    assert names and set(names) <= {"resume/iris", "resume/wine"}  # the tasks episodes drew
    summary = json.loads((tmp_path / "summary.json").read_text())
    n = sum(len(optuna.load_study(study_name=s, storage=url).trials) for s in names)
    assert n == summary["trained"]


@pytest.fixture
def checkpoints(small_space, tmp_path):
    cfg = AgentConfig(
        total_timesteps=128,
        checkpoint_every=64,
        net_arch=[16],
        params={"n_steps": 32, "batch_size": 16},
    )
    train_agent(cfg, [make_env_fn(small_space, SyntheticTask.sample(0, 4))], run_dir=tmp_path)
    folder = tmp_path / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == [
        "agent_128_steps.zip",
        "agent_128_steps.zip.sha256",
        "agent_64_steps.zip",
        "agent_64_steps.zip.sha256",
    ]
    return folder


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_damaged_checkpoint_is_refused(checkpoints, damage):
    path = checkpoints / "agent_128_steps.zip"
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(
        ConfigError, match=re.escape("agent_128_steps.zip is corrupted or was changed")
    ):
        latest_checkpoint(checkpoints)


def test_checkpoint_without_checksum_is_skipped(checkpoints):
    (checkpoints / "agent_128_steps.zip.sha256").unlink()  # a save that did not finish
    assert latest_checkpoint(checkpoints) == checkpoints / "agent_64_steps.zip"


@pytest.mark.parametrize("algorithm", ["maskable_ppo", "ppo", "a2c", "dqn"])
def test_resume_unpickles_nothing(small_space, tmp_path, monkeypatch, algorithm):
    import cloudpickle

    params = {"dqn": {"learning_starts": 16}, "a2c": {"n_steps": 8}}.get(
        algorithm, {"n_steps": 32, "batch_size": 16}
    )
    cfg = AgentConfig(
        algorithm=algorithm, total_timesteps=64, checkpoint_every=32, net_arch=[16], params=params
    )
    fn = make_env_fn(small_space, SyntheticTask.sample(0, 4))
    train_agent(cfg, [fn], run_dir=tmp_path)

    def refuse(*_args, **_kwargs):
        raise AssertionError("a checkpoint was unpickled")

    monkeypatch.setattr(cloudpickle, "loads", refuse)
    monkeypatch.setattr("pickle.loads", refuse)
    longer = cfg.model_copy(update={"total_timesteps": 128})
    agent = train_agent(longer, [fn], run_dir=tmp_path, resume=True)
    assert agent.num_timesteps >= 128


def test_checkpoint_with_an_unknown_pickled_entry_is_refused(checkpoints, small_space):
    import zipfile

    path = checkpoints / "agent_128_steps.zip"
    with zipfile.ZipFile(path) as z:
        files = {n: z.read(n) for n in z.namelist()}
    data = json.loads(files["data"])
    data["surprise"] = {":type:": "<class 'x'>", ":serialized:": "gAR9lC4="}
    files["data"] = json.dumps(data).encode()
    with zipfile.ZipFile(path, "w") as z:
        for n, b in files.items():
            z.writestr(n, b)
    from hporl._io import write_checksum

    write_checksum(path)  # a consistent checksum: the content is what is refused
    cfg = AgentConfig(total_timesteps=256, net_arch=[16], params={"n_steps": 32, "batch_size": 16})
    fn = make_env_fn(small_space, SyntheticTask.sample(0, 4))
    with pytest.raises(ConfigError, match="pickled entry 'surprise' that hporl does not rebuild"):
        train_agent(cfg, [fn], run_dir=checkpoints.parent, resume=True)
