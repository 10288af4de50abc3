"""hporl.augment: operations, policies, the space, the backend's use of them, bad input."""

from __future__ import annotations

import re
import sys
from typing import ClassVar

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import hporl
from hporl import ConfigError, SearchSpace, TaskError, TorchBackend
from hporl.augment import (
    MAGNITUDES,
    OPERATIONS,
    POLICIES,
    Augmenter,
    AugmentPolicy,
    apply_operation,
    augment_images,
    autoaugment_space,
    check_config,
    check_space,
    op_counts,
)
from hporl.tasks import builtin

WITH_MAGNITUDE = [op for op in OPERATIONS if op not in ("identity",)]


def images(channels: int = 1, n: int = 8, size: int = 16, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(channels * 100 + n)
    return torch.rand(n, channels, size, size, generator=g).to(dtype)


def one_op(op: str, prob: float, mag: int, *, op2: str = "identity") -> dict:
    """An AutoAugment config of one sub-policy: ``op`` then ``op2`` (identity by default)."""
    return {
        "augment": "autoaugment",
        "subpolicy1_op1": op,
        "subpolicy1_prob1": prob,
        "subpolicy1_mag1": mag,
        "subpolicy1_op2": op2,
        "subpolicy1_prob2": prob,
        "subpolicy1_mag2": mag,
    }


def run(config: dict, x: torch.Tensor, seed: int = 0) -> torch.Tensor:
    policy = AugmentPolicy.from_config(config)
    return augment_images(x, policy, generator=torch.Generator().manual_seed(seed))


# -- operations ---------------------------------------------------------------------------------
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("op", WITH_MAGNITUDE)
def test_each_operation_changes_an_image_at_magnitude_above_zero(op, channels):
    x = images(channels)
    for mag in (1, 5, MAGNITUDES[-1]):
        y = run(one_op(op, 1.0, mag), x)
        assert y.shape == x.shape and y.dtype == x.dtype
        assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
        changed = (y - x).abs().flatten(1).amax(1) > 1e-4
        assert changed.all(), (
            f"{op} at magnitude {mag} left images {(~changed).nonzero()} as they were"
        )


@pytest.mark.parametrize("op", OPERATIONS)
def test_probability_zero_leaves_images_unchanged(op):
    x = images(3)
    assert torch.equal(run(one_op(op, 0.0, 9, op2=op), x), x)


@pytest.mark.parametrize(
    "op", [o for o in OPERATIONS if o not in ("auto_contrast", "equalize", "invert")]
)
def test_magnitude_zero_leaves_images_unchanged(op):
    x = images(1)
    assert torch.equal(run(one_op(op, 1.0, 0), x), x)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kind", ["trivialaugment", "randaugment", "autoaugment"])
def test_policies_keep_shape_dtype_and_range(kind, dtype):
    config = autoaugment_space().default() | {"augment": kind}
    config = autoaugment_space().validate(
        {
            k: v
            for k, v in _full_default(kind).items()
            if k in config or k.startswith(("sub", "rand"))
        }
    )
    for channels in (1, 3):
        x = images(channels, n=32, dtype=dtype)
        y = run(config, x)
        assert y.shape == x.shape and y.dtype == dtype
        assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
        assert not torch.equal(y, x)


def _full_default(kind: str) -> dict:
    """The space's defaults with ``augment`` set to ``kind`` (children filled in)."""
    space = autoaugment_space()
    config = {"augment": kind}
    for p in space.parameters:
        if p.name != "augment" and space.is_active(p.name, config):
            config[p.name] = p.default
    return config


def test_apply_operation_per_image_strengths_and_bad_name():
    x = images(1, n=4)
    y = apply_operation(x, "brightness", torch.tensor([0.0, 0.0, 1.0, 1.0]))
    assert torch.equal(y[:2], x[:2]) and not torch.equal(y[2:], x[2:])
    with pytest.raises(
        ConfigError, match=re.escape("unknown operation 'blur'; operations: identity")
    ):
        apply_operation(x, "blur", 0.5)


def test_augmentation_is_per_sample():
    x = images(1, n=1).repeat(64, 1, 1, 1)  # one image, 64 times
    y = run({"augment": "trivialaugment"}, x)
    distinct = {tuple(img.flatten().tolist()) for img in y}
    assert len(distinct) > 10


# -- determinism -----------------------------------------------------------------------------------
def test_same_seed_same_batches_other_seed_other_batches():
    x = images(1, n=64)
    config = _full_default("autoaugment")
    a = Augmenter(AugmentPolicy.from_config(config), low=torch.zeros(1), high=torch.ones(1), seed=3)
    b = Augmenter(AugmentPolicy.from_config(config), low=torch.zeros(1), high=torch.ones(1), seed=3)
    c = Augmenter(AugmentPolicy.from_config(config), low=torch.zeros(1), high=torch.ones(1), seed=4)
    first = [a(x) for _ in range(3)]
    assert all(torch.equal(p, q) for p, q in zip(first, [b(x) for _ in range(3)], strict=True))
    assert not torch.equal(first[0], first[1])  # a fresh draw per call
    assert not torch.equal(first[0], c(x))


def test_global_rng_untouched_and_irrelevant():
    x = images(1, n=32)
    config = {"augment": "randaugment", "randaugment_n": 2, "randaugment_m": 15}
    torch.manual_seed(0)
    state = torch.get_rng_state()
    a = run(config, x)
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(12345)
    assert torch.equal(run(config, x), a)


def test_backend_deterministic_for_a_seed(digits_image):
    config = {"augment": "randaugment", "randaugment_n": 2, "randaugment_m": 9}
    backend = TorchBackend(num_threads=1)
    a = backend.evaluate(digits_image, config, seed=1, epochs=2)
    b = backend.evaluate(digits_image, config, seed=1, epochs=2)
    c = backend.evaluate(digits_image, config, seed=2, epochs=2)
    plain = backend.evaluate(digits_image, {"augment": "none"}, seed=1, epochs=2)
    assert a.ok and a.curve == b.curve and a.train_loss_curve == b.train_loss_curve
    assert a.train_loss_curve != c.train_loss_curve
    assert a.train_loss_curve != plain.train_loss_curve


# -- the backend augments training batches only ------------------------------------------------------
class Spy(nn.Module):
    """A linear model that records every input it sees, with the mode it was in."""

    seen: ClassVar[list[tuple[bool, torch.Tensor]]] = []

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        Spy.seen.append((self.training, x.detach().clone()))
        return self.head(x.flatten(1))


@pytest.fixture(scope="module")
def digits_image():
    return builtin("digits_image", epochs=2)


@pytest.mark.parametrize("kind", ["trivialaugment", "randaugment", "autoaugment"])
def test_validation_and_test_data_never_augmented(kind, digits_image):
    task = hporl.Task(
        name="spy",
        X_train=digits_image.X_train,
        y_train=digits_image.y_train,
        X_val=digits_image.X_val,
        y_val=digits_image.y_val,
        X_test=digits_image.X_test,
        y_test=digits_image.y_test,
        model=Spy(),
        epochs=2,
    )
    Spy.seen.clear()
    result = TorchBackend(eval_batch_size=100_000).evaluate(task, _full_default(kind), seed=0)
    assert result.ok
    evals = [x for training, x in Spy.seen if not training]
    trains = [x for training, x in Spy.seen if training]
    assert evals and trains
    for x in evals:  # every validation / test pass sees the data exactly as it is
        assert torch.equal(x, task.X_val) or torch.equal(x, task.X_test)
    rows = {tuple(r.flatten().tolist()) for r in task.X_train}
    altered = sum(tuple(r.flatten().tolist()) not in rows for x in trains for r in x)
    assert altered > 0.2 * len(task.X_train)  # training batches are augmented


def test_no_augmentation_keys_means_plain_batches(digits_image):
    task = hporl.Task(
        name="spy",
        X_train=digits_image.X_train,
        y_train=digits_image.y_train,
        X_val=digits_image.X_val,
        y_val=digits_image.y_val,
        X_test=digits_image.X_test,
        y_test=digits_image.y_test,
        model=Spy(),
        epochs=1,
    )
    rows = {tuple(r.flatten().tolist()) for r in task.X_train}
    for config in ({}, {"augment": "none"}):
        Spy.seen.clear()
        assert TorchBackend().evaluate(task, config, seed=0).ok
        trains = [x for training, x in Spy.seen if training]
        assert all(tuple(r.flatten().tolist()) in rows for x in trains for r in x)


# -- the space -----------------------------------------------------------------------------------
def test_builtin_space_and_composition(tmp_path):
    space = SearchSpace.builtin("autoaugment")
    assert space == autoaugment_space()
    assert "autoaugment" in hporl.space.builtin_spaces()
    assert space.default() == {"augment": "none"}
    assert space["augment"].choices == POLICIES
    assert space["subpolicy5_prob2"].choices == tuple(i / 10 for i in range(11))
    assert space["subpolicy1_mag1"].choices == tuple(range(10))
    assert space["subpolicy3_op1"].choices == OPERATIONS
    assert len(space) == 3 + 5 * 6
    both = SearchSpace.builtin("optimizer") + space
    assert both.name == "optimizer+autoaugment" and "lr" in both and "subpolicy5_op2" in both
    path = tmp_path / "space.yaml"
    path.write_text("name: mine\ninclude: [optimizer, autoaugment]\n")
    assert SearchSpace.from_yaml(path).names == both.names


def test_autoaugment_space_sizes_and_policies():
    three = autoaugment_space(3)
    assert [n for n in three.names if n.endswith("_op1")] == [
        f"subpolicy{i}_op1" for i in (1, 2, 3)
    ]
    only = autoaugment_space(2, policies=["autoaugment"])
    assert only["augment"].kind == "fixed" and "randaugment_n" not in only
    assert AugmentPolicy.from_config(only.default()).describe() == (
        "autoaugment: (invert 0.1 7, contrast 0.2 6), (rotate 0.7 2, translate_x 0.3 9)"
    )
    with pytest.raises(
        ConfigError, match=re.escape("n_subpolicies must be an integer in [1, 50], got 0")
    ):
        autoaugment_space(0)
    with pytest.raises(
        ConfigError,
        match=re.escape(
            "policies must be distinct names among none, trivialaugment, randaugment, "
            "autoaugment, got ['autoaugmnt']. Did you mean 'autoaugment'?"
        ),
    ):
        autoaugment_space(policies=["autoaugmnt"])


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_every_sample_of_the_space_is_a_valid_policy(seed):
    space = SearchSpace.builtin("optimizer") + SearchSpace.builtin("autoaugment")
    config = space.sample(seed)
    policy = AugmentPolicy.from_config(config)
    assert policy.kind == config["augment"]
    assert AugmentPolicy.from_config(policy.to_config()) == policy
    x = images(1, n=4)
    assert run(config, x).shape == x.shape


def test_op_counts():
    configs = [_full_default("autoaugment"), {"augment": "none"}, {"lr": 0.1}]
    kinds, ops = op_counts(configs)
    assert kinds == {"autoaugment": 1, "none": 1}
    assert ops["sharpness"] == 2 and sum(ops.values()) == 10


# -- bad input ----------------------------------------------------------------------------------------
BAD = [
    (
        one_op("rotat", 0.5, 3),
        "subpolicy1_op1: unknown operation 'rotat'; operations: "
        + ", ".join(OPERATIONS)
        + ". Did you mean 'rotate'?",
    ),
    (one_op("rotate", 1.5, 3), "subpolicy1_prob1 must be a number in [0, 1], got 1.5"),
    (one_op("rotate", 0.5, 10), "subpolicy1_mag1 must be a number in [0, 9], got 10"),
    (one_op("rotate", 0.5, -1), "subpolicy1_mag1 must be a number in [0, 9], got -1"),
    (one_op("rotate", "often", 3), "subpolicy1_prob1 must be a number in [0, 1], got 'often'"),
    (
        {"augment": "autoaugmnt"},
        "augment must be one of none, trivialaugment, randaugment, autoaugment, got 'autoaugmnt'. Did you mean 'autoaugment'?",
    ),
    (
        {"augment": "randaugment", "randaugment_m": 31},
        "randaugment_m must be an integer in [0, 30], got 31",
    ),
    (
        {"augment": "randaugment", "randaugment_n": 0},
        "randaugment_n must be an integer in [1, 15], got 0",
    ),
    (
        {"augment": "trivialaugment", "randaugment_n": 2},
        "augmentation key 'randaugment_n' does not apply to augment='trivialaugment'",
    ),
    (
        {"augment": "autoaugment"},
        "augment=autoaugment needs sub-policies: subpolicy1_op1, subpolicy1_prob1, subpolicy1_mag1, subpolicy1_op2, ... (see hporl.augment.autoaugment_space)",
    ),
    (
        {k: v for k, v in one_op("rotate", 0.5, 3).items() if k != "subpolicy1_mag2"},
        "sub-policy 1 is missing 'subpolicy1_mag2'",
    ),
    (
        {
            **one_op("rotate", 0.5, 3),
            **{
                k.replace("1_", "3_"): v
                for k, v in one_op("rotate", 0.5, 3).items()
                if k != "augment"
            },
        },
        "sub-policies are numbered 1..N without gaps; subpolicy2 is missing (found 1, 3)",
    ),
    (
        {"subpolicy1_op1": "rotate"},
        "augmentation key 'subpolicy1_op1' without 'augment'; set augment: one of none, trivialaugment, randaugment, autoaugment",
    ),
    (
        {"augment": "none", "subpolicy_extra": 1},
        "augmentation key 'subpolicy_extra' does not apply to augment='none' (unknown key)",
    ),
]


@pytest.mark.parametrize(("config", "message"), BAD)
def test_bad_values_are_typed_errors_and_failed_trials(config, message, digits_image):
    with pytest.raises(ConfigError, match=re.escape(message)):
        check_config(config, digits_image)
    result = TorchBackend().evaluate(digits_image, config, seed=0, epochs=1)
    assert result.status == "failed" and result.reason == message and result.epochs_done == 0


def test_augmentation_on_a_non_image_task(iris):
    message = (
        "augmentation (augment='trivialaugment') needs an image task (inputs of shape (C, H, W)); "
        "task 'iris' has tabular inputs of shape (4,)"
    )
    with pytest.raises(TaskError, match=re.escape(message)):
        check_config({"augment": "trivialaugment"}, iris)
    result = TorchBackend().evaluate(iris, {"augment": "trivialaugment"}, seed=0)
    assert result.status == "failed" and result.reason == message and result.epochs_done == 0
    mnist1d = builtin("mnist1d")  # sequences (1, 40) are not images either
    with pytest.raises(
        TaskError, match=re.escape("task 'mnist1d' has sequence inputs of shape (1, 40)")
    ):
        check_config({"augment": "none"}, mnist1d)
    with pytest.raises(
        TaskError,
        match=re.escape(
            "a search space with augmentation parameters (augment, randaugment_n, randaugment_m, ...) "
            "needs an image task (inputs of shape (C, H, W)); task 'iris' has tabular inputs of shape (4,)"
        ),
    ):
        check_space(SearchSpace.builtin("autoaugment"), iris)
    check_space(SearchSpace.builtin("optimizer"), iris)  # nothing to refuse


def test_missing_kornia_names_the_extra(monkeypatch, digits_image):
    monkeypatch.setitem(sys.modules, "kornia", None)
    message = "data augmentation needs kornia, which is not installed: pip install 'hporl[augment]'"
    with pytest.raises(ConfigError, match=re.escape(message)):
        check_config({"augment": "trivialaugment"}, digits_image)
    result = TorchBackend().evaluate(digits_image, {"augment": "trivialaugment"}, seed=0, epochs=1)
    assert result.status == "failed" and result.reason == message
    assert TorchBackend().evaluate(digits_image, {"augment": "none"}, seed=0, epochs=1).ok


def test_channel_ranges_round_trip(digits_image):
    """Identity augmentation maps standardised images to [0, 1] and back unchanged."""
    config = one_op("identity", 1.0, 5)
    aug = Augmenter.for_task(config, digits_image, seed=0)
    x = digits_image.X_train[:16]
    np.testing.assert_allclose(aug(x).numpy(), x.numpy(), atol=1e-5)
    assert Augmenter.for_task({"augment": "none"}, digits_image) is None
    assert Augmenter.for_task({"lr": 0.1}, digits_image) is None
