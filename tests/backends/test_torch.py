from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from hporl import SearchSpace, Task, TorchBackend, TrialResult
from hporl.backends.torch_backend import OPTIMIZERS, SCHEDULES
from hporl.tasks import builtin, models

SPACE = SearchSpace.builtin("optimizer")


def config(**overrides):
    """The default configuration with overrides, made valid for the space (conditions applied)."""
    c = {**SPACE.default(), **overrides}
    full = {}
    for p in SPACE:
        if SPACE.is_active(p.name, full):
            full[p.name] = c.get(p.name, p.default)
    return SPACE.validate(full)


def check_contract(r: TrialResult, epochs: int):
    assert r.status in ("ok", "diverged", "failed")
    assert len(r.curve) == len(r.loss_curve) == len(r.train_loss_curve) == r.epochs_done
    assert all(math.isfinite(v) for v in r.curve + r.loss_curve + r.train_loss_curve)
    if r.status == "ok":
        assert r.reason is None
        assert r.final_metric == r.curve[-1] and r.best_metric == max(r.curve)
        assert r.curve[r.best_epoch - 1] == r.best_metric
        assert r.test_metric is not None and 0 <= r.test_metric <= 1
        assert r.epochs_done == epochs or r.stopped_early
    else:
        assert r.reason
    assert r.wall_time > 0
    json.dumps(r.to_dict())  # JSON-ready
    assert TrialResult.from_dict(r.to_dict()) == r


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_every_optimizer_trains_one_epoch(digits, optimizer):
    c = config(
        optimizer=optimizer,
        lr=0.01 if optimizer in ("sgd", "sgd_nesterov", "adagrad", "radam") else 1e-3,
    )
    r = TorchBackend().evaluate(digits, c, seed=0, epochs=1)
    check_contract(r, 1)
    assert r.status == "ok" and r.best_metric > 0.3, r.summary()


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_every_schedule_trains(digits, schedule):
    c = config(lr_schedule=schedule)
    r = TorchBackend().evaluate(digits, c, seed=0, epochs=1)
    check_contract(r, 1)
    assert r.status == "ok" and r.best_metric > 0.3, r.summary()


@pytest.mark.parametrize(
    "addon",
    [
        {"grad_clip_norm": 0.5},
        {"label_smoothing": 0.2},
        {"weight_averaging": "ema", "ema_decay": 0.9},
        {"weight_averaging": "swa", "swa_start": 0.5},
        {"weight_decay": 1e-3},
        {"optimizer": "adamw", "weight_decay": 1e-2},
        {"batch_size": 512, "lr": 0.01},
    ],
    ids=lambda a: "-".join(f"{k}={v}" for k, v in a.items()),
)
def test_every_addon_trains(digits, addon):
    r = TorchBackend().evaluate(
        digits, config(**addon), seed=0, epochs=2 if "swa_start" in addon else 1
    )
    check_contract(r, r.epochs)
    assert r.status == "ok" and r.best_metric > 0.3, r.summary()


def test_addons_change_training(digits):
    base = TorchBackend().evaluate(digits, config(), seed=0, epochs=2)
    for addon in (
        {"grad_clip_norm": 0.1},
        {"weight_averaging": "ema", "ema_decay": 0.99},
        {"label_smoothing": 0.3},
    ):
        other = TorchBackend().evaluate(digits, config(**addon), seed=0, epochs=2)
        assert other.loss_curve != base.loss_curve, addon


def test_adam_defaults_reach_090_on_digits(digits):
    r = TorchBackend().evaluate(digits, SPACE.default(), seed=0)
    check_contract(r, digits.epochs)
    assert r.status == "ok"
    assert r.best_metric >= 0.9, r.summary()
    assert r.test_metric >= 0.85


def test_huge_sgd_lr_diverges_without_raising(digits):
    c = {
        **config(optimizer="sgd", momentum=0.9),
        "lr": 1e3,
    }  # outside the space: the backend still copes
    r = TorchBackend().evaluate(digits, c, seed=0, epochs=5)
    check_contract(r, 5)
    assert r.status == "diverged"
    assert "non-finite" in r.reason and "epoch 1" in r.reason
    assert r.best_metric is None and r.test_metric is None


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        ({"lr": -1.0}, "lr must lie in (0, 1000], got -1.0"),
        ({"optimizer": "lamb"}, "optimizer must be one of"),
        ({"batch_size": 0}, "batch_size must be an integer in [1, 1e+06], got 0"),
        ({"lr": "fast"}, "lr must be a number, got 'fast'"),
        ({"momentum": 2.0, "optimizer": "sgd"}, "momentum must lie in [0, 1], got 2.0"),
        ({"lr": 1e4}, "lr must lie in (0, 1000], got 10000.0"),
    ],
)
def test_bad_value_gives_failed_result(digits, bad, reason):
    r = TorchBackend().evaluate(digits, {**SPACE.default(), **bad}, seed=0, epochs=1)
    check_contract(r, 1)
    assert r.status == "failed" and reason in r.reason


