from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from hporl import (
    ConfigError,
    Policy,
    PolicyError,
    StoreError,
    TaskError,
    TuneOptions,
    tune_model,
)
from hporl.tasks import builtin, models

REPORT_KEYS = {"config", "metric_name", "test_metric", "default_test_metric", "trials", "seconds"}


def test_tune_model_end_to_end_on_arrays(tiny_policy, tmp_path):
    policy, _ = tiny_policy
    from sklearn.datasets import load_breast_cancer

    X, y = load_breast_cancer(return_X_y=True)
    seen = []
    res = tune_model(
        models.make_mlp,
        (X, y),
        policy=policy,
        n_trials=3,
        epochs=3,
        out=tmp_path,
        callback=lambda i, n, c, r: seen.append(i),
    )
    assert seen == [1, 2, 3]
    assert len(res.trials) == 3 and res.metric_name == "accuracy"
    assert len({json.dumps(t["config"], sort_keys=True) for t in res.trials}) == 3
    assert policy.space.validate(res.config) == res.config
    assert 0.0 <= res.test_metric <= 1.0 and res.default_test_metric is not None
    best = max(t["best_val_metric"] for t in res.trials if t["status"] == "ok")
    assert res.config == next(t["config"] for t in res.trials if t["best_val_metric"] == best)
    report = json.loads((tmp_path / "report.json").read_text())
    assert set(report) >= REPORT_KEYS
    state = torch.load(tmp_path / "model.pt", weights_only=True)
    res.model.load_state_dict(state)
    assert (tmp_path / "trials.db").exists()


def test_tune_resumes_from_its_store(tiny_policy, tmp_path):
    policy, _ = tiny_policy
    task = builtin("wine", epochs=2)
    options = TuneOptions(compare_default=False)
    first = tune_model(data=task, policy=policy, n_trials=2, out=tmp_path, options=options)
    assert not any(t["cached"] or t["resumed"] for t in first.trials)
    more = tune_model(data=task, policy=policy, n_trials=3, out=tmp_path, options=options)
    assert [t["resumed"] for t in more.trials] == [True, True, False]
    assert not any(t["cached"] for t in more.trials)
    assert [t["config"] for t in more.trials[:2]] == [t["config"] for t in first.trials]


def test_tune_csv_with_a_list_of_models_and_fine_tune(tiny_policy, tmp_path):
    policy, run_dir = tiny_policy
    rng = np.random.default_rng(0)
    X = rng.normal(size=(150, 4))
    y = np.where(X[:, 0] + X[:, 1] > 0, "yes", "no")
    csv = tmp_path / "data.csv"
    csv.write_text(
        "a,b,c,d,label\n"
        + "\n".join(",".join(f"{v:.3f}" for v in r) + f",{t}" for r, t in zip(X, y, strict=True))
    )
    before = {k: v.clone() for k, v in policy.network.state_dict().items()}
    res = tune_model(
        [models.make_mlp, models.linear],
        str(csv),
        target="label",
        policy=run_dir,
        n_trials=3,
        epochs=2,
        fine_tune=True,
        out=tmp_path / "out",
    )
    assert isinstance(res.model, list) and len(res.model) == 2
    assert (tmp_path / "out" / "model_0.pt").exists() and (tmp_path / "out" / "model_1.pt").exists()
    assert (tmp_path / "out" / "policy_fine_tuned" / "policy.json").exists()
    assert res.policy is not policy
    assert all(
        (before[k] == v).all() for k, v in policy.network.state_dict().items()
    )  # original kept


def test_tune_bad_input(tiny_policy, tmp_path):
    policy, _ = tiny_policy
    with pytest.raises(ConfigError, match="n_trials must be a positive integer"):
        tune_model(data=builtin("iris"), policy=policy, n_trials=0)
    with pytest.raises(TaskError, match="name the column to predict"):
        tune_model(data=str(tmp_path / "x.csv"), policy=policy)
    with pytest.raises(PolicyError, match="is not a policy directory"):
        tune_model(data=builtin("iris"), policy=tmp_path)
    with pytest.raises(TaskError, match="X has 3 rows but y has 2"):
        tune_model(data=(np.zeros((3, 2)), np.zeros(2)), policy=policy)


def test_unusable_storage_is_a_clear_error(tiny_policy, tmp_path):
    policy, _ = tiny_policy
    (tmp_path / "file").write_text("not a directory")
    (tmp_path / "notes.db").write_text("my notes, not a database")
    cases = {
        f"sqlite:///{tmp_path}/file/trials.db": "cannot create the directory for the trial store",
        str(tmp_path / "notes.db"): "is not a SQLite database; nothing was changed",
        "postgresql+psycopg://127.0.0.1:1/hporl": "cannot be used: connection",
        "nosuchdb://x": "cannot be used: Can't load plugin",
    }
    for url, message in cases.items():
        with pytest.raises(StoreError, match=re.escape(message)):
            tune_model(data=builtin("iris", epochs=1), policy=policy, n_trials=1, storage=url)
    assert (tmp_path / "notes.db").read_text() == "my notes, not a database"


def test_an_interrupted_trial_is_failed_stale_and_the_run_resumes(tiny_policy, tmp_path):
    """Ctrl-C in the middle of a trial: that trial is FAIL and marked stale (the policy's
    history leaves it out); the run started again tops up the finished trials."""
    import optuna
    from optuna.trial import TrialState

    from hporl import TorchBackend

    class Interrupted(TorchBackend):
        calls = 0

        def evaluate(self, task, config, **kwargs):
            Interrupted.calls += 1
            if Interrupted.calls == 2:
                raise KeyboardInterrupt
            return super().evaluate(task, config, **kwargs)

    policy, _ = tiny_policy
    task = builtin("iris", epochs=2)
    options = TuneOptions(compare_default=False, backend=Interrupted(num_threads=1))
    with pytest.raises(KeyboardInterrupt):
        tune_model(data=task, policy=policy, n_trials=3, out=tmp_path, options=options)
    study = optuna.load_study(
        study_name=optuna.get_all_study_names(f"sqlite:///{tmp_path / 'trials.db'}")[0],
        storage=f"sqlite:///{tmp_path / 'trials.db'}",
    )
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.FAIL]
    assert study.trials[1].user_attrs["hporl_stale"] is True
    result = tune_model(
        data=task,
        policy=policy,
        n_trials=3,
        out=tmp_path,
        options=TuneOptions(compare_default=False),
    )
    assert [t["status"] for t in result.trials] == ["ok"] * 3
    assert [t["resumed"] for t in result.trials] == [True, False, False]


def test_a_regression_task_is_offered_no_classification_knob(tmp_path):
    from hporl.tune import random_search

    task = builtin("diabetes", epochs=1)
    assert task.task_type == "regression"
    result = tune_model(
        data=task, n_trials=3, out=tmp_path, options=TuneOptions(compare_default=False)
    )
    assert all(t["config"].get("label_smoothing", 0.0) == 0.0 for t in result.trials)
    assert result.config.get("label_smoothing", 0.0) == 0.0
    randoms = random_search(task, Policy.default().space, 4, seed=1)
    assert all(t["config"].get("label_smoothing", 0.0) == 0.0 for t in randoms.trials)
    space = Policy.default().space
    assert "label_smoothing" in [p.name for p in space.chosen]  # classification still has it
    assert "label_smoothing" not in [p.name for p in space.fixing(["label_smoothing"]).chosen]
