"""Pruning in ``tune_model`` / ``hporl tune``: optuna's pruners stop real trainings early."""

from __future__ import annotations

import json
import re
import warnings

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from hporl import ConfigError, HporlError, TuneOptions, tune_model
from hporl.backends import TorchBackend
from hporl.evaluation import Evaluator, make_pruner
from hporl.executors import LocalExecutor
from hporl.store import TrialStore
from hporl.tasks import builtin, models
from tests._helpers import run_cli

EPOCHS = 5
QUICK = TuneOptions(compare_default=False)


class _PruneTrialAt(optuna.pruners.BasePruner):
    """Prunes trial ``number`` once it has reported ``epoch``; records every step it saw."""

    def __init__(self, number: int, epoch: int) -> None:
        self.number, self.epoch = number, epoch
        self.seen: list[tuple[int, int]] = []

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        self.seen.append((trial.number, trial.last_step))
        return trial.number == self.number and trial.last_step >= self.epoch


def _study(out) -> optuna.Study:
    url = f"sqlite:///{out / 'trials.db'}"
    (name,) = optuna.get_all_study_names(url)
    return optuna.load_study(study_name=name, storage=url)


def test_a_pruned_trial_stops_at_its_epoch_is_stored_pruned_and_is_not_rerun(tmp_path):
    task = builtin("wine", epochs=EPOCHS)
    pruner = _PruneTrialAt(1, 2)
    res = tune_model(data=task, n_trials=3, pruner=pruner, out=tmp_path, options=QUICK)

    # The training of trial 1 stopped after epoch 2: the pruner never saw epoch 3 of it.
    assert [s for n, s in pruner.seen if n == 1] == [1, 2]
    assert [s for n, s in pruner.seen if n == 0] == list(range(1, EPOCHS + 1))
    statuses = [(t["status"], t["pruned_epoch"], t["epochs"]) for t in res.trials]
    assert statuses == [("ok", None, EPOCHS), ("pruned", 2, 2), ("ok", None, EPOCHS)]
    assert res.trials[1]["reason"] == "pruned by _PruneTrialAt after epoch 2"
    completed = [t for t in res.trials if t["status"] == "ok"]
    best = max(completed, key=lambda t: t["best_val_metric"])
    assert res.config == best["config"] != res.trials[1]["config"]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["n_pruned"] == 1 and report["pruner"] == "_PruneTrialAt"
    assert report["trials"][1]["status"] == "pruned" and report["trials"][1]["pruned_epoch"] == 2

    # In the store: PRUNED, its epoch, its partial curve, its last value; no cache key.
    trial = _study(tmp_path).trials[1]
    assert trial.state == TrialState.PRUNED and trial.user_attrs["pruned_epoch"] == 2
    assert sorted(trial.intermediate_values) == [1, 2]
    assert trial.value == trial.intermediate_values[2]
    assert "hporl_key" not in trial.user_attrs
    store = TrialStore(tmp_path / "trials.db")
    assert store.lookup(task, res.trials[1]["config"], seed=0) is None
    assert store.lookup(task, res.trials[0]["config"], seed=0) is not None

    # A resumed run knows the pruned trial: it trains only the one trial it lacks.
    trained = []
    more = tune_model(
        data=task,
        n_trials=4,
        pruner=_PruneTrialAt(1, 2),
        out=tmp_path,
        options=QUICK,
        callback=lambda i, n, c, r: trained.append(i),
    )
    assert trained == [4]
    assert [t["status"] for t in more.trials] == ["ok", "pruned", "ok", "ok"]
    assert [t["resumed"] for t in more.trials] == [True, True, True, False]
    assert len(_study(tmp_path).trials) == 4


def test_the_median_pruner_stops_trials_below_the_median(tmp_path):
    """optuna's MedianPruner on real training: each pruned trial stopped at an epoch where its
    value was below the median of the earlier trials' values at that epoch."""
    task = builtin("wine", epochs=EPOCHS)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=1)
    res = tune_model(data=task, n_trials=6, pruner=pruner, out=tmp_path, options=QUICK)
    pruned = [t for t in res.trials if t["status"] == "pruned"]
    assert pruned, [t["best_val_metric"] for t in res.trials]
    trials = _study(tmp_path).trials
    for record in pruned:
        epoch = record["pruned_epoch"]
        assert record["epochs"] == epoch < EPOCHS
        mine = max(trials[record["number"]].intermediate_values.values())
        earlier = [
            t.intermediate_values[epoch]
            for t in trials[: record["number"]]
            if t.state == TrialState.COMPLETE
        ]
        assert mine < np.median(earlier)
    assert all(t["epochs"] == EPOCHS for t in res.trials if t["status"] == "ok")


def test_every_trial_pruned_is_a_clear_error(tmp_path):
    task = builtin("iris", epochs=3)
    never = optuna.pruners.ThresholdPruner(lower=2.0)  # accuracy never reaches 2: all stop
    with pytest.raises(HporlError, match="all 2 trials were pruned, failed or diverged"):
        tune_model(data=task, n_trials=2, pruner=never, out=tmp_path, options=QUICK)
    assert {t.state for t in _study(tmp_path).trials} == {TrialState.PRUNED}
    assert all(t.user_attrs["pruned_epoch"] == 1 for t in _study(tmp_path).trials)