def test_model_error_mid_training_gives_failed_result():
    class Flaky(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 3)
            self.calls = 0

        def forward(self, x):
            self.calls += 1
            if self.training and self.calls > 3:
                raise RuntimeError("boom")
            return self.lin(x)

    task = builtin("iris", model=lambda shape, n: Flaky())
    r = TorchBackend().evaluate(task, SPACE.default(), seed=0, epochs=2)
    assert r.status == "failed" and r.reason == "RuntimeError in epoch 2: boom"
    assert r.epochs_done == 1  # the finished epoch is kept


def test_list_of_two_models_aggregates(iris):
    task = builtin("iris", model=[models.make_mlp, models.linear])
    r = TorchBackend().evaluate(task, config(lr=0.01), seed=0, epochs=5)
    check_contract(r, 5)
    assert len(r.per_model) == 2
    a, b = r.per_model
    assert a.curve != b.curve
    assert r.curve == pytest.approx([(x + y) / 2 for x, y in zip(a.curve, b.curve, strict=False)])
    assert r.test_metric == pytest.approx((a.test_metric + b.test_metric) / 2)
    assert r.best_metric == pytest.approx((a.best_metric + b.best_metric) / 2)


def test_determinism(digits):
    c = config(
        optimizer="sgd", lr=0.05, momentum=0.9, weight_averaging="ema", lr_schedule="onecycle"
    )
    task = builtin("digits", model=models.mlp((64,), dropout=0.2))
    r1 = TorchBackend().evaluate(task, c, seed=3, epochs=3)
    torch.manual_seed(123)  # global state must not matter
    r2 = TorchBackend().evaluate(task, c, seed=3, epochs=3)
    r3 = TorchBackend().evaluate(task, c, seed=4, epochs=3)
    assert (
        r1.curve == r2.curve and r1.loss_curve == r2.loss_curve and r1.test_metric == r2.test_metric
    )
    assert r1.loss_curve != r3.loss_curve


def test_checkpoint_loads_with_weights_only(digits, tmp_path):
    r = TorchBackend().evaluate(digits, SPACE.default(), seed=0, epochs=2, checkpoint_dir=tmp_path)
    state = torch.load(tmp_path / "model.pt", weights_only=True)
    model = digits.build_model(0)
    model.load_state_dict(state)
    with torch.no_grad():
        acc = (model(digits.X_test).argmax(1) == digits.y_test).float().mean().item()
    assert acc == pytest.approx(r.test_metric)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["config"] == SPACE.default() and saved["result"]["status"] == "ok"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_on_epoch_stops_the_trial(digits):
    seen = []

    def stop_after_two(epoch, value):
        seen.append((epoch, value))
        return epoch == 2

    r = TorchBackend().evaluate(digits, SPACE.default(), seed=0, epochs=10, on_epoch=stop_after_two)
    assert r.status == "ok" and r.stopped_early and r.epochs_done == 2
    assert [e for e, _ in seen] == [1, 2] and seen[-1][1] == r.curve[-1]


def test_regression_and_image_tasks():
    reg = TorchBackend().evaluate(builtin("diabetes"), config(lr=3e-3), seed=0, epochs=20)
    assert reg.metric_name == "r2" and reg.status == "ok" and reg.best_metric > 0.2, reg.summary()
    img = TorchBackend().evaluate(builtin("digits_image"), config(lr=3e-3), seed=0, epochs=3)
    assert img.status == "ok" and img.best_metric > 0.3, img.summary()


def test_lcbench_space_drives_real_training():
    space = SearchSpace.builtin("lcbench")
    task = builtin("breast_cancer", model=models.lcbench_mlp, epochs=3)
    c = space.sample(np.random.default_rng(0))
    r = TorchBackend().evaluate(task, c, seed=0)
    check_contract(r, 3)
    assert r.status in ("ok", "diverged")
    good = {
        **space.default(),
        "learning_rate": 0.05,
        "weight_decay": 1e-4,
        "batch_size": 32,
        "max_dropout": 0.0,
    }
    r = TorchBackend().evaluate(task, good, seed=0)
    assert r.status == "ok" and r.best_metric > 0.85, r.summary()


def test_batch_size_larger_than_data_and_threads():
    task = Task.from_arrays(np.random.default_rng(0).normal(size=(30, 3)), np.arange(30) % 2)
    r = TorchBackend(num_threads=1).evaluate(task, config(batch_size=512), seed=0, epochs=2)
    assert r.status == "ok"


# -- resuming (freeze-thaw on real training) -------------------------------------------------------
RESUMED = [
    config(lr_schedule="cosine", weight_averaging="swa", swa_start=0.5),
    config(optimizer="sgd", lr=0.05, momentum=0.9, lr_schedule="onecycle", weight_averaging="ema"),
    config(optimizer="adamw", lr_schedule="step", grad_clip_norm=1.0, label_smoothing=0.1),
]


