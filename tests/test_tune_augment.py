"""tune_model over `optimizer + autoaugment` on image tasks, and its refusal on other tasks."""

from __future__ import annotations

import json
import re

import pytest
import torch

import hporl
from hporl import TaskError
from hporl.augment import AugmentPolicy, autoaugment_space
from hporl.tasks import builtin
from tests._helpers import accuracy_on_test_split


def _space(policies: list[str]) -> dict:
    aug = autoaugment_space(2, policies=policies).to_dict()["parameters"]
    return {"name": "opt+aug", "include": ["optimizer"], "parameters": aug}


@pytest.fixture(scope="module")
def image_policy(tmp_path_factory, tiny_experiment):
    """A policy meta-trained for a few steps on two image tasks over `optimizer` + AutoAugment
    (2 sub-policies), one epoch per trial."""
    out = tmp_path_factory.mktemp("meta-aug")
    policy = hporl.run_experiment(
        tiny_experiment(
            name="tiny-aug",
            tasks=["digits_image", "shapes"],
            space=_space(["autoaugment"]),
            backend={"epochs": 1},
        ),
        out=out,
    )
    return policy


@pytest.mark.slow
def test_tune_over_optimizer_and_autoaugment_on_digits_images(image_policy, tmp_path):
    task = builtin("digits_image", epochs=2)
    result = hporl.tune_model(data=task, policy=image_policy, n_trials=2, out=tmp_path / "tuned")
    config = result.config
    assert "lr" in config and config["augment"] == "autoaugment"
    policy = AugmentPolicy.from_config(config)
    assert len(policy.subpolicies) == 2
    for i in (1, 2):
        for j in (1, 2):
            assert {f"subpolicy{i}_op{j}", f"subpolicy{i}_prob{j}", f"subpolicy{i}_mag{j}"} <= set(
                config
            )
    assert image_policy.space.validate(config) == config
    assert len(result.trials) == 2 and result.final_result.ok
    best = max(result.trials, key=lambda t: t["best_val_metric"])
    assert config == best["config"]
    # the reported test metric is the final model's accuracy on the test images
    assert 0.0 <= result.test_metric <= 1.0
    assert result.test_metric == pytest.approx(accuracy_on_test_split(result.model, task))
    torch.manual_seed(0)  # the model as built before training, with the trial seed
    untrained = task.build_model(0, config).state_dict()
    trained = result.model.state_dict()
    assert any(not torch.equal(trained[k], untrained[k]) for k in trained)
    assert all(t["status"] == "ok" for t in result.trials)
    state = torch.load(tmp_path / "tuned" / "model.pt", weights_only=True)
    assert set(state) == set(trained) and all(torch.equal(state[k], trained[k]) for k in state)
    assert json.loads((tmp_path / "tuned" / "config.json").read_text()) == config


def test_tune_refuses_an_augmentation_space_on_a_non_image_task(image_policy, iris, monkeypatch):
    trained = []
    monkeypatch.setattr(
        hporl.TorchBackend, "evaluate", lambda *a, **k: trained.append(1) or None, raising=True
    )
    message = (
        "a search space with augmentation parameters (augment, subpolicy1_op1, subpolicy1_prob1, ...) "
        "needs an image task (inputs of shape (C, H, W)); task 'iris' has tabular inputs of shape (4,)"
    )
    # iris has other meta-features than image tasks, but the same count: the policy reads it
    with pytest.raises(TaskError, match=re.escape(message)):
        hporl.tune_model(data=iris, policy=image_policy, n_trials=1)
    assert trained == []
