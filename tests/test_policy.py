from __future__ import annotations

import json
import re
import tempfile

import numpy as np
import pytest
from safetensors import safe_open

from hporl import Evaluator, HPOEnv, Policy, PolicyError, SearchSpace, SyntheticBackend
from hporl._io import meta_sha256
from hporl.agents import ALGORITHMS, AgentConfig, action_logits, latest_checkpoint, train_agent
from hporl.backends import SyntheticTask
from hporl.vec_env import FanOutVecEnv
from tests._helpers import make_env_fn, policy_from


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_every_algorithm_trains_and_gives_a_policy(algorithm, small_space, tmp_path, monkeypatch):
    """... and writes nothing outside a run directory when it has none (SB3's default logger
    would leave an empty ``SB3-<time>`` folder in the temporary directory at every run)."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.delenv("SB3_LOGDIR", raising=False)  # the suite sets it (conftest); a user does not
    cfg = AgentConfig(
        algorithm=algorithm,
        total_timesteps=64,
        net_arch=[16],
        seed=0,
        params={"n_steps": 32, "batch_size": 16}
        if "ppo" in algorithm
        else ({"learning_starts": 16} if algorithm == "dqn" else {}),
    )
    agent = train_agent(cfg, [make_env_fn(small_space, SyntheticTask.sample(0, 4))])
    assert agent.num_timesteps >= 64
    policy = policy_from(agent, small_space, cfg)
    config = policy.suggest(SyntheticTask("t", [0.5] * 4))
    assert small_space.validate(config) == config
    assert list(tmp_path.glob("SB3-*")) == []


@pytest.mark.slow
def test_meta_trained_policy_beats_random_choice_on_held_out_tasks(small_space):
    """A real learning test: the best configuration depends on the task's features."""
    backend = SyntheticBackend(small_space)
    train = SyntheticTask.sample(0, 200, n_features=3, prefix="train")
    held_out = SyntheticTask.sample(1, 50, n_features=3, prefix="test")
    cfg = AgentConfig(total_timesteps=6000, seed=0, params={"n_steps": 128, "batch_size": 64})
    agent = train_agent(cfg, [lambda: HPOEnv(small_space, backend, train, budget=1)])
    env = HPOEnv(small_space, backend, train, budget=1)
    policy = Policy.from_agent(
        agent, env.layout, algorithm=cfg.algorithm, policy_kwargs=cfg.policy_kwargs(env.layout)
    )
    learned = np.mean([backend.score(t, policy.suggest(t)) for t in held_out])
    rng = np.random.default_rng(0)
    random = np.mean(
        [backend.score(t, small_space.sample(rng)) for t in held_out for _ in range(10)]
    )
    assert learned > random + 0.15, (learned, random)
    # it reads the features: its suggestions differ across tasks
    assert len({json.dumps(policy.suggest(t), sort_keys=True) for t in held_out}) > 1


def test_save_load_identical_suggestions_and_no_pickle(trained, tmp_path):
    trained.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["policy.json", "policy.safetensors"]
    for p in tmp_path.iterdir():
        assert not p.read_bytes().startswith(b"\x80"), "a pickle"
    with safe_open(str(tmp_path / "policy.safetensors"), "pt") as f:
        assert len(list(f.keys())) > 0
    meta = json.loads((tmp_path / "policy.json").read_text())
    assert (
        meta["layout"]["budget"] == 3
        and meta["hporl_version"]
        and meta["training_tasks"] == ["a", "b"]
    )
    loaded = Policy.load(tmp_path)
    tasks = SyntheticTask.sample(5, 10)
    history = [
        ({"optimizer": "adam", "lr": 1e-3}, 0.7),
        ({"optimizer": "sgd", "lr": 0.1, "momentum": 0.9}, None),
    ]
    for t in tasks:
        for h in ([], history):
            assert loaded.suggest(t, h) == trained.suggest(t, h)
            assert loaded.suggest(t, h, deterministic=False, rng=3) == trained.suggest(
                t, h, deterministic=False, rng=3
            )


def test_load_errors(trained, tmp_path, small_space):
    with pytest.raises(PolicyError, match=r"policy\.json is missing"):
        Policy.load(tmp_path)
    trained.save(tmp_path)
    meta = json.loads((tmp_path / "policy.json").read_text())
    edited = dict(meta, layout={**meta["layout"], "history": 5})
    (tmp_path / "policy.json").write_text(json.dumps(edited))
    with pytest.raises(PolicyError, match=re.escape("policy.json was edited by hand")):
        Policy.load(tmp_path)
    # the same edit with its checksum redone: the weights no longer fit the network
    edited["meta_sha256"] = meta_sha256(edited)
    (tmp_path / "policy.json").write_text(json.dumps(edited))
    with pytest.raises(
        PolicyError,
        match=r"policy\.json is incomplete or edited: history extractor: .* does not match",
    ):
        Policy.load(tmp_path)
    # a network edited consistently (checksum redone): the weights no longer fit it
    narrow = dict(meta, policy_kwargs={**meta["policy_kwargs"], "net_arch": [7]})
    narrow["meta_sha256"] = meta_sha256(narrow)
    (tmp_path / "policy.json").write_text(json.dumps(narrow))
    with pytest.raises(
        PolicyError, match=re.escape("policy.safetensors does not match policy.json")
    ):
        Policy.load(tmp_path)
    (tmp_path / "policy.json").write_text("{not json")
    with pytest.raises(PolicyError, match="is not valid JSON"):
        Policy.load(tmp_path)
    trained.save(tmp_path)
    (tmp_path / "policy.safetensors").write_bytes(b"garbage")
    with pytest.raises(PolicyError, match=r"policy\.safetensors is corrupted or was changed"):
        Policy.load(tmp_path)
    trained.save(tmp_path)
    other = SearchSpace.from_dict(
        {
            **small_space.to_dict()["parameters"],
            "lr": {"type": "float", "low": 1e-4, "high": 1.0, "log": True},
        }
    )
    with pytest.raises(
        PolicyError,
        match=re.escape(
            "parameter 'lr': the policy was trained with low=1e-05, the space has low=0.0001"
        ),
    ):
        Policy.load(tmp_path, space=other)
    with pytest.raises(
        PolicyError, match="the space has parameter 'wd', which the policy was not trained for"
    ):
        trained.check_space(
            small_space + SearchSpace.from_dict({"wd": {"type": "float", "low": 0.0, "high": 1.0}})
        )
    with pytest.raises(PolicyError, match="expects 4 task features, the task gives 3"):
        trained.suggest(SyntheticTask("x", [0.1, 0.2, 0.3]))


