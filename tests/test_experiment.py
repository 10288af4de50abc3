from __future__ import annotations

import json
import re

import pytest
import torch

from hporl import ConfigError, ExperimentConfig, Policy, run_experiment
from hporl.observation import ObservationLayout
from hporl.tasks import FEATURE_NAMES, builtin


def test_run_experiment_from_yaml_on_real_tasks(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text(
        "name: tiny\n"
        "tasks: [small, breast_cancer]\n"
        "space: optimizer\n"
        "backend: {epochs: 1}\n"
        "reward: curve_auc\n"
        "budget: 2\n"
        "agent: {total_timesteps: 96, net_arch: [16], params: {n_steps: 48, batch_size: 16}}\n"
    )
    policy = run_experiment(path, out=tmp_path / "run")
    assert policy.training_tasks == ["iris", "wine", "breast_cancer"]
    assert policy.reward == "curve_auc" and policy.budget == 2
    assert policy.feature_names == list(FEATURE_NAMES)
    run = tmp_path / "run"
    assert (run / "policy" / "policy.safetensors").exists()
    assert json.loads((run / "summary.json").read_text())["timesteps"] >= 96
    assert (run / "logs" / "progress.csv").exists()
    experiment = json.loads((run / "experiment.json").read_text())
    assert experiment["name"] == "tiny" and experiment["tasks"] == policy.training_tasks
    # the feature normalisation is that of the training tasks
    tasks = [builtin(name) for name in policy.training_tasks]
    mean, scale = ObservationLayout.normalisation([t.features() for t in tasks])
    assert policy.layout.feature_mean == pytest.approx(mean)
    assert policy.layout.feature_scale == pytest.approx(scale)
    loaded = Policy.load(run)  # a run directory works too
    assert loaded.training_tasks == policy.training_tasks and loaded.layout == policy.layout
    saved, trained = loaded.network.state_dict(), policy.network.state_dict()
    assert saved.keys() == trained.keys()
    assert all(torch.equal(saved[k], trained[k]) for k in saved)
    held_out = builtin("digits")
    assert loaded.suggest(held_out) == policy.suggest(held_out)
    assert policy.space.validate(policy.suggest(held_out)) == policy.suggest(held_out)


def test_run_experiment_with_csv_and_synthetic_tasks(tmp_path):
    import numpy as np

    rng = np.random.default_rng(0)
    X = rng.normal(size=(80, 3))
    y = (X[:, 0] > 0).astype(int)
    csv = tmp_path / "d.csv"
    csv.write_text(
        "a,b,c,y\n" + "\n".join(f"{r[0]},{r[1]},{r[2]},{t}" for r, t in zip(X, y, strict=True))
    )
    config = ExperimentConfig.parse(
        {
            "tasks": [{"csv": str(csv), "target": "y", "model": "linear"}],
            "backend": {"epochs": 1},
            "budget": 1,
            "agent": {"total_timesteps": 32, "params": {"n_steps": 32, "batch_size": 16}},
        }
    )
    policy = run_experiment(config, out=tmp_path / "csvrun")
    assert policy.training_tasks == ["d"]
    synthetic = run_experiment(
        {
            "tasks": [{"synthetic": 10, "n_features": 3}],
            "backend": {"name": "synthetic"},
            "space": "optimizer",
            "agent": {"total_timesteps": 64, "params": {"n_steps": 32, "batch_size": 16}},
        },
        out=tmp_path / "synth",
    )
    assert synthetic.layout.n_features == 3 and synthetic.feature_names is None


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"tasks": ["iris"], "bugdet": 3}, "unknown key 'bugdet'. Did you mean 'budget'?"),
        (
            {"tasks": ["iris"], "agent": {"algoritm": "ppo"}},
            "unknown key 'agent.algoritm'. Did you mean 'algorithm'?",
        ),
        ({"tasks": ["iris"], "agent": {"algorithm": "sac"}}, "agent.algorithm: Input should be"),
        ({"tasks": ["iris"], "budget": 0}, "budget: Input should be greater than 0"),
        ({"tasks": []}, "tasks: List should have at least 1 item"),
        ({"tasks": ["iris"], "reward": "best"}, "unknown reward approach 'best'"),
    ],
)
def test_bad_experiment_configs(data, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        ExperimentConfig.parse(data)


def test_bad_experiment_files(tmp_path):
    path = tmp_path / "e.yaml"
    path.write_text("tasks: [iris]\nagent: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(
        ConfigError,
        match=re.escape(f"{path}: YAML tag '!!python/object/apply:os.system' at line 2"),
    ):
        ExperimentConfig.from_yaml(path)
    path.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="must be a mapping of keys"):
        ExperimentConfig.from_yaml(path)
    with pytest.raises(ConfigError, match="cannot read experiment file"):
        ExperimentConfig.from_yaml(tmp_path / "absent.yaml")


def test_unknown_task_and_space_fail_before_training(tmp_path):
    from hporl import TaskError

    with pytest.raises(TaskError, match="unknown built-in task 'irsi'"):
        run_experiment({"tasks": ["irsi"]}, out=tmp_path / "a")
    with pytest.raises(ConfigError, match="neither a built-in space"):
        run_experiment({"tasks": ["iris"], "space": "nope"}, out=tmp_path / "b")
    with pytest.raises(ConfigError, match=re.escape("need backend: {name: synthetic}")):
        run_experiment({"tasks": [{"synthetic": 3}]}, out=tmp_path / "c")
