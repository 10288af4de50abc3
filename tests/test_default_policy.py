"""The packaged default policy: loads without pickle, suggests valid configurations, is what
``tune_model`` / ``hporl tune`` use without a policy; its training script resumes from the store."""

from __future__ import annotations

import importlib.util
import json
import pickle
from pathlib import Path

import pytest
import torch

from hporl import Policy, SearchSpace, tune_model
from hporl.policy import default_policy_dir
from hporl.space import config_key
from hporl.tasks import builtin, suites
from tests._helpers import run_cli

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
    assert policy.feature_names is not None and policy.budget >= 10
    policy.check_space(SearchSpace.builtin("optimizer"))
    size = sum(p.stat().st_size for p in default_policy_dir().iterdir())
    assert size < 500_000, f"the packaged policy is {size} bytes"
    assert (default_policy_dir() / "TRAINING.json").is_file()


def test_packaged_policy_ships_as_package_data():
    text = (ROOT / "pyproject.toml").read_text()
    assert '"policies/default/*"' in text


def test_held_out_tasks_were_not_trained_on(default_policy):
    trained = {name.split("+")[0] for name in default_policy.training_tasks}
    assert trained and not trained & set(suites()["heldout"])


@pytest.mark.parametrize(
    "name", [*suites()["all"], *suites()["heldout"], "synth_clf_40", "synth_reg_9"]
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


def test_tune_model_without_a_policy_uses_the_packaged_one(tmp_path):
    result = tune_model(data=builtin("iris", epochs=2), n_trials=2, compare_default=False)
    assert result.policy is not None
    assert result.policy.training_tasks == Policy.default().training_tasks
    assert len(result.trials) == 2 and result.test_metric is not None


def test_cli_tune_without_policy(tmp_path, csv_file, capsys):
    args = ["tune", "--data", csv_file, "--target", "y", "--trials", "2", "--epochs", "2"]
    code, _out, err = run_cli(*args, "--out", tmp_path / "tuned", capsys=capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "tuned" / "report.json").read_text())
    assert len(report["trials"]) == 2 and report["test_metric"] is not None


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
    Policy.load(tmp_path / "policy")  # the copied files load with their checksums