def test_bad_pruner_arguments_fail_before_training(tmp_path):
    task = builtin("iris", epochs=1)
    with pytest.raises(ConfigError, match=re.escape("pruner must be one of median, asha")):
        tune_model(data=task, pruner="foo", out=tmp_path / "a")
    with pytest.raises(ConfigError, match="cannot be combined with 2 parallel workers"):
        tune_model(data=task, pruner="median", executor=LocalExecutor(2), out=tmp_path / "b")
    two = builtin("iris", epochs=1, model=[models.make_mlp, models.make_mlp])
    with pytest.raises(ConfigError, match="this task trains 2 models per trial"):
        tune_model(data=two, pruner="asha", out=tmp_path / "c")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_pruners_by_name():
    assert isinstance(make_pruner("median", max_epochs=9), optuna.pruners.MedianPruner)
    asha = make_pruner("asha", max_epochs=9)
    assert isinstance(asha, optuna.pruners.SuccessiveHalvingPruner)
    hyperband = make_pruner("hyperband", max_epochs=52)
    assert isinstance(hyperband, optuna.pruners.HyperbandPruner)
    assert hyperband._max_resource == 52 and hyperband._min_resource == 1
    assert make_pruner(None, max_epochs=9) is None
    with pytest.raises(ConfigError, match="got 'sha'"):
        make_pruner("sha", max_epochs=9)


def test_a_stopped_evaluation_is_not_cached():
    task = builtin("iris", epochs=4)
    evaluator = Evaluator(TorchBackend(num_threads=1))
    config = {"optimizer": "adam", "lr": 0.01}
    partial = evaluator.evaluate(task, config, on_epoch=lambda epoch, value: epoch == 2)
    assert partial.stopped_early and partial.epochs_done == 2
    full = evaluator.evaluate(task, config)
    assert not full.cached and full.epochs_done == 4 and evaluator.n_trained == 2
    assert full.curve[:2] == partial.curve
    with pytest.raises(ConfigError, match="in this process"):
        Evaluator(TorchBackend(), n_workers=2).submit(task, config, on_epoch=lambda e, v: False)


def test_cli_tune_with_a_pruner(tmp_path, csv_file, capsys):
    args = ("tune", "--data", csv_file, "--target", "y", "--epochs", "4")
    code, out, err = run_cli(
        *args, "--trials", "4", "--pruner", "hyperband", "--out", tmp_path / "a", capsys=capsys
    )
    assert code in (0, None), err
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    assert report["pruner"] == "HyperbandPruner" and len(report["trials"]) == 4
    assert f"{report['n_pruned']} pruned" in out
    for t in report["trials"]:
        assert (t["status"] == "pruned") == (t["pruned_epoch"] is not None)
        assert t["epochs"] == (t["pruned_epoch"] or 4)
    code, _, err = run_cli(*args, "--pruner", "foo", capsys=capsys)
    assert code == 2
    assert err.strip() == "hporl: error: --pruner 'foo': choose one of median, asha, hyperband"
    code, _, err = run_cli(*args, "--pruner", "asha", "--parallel", "2", capsys=capsys)
    assert code == 2 and "--pruner asha reads every epoch" in err and len(err.splitlines()) == 1


def test_pruning_with_an_in_memory_store_reports_each_epoch_once():
    """Without ``out`` the trials live in optuna's in-memory storage: the result is written
    into the trial without reporting its epochs again (optuna warns for each one)."""
    task = builtin("iris", epochs=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        res = tune_model(data=task, n_trials=2, pruner=_PruneTrialAt(1, 1), options=QUICK)
    assert [t["status"] for t in res.trials] == ["ok", "pruned"]


@pytest.mark.parametrize("stored", [False, True])
def test_a_cached_trial_is_pruned_where_a_trained_one_would_be(tmp_path, stored):
    """A full result from the cache (memory or store) is replayed through the pruner: it stops
    at the same epoch as the training would have, and costs the epochs up to there; a bench's
    pruned method on a real suite (whose configurations the plain method trained) depends on it."""
    task = builtin("iris", epochs=5)
    config = {"optimizer": "adam", "lr": 0.01}
    evaluator = Evaluator(
        TorchBackend(num_threads=1), store=TrialStore(tmp_path / "t.db") if stored else None
    )
    full = evaluator.evaluate(task, config)
    assert full.epochs_done == 5 and not full.stopped_early
    if stored:  # a fresh process: the store is the only cache
        evaluator = Evaluator(TorchBackend(num_threads=1), store=TrialStore(tmp_path / "t.db"))
    seen = []

    def stop_after_two(epoch, value):
        seen.append((epoch, value))
        return epoch == 2

    trained = TorchBackend(num_threads=1).evaluate(task, config, on_epoch=lambda e, v: e == 2)
    replayed = evaluator.evaluate(task, config, on_epoch=stop_after_two)
    assert replayed.cached and replayed.stopped_early
    assert seen == list(enumerate(full.curve[:2], start=1))
    assert replayed.curve == trained.curve == full.curve[:2]
    assert replayed.epochs_done == trained.epochs_done == 2
    assert replayed.best_metric == trained.best_metric
    untouched = evaluator.evaluate(task, config)  # without a pruner: the full result again
    assert untouched.curve == full.curve
