"""The packaged default policy: loads without pickle, suggests valid configurations, is what
``tune_model`` / ``hporl tune`` use without a policy; its training script resumes from the store."""

from __future__ import annotations

import importlib.util
import json
import pickle
from pathlib import Path

import pytest
import torch

from hporl import Policy, SearchSpace, Task, TuneOptions, tune_model
from hporl._policy_files import default_policy_dir
from hporl.experiment import MODELS
from hporl.space import config_key
from hporl.tasks import FEATURE_NAMES, builtin, suites
from tests._helpers import accuracy_on_test_split, run_cli, saved_model_accuracy

ROOT = Path(__file__).resolve().parents[1]


def _refuse(*_args, **_kwargs):
    raise AssertionError("the default policy must load without unpickling anything")


@pytest.fixture(scope="module")
def default_policy():
    return Policy.default()


def test_packaged_policy_loads_without_pickle(monkeypatch):
    for module, name in ((pickle, "load"), (pickle, "loads"), (torch, "load")):
        monkeypatch.setattr(module, name, _refuse)
    policy = Policy.default()
    assert policy.space.name == "optimizer"
    assert policy.feature_names == list(FEATURE_NAMES) and policy.budget >= 10
    policy.check_space(SearchSpace.builtin("optimizer"))
    size = sum(p.stat().st_size for p in default_policy_dir().iterdir())
    assert size < 500_000, f"the packaged policy is {size} bytes"
    assert (default_policy_dir() / "TRAINING.json").is_file()


def test_packaged_policy_ships_as_package_data():
    text = (ROOT / "pyproject.toml").read_text()
    assert '"policies/default/*"' in text


def test_held_out_tasks_were_not_trained_on(default_policy):
    trained = {name.split("+")[0] for name in default_policy.training_tasks}
    assert trained and not trained & {*suites()["heldout"], *suites()["heldout_hard"]}


@pytest.mark.parametrize(
    "name",
    [
        *suites()["all"],
        *suites()["heldout"],
        *suites()["heldout_hard"],
        "synth_clf_40",
        "synth_reg_9",
    ],
)
def test_default_policy_suggests_a_valid_config_for_every_builtin_task(default_policy, name):
    task = builtin(name)
    space = default_policy.space
    first = default_policy.suggest(task)
    assert space.validate(first) == first
    # with a history, the next one is valid and new
    second = default_policy.suggest(task, [(first, 0.5)], avoid={config_key(first)})
    assert config_key(second) != config_key(first)
    assert space.validate(second) == second


def test_tune_model_without_a_policy_uses_the_packaged_one(default_policy):
    task = builtin("iris", epochs=2)
    result = tune_model(data=task, n_trials=2, options=TuneOptions(compare_default=False))
    assert result.policy.training_tasks == default_policy.training_tasks
    # the first trial is the packaged policy's own proposal for this task
    assert [t["number"] for t in result.trials] == [0, 1]
    assert result.trials[0]["config"] == default_policy.suggest(task)
    assert result.trials[0]["config"] != result.trials[1]["config"]
    # the result is the best trial's configuration, and its test metric is the final model's
    best = max(result.trials, key=lambda t: t["best_val_metric"])
    assert (
        result.config == best["config"] == SearchSpace.builtin("optimizer").validate(best["config"])
    )
    assert 0.0 <= result.test_metric <= 1.0
    assert result.test_metric == pytest.approx(accuracy_on_test_split(result.model, task))


def test_cli_tune_without_policy(tmp_path, csv_file, capsys):
    args = ["tune", "--data", csv_file, "--target", "y", "--trials", "2", "--epochs", "2"]
    code, _out, err = run_cli(*args, "--out", tmp_path / "tuned", capsys=capsys)
    assert code == 0, err
    out = tmp_path / "tuned"
    report = json.loads((out / "report.json").read_text())
    assert len(report["trials"]) == 2 and report["metric_name"] == "accuracy"
    config = report["config"]
    assert json.loads((out / "config.json").read_text()) == config
    assert SearchSpace.builtin("optimizer").validate(config) == config
    # the saved model scores what the report says on the same split of the file
    task = Task.from_csv(csv_file, target="y", model=MODELS["mlp"], epochs=2)
    assert report["test_metric"] == pytest.approx(saved_model_accuracy(out, task, config))


def _training_script():
    path = ROOT / "scripts" / "train_default_policy.py"
    spec = importlib.util.spec_from_file_location("train_default_policy", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_training_script_resumes_from_its_store(tmp_path):
    script = _training_script()
    args = ["--quick", "--candidates", "3", "--timesteps", "64", "--budget", "2", "--epochs", "1"]
    args += ["--out", str(tmp_path / "run"), "--policy-out", str(tmp_path / "policy")]
    first = script.main(args)
    assert first["trained"] > 0 and first["store_hits"] == 0
    second = script.main(args)
    assert second["trained"] == 0 and second["store_hits"] == first["trained"]
    note = json.loads((tmp_path / "policy" / "TRAINING.json").read_text())
    assert note["evaluations_trained"] == 0
    assert not {t.split("+")[0] for t in note["tasks"]} & set(suites()["heldout"])
    copied = Policy.load(tmp_path / "policy")  # the copied files load with their checksums
    assert copied.training_tasks == note["tasks"]
    task = builtin("iris")
    assert copied.suggest(task) == Policy.load(tmp_path / "run").suggest(task)