@pytest.mark.parametrize("cfg", RESUMED, ids=["cosine+swa", "onecycle+ema", "step+clip"])
def test_a_resumed_training_is_the_uninterrupted_one_and_trains_only_the_extra_epochs(cfg):
    task = builtin("digits", model=models.mlp((32,), dropout=0.2), epochs=9)
    backend = TorchBackend(num_threads=1, resume=True)
    assert backend.resumable and backend.horizon(task, 3) == 9 and backend.horizon(task, 9) is None
    start = backend.evaluate(task, cfg, seed=5, epochs=3)
    trained: list[int] = []
    more = backend.evaluate(task, cfg, seed=5, epochs=9, on_epoch=lambda e, v: trained.append(e))
    assert trained == list(range(4, 10)) and backend.n_resumed == 1  # epochs 1-3 not again
    assert more.wall_time > start.wall_time  # the whole training's, the first 3 epochs included
    whole = TorchBackend(num_threads=1, resume=True).evaluate(task, cfg, seed=5, epochs=9)
    assert start.curve == whole.curve[:3]
    assert more.curve == whole.curve and more.train_loss_curve == whole.train_loss_curve
    assert more.test_metric == whole.test_metric and more.best_epoch == whole.best_epoch
    check_contract(more, 9)


def test_without_resume_a_shorter_training_is_a_whole_one_and_keeps_no_checkpoint(digits):
    cfg = config(lr_schedule="cosine")
    task = builtin("digits", epochs=8)
    plain = TorchBackend(num_threads=1)
    assert not plain.resumable and plain.horizon(task, 2) is None
    short = plain.evaluate(task, cfg, seed=0, epochs=2)  # cosine over 2 epochs, not 8
    planned = TorchBackend(num_threads=1, resume=True).evaluate(task, cfg, seed=0, epochs=2)
    assert short.curve != planned.curve
    plain.evaluate(task, cfg, seed=0, epochs=8)
    assert plain.n_resumed == 0 and not plain._saved


def test_resume_keeps_the_most_recent_checkpoints_and_workers_get_none():
    import pickle

    task = builtin("iris", epochs=6)
    backend = TorchBackend(num_threads=1, resume=True, checkpoints=1)
    a, b = config(lr=0.01), config(lr=0.02)
    backend.evaluate(task, a, epochs=2)
    backend.evaluate(task, b, epochs=2)  # a's checkpoint goes
    backend.evaluate(task, a, epochs=6)
    assert backend.n_resumed == 0
    backend.evaluate(task, b, epochs=6)
    assert backend.n_resumed == 1
    backend.evaluate(task, a, epochs=3)
    assert pickle.loads(pickle.dumps(backend))._saved == {}
    with pytest.raises(Exception, match="checkpoints must be a positive integer"):
        TorchBackend(resume=True, checkpoints=0)


def test_a_stored_shorter_training_is_not_served_as_the_start_of_a_longer_one(tmp_path):
    from hporl.evaluation import Evaluator
    from hporl.store import TrialStore

    task = builtin("iris", epochs=6)
    cfg = config(lr_schedule="cosine")
    store = tmp_path / "t.db"
    whole_short = Evaluator(TorchBackend(num_threads=1), store=TrialStore(store), space=SPACE)
    short = whole_short.evaluate(task, cfg, epochs=2)
    resuming = Evaluator(
        TorchBackend(num_threads=1, resume=True), store=TrialStore(store), space=SPACE
    )
    start = resuming.evaluate(task, cfg, epochs=2)  # a different curve: trained, not served
    assert resuming.n_store_hits == 0 and not start.cached and start.curve != short.curve
    again = Evaluator(
        TorchBackend(num_threads=1, resume=True), store=TrialStore(store), space=SPACE
    )
    assert again.evaluate(task, cfg, epochs=2).curve == start.curve and again.n_store_hits == 1
    full = Evaluator(TorchBackend(num_threads=1), store=TrialStore(store), space=SPACE)
    assert full.evaluate(task, cfg, epochs=2).curve == short.curve and full.n_store_hits == 1


def test_an_augmented_image_training_resumes_exactly():
    from hporl.augment import autoaugment_space

    space = SearchSpace.from_dict(
        {
            "name": "opt+aug",
            "include": ["optimizer"],
            "parameters": autoaugment_space(2).to_dict()["parameters"],
        }
    )
    cfg = space.sample(np.random.default_rng(3))
    task = builtin("digits_image", epochs=4)
    backend = TorchBackend(num_threads=1, resume=True)
    backend.evaluate(task, cfg, seed=1, epochs=1)
    more = backend.evaluate(task, cfg, seed=1, epochs=4)
    whole = TorchBackend(num_threads=1, resume=True).evaluate(task, cfg, seed=1, epochs=4)
    assert backend.n_resumed == 1 and more.status == whole.status == "ok"
    assert more.curve == whole.curve and more.test_metric == whole.test_metric


def test_a_final_fit_trains_exactly_its_epochs_on_a_resuming_backend():
    task = builtin("iris", epochs=6)
    cfg = config(lr_schedule="cosine")
    resuming = TorchBackend(num_threads=1, resume=True)
    resuming.evaluate(task, cfg, epochs=2)  # a checkpoint for the 6-epoch training
    _, fitted = resuming.fit(task, cfg, epochs=2)  # cosine over 2 epochs, from scratch
    _, plain = TorchBackend(num_threads=1).fit(task, cfg, epochs=2)
    assert fitted.curve == plain.curve and resuming.n_resumed == 0