def test_avoid_never_repeats(trained):
    task = SyntheticTask("t", [0.3] * 4)
    seen: set[str] = set()
    from hporl.space import config_key

    for i in range(15):
        c = trained.suggest(task, avoid=seen, rng=i)
        assert config_key(c) not in seen
        seen.add(config_key(c))


def test_fine_tune_changes_a_copy_only(trained):
    task = SyntheticTask("t", [0.3] * 4)
    history = [(trained.space.sample(np.random.default_rng(i)), float(i) / 10) for i in range(6)]
    before = {k: v.clone() for k, v in trained.network.state_dict().items()}
    tuned = trained.fine_tune(task, history, steps=20, lr=1e-2)
    after = trained.network.state_dict()
    assert all((before[k] == after[k]).all() for k in before)
    changed = tuned.network.state_dict()
    assert any(not (before[k] == changed[k]).all() for k in before)
    # the best trial's configuration became more likely relative to the worst one
    best_cfg, worst_cfg = history[-1][0], history[0][0]

    def logp(policy, config):
        import torch

        layout = policy.layout
        obs, masks, acts = layout.replay(
            layout.features_block(task.features()), layout.trials_block([]), config
        )
        with torch.no_grad():
            batch = torch.from_numpy(np.stack(obs))
            logits = action_logits(policy.network, policy.algorithm, batch).masked_fill(
                ~torch.from_numpy(np.stack(masks)), -1e9
            )
            return torch.log_softmax(logits, 1).gather(1, torch.tensor(acts)[:, None]).sum().item()

    assert logp(tuned, best_cfg) - logp(tuned, worst_cfg) > logp(trained, best_cfg) - logp(
        trained, worst_cfg
    )


def test_checkpoints_and_resume(small_space, tmp_path):
    cfg = AgentConfig(
        total_timesteps=128,
        checkpoint_every=64,
        net_arch=[16],
        params={"n_steps": 32, "batch_size": 16},
    )
    fn = make_env_fn(small_space, SyntheticTask.sample(0, 4))
    train_agent(cfg, [fn], run_dir=tmp_path)
    first = latest_checkpoint(tmp_path / "checkpoints")
    assert first is not None and first.name == "agent_128_steps.zip"
    assert (tmp_path / "logs" / "progress.csv").exists()
    longer = cfg.model_copy(update={"total_timesteps": 256})
    agent = train_agent(longer, [fn], run_dir=tmp_path, resume=True)
    assert agent.num_timesteps == 256
    again = train_agent(longer, [fn], run_dir=tmp_path, resume=True)  # nothing left to do
    assert again.num_timesteps == 256


@pytest.mark.slow
def test_several_envs_fan_their_trainings_out_to_a_process_pool(small_space):
    cfg = AgentConfig(
        total_timesteps=128, n_envs=2, net_arch=[16], params={"n_steps": 32, "batch_size": 16}
    )
    evaluator = Evaluator(SyntheticBackend(small_space), n_workers=2)  # a pool of 2 processes
    tasks = SyntheticTask.sample(0, 4)
    agent = train_agent(cfg, [lambda: HPOEnv(small_space, evaluator, tasks, budget=1)] * 2)
    assert agent.num_timesteps >= 128 and agent.n_envs == 2
    vec = agent.get_env()
    assert isinstance(vec, FanOutVecEnv) and vec.evaluator is evaluator
    assert evaluator.n_trained > 0 and evaluator.n_workers == 2


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m["layout"].update(n_bins=10**12), r"n_bins must be an integer in \[2, 4096\]"),
        (
            lambda m: m["layout"].update(history=10**12),
            r"history must be an integer in \[0, 100000\]",
        ),
        (lambda m: m["layout"].update(n_features=10**12), r"n_features must be an integer"),
        (lambda m: m["layout"].update(budget=-3), r"budget must be an integer in \[1, 100000\]"),
        (lambda m: m["policy_kwargs"].update(net_arch=[10**12]), r"net_arch must be a list"),
        (lambda m: m["policy_kwargs"]["extractor"].update(d_model=10**12), r"extractor\.d_model"),
    ],
    ids=["n_bins", "history", "n_features", "budget", "net_arch", "d_model"],
)
def test_unbounded_sizes_in_policy_json_are_refused_before_allocating(
    trained, tmp_path, edit, message
):
    # as anyone could: the edit, then the checksum redone
    trained.save(tmp_path)
    meta = json.loads((tmp_path / "policy.json").read_text())
    edit(meta)
    meta["meta_sha256"] = meta_sha256(meta)
    (tmp_path / "policy.json").write_text(json.dumps(meta))
    with pytest.raises(PolicyError, match=message):
        Policy.load(tmp_path)
