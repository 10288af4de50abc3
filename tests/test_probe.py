"""A full-fidelity policy in a budget of epochs: its proposals probed for part of the epochs, the
best continued to full (``hporl.sampler.Probe``, issue 16)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hporl import ConfigError, TuneOptions, tune_model
from hporl.backends import TrialResult
from hporl.rewards import normalized_score
from hporl.sampler import PROBE, Probe, budgeted_choice, probe_choice
from hporl.tasks import builtin
from tests._helpers import run_cli


class Reading:
    """A real policy that records the trials it is shown (what ``probe_choice`` lets it read)."""

    budget_aware = False

    def __init__(self, policy):
        self.policy, self.shown = policy, []

    def suggest_scored(self, task, trials, **kwargs):
        self.shown.append(list(trials))
        return self.policy.suggest_scored(task, trials, **kwargs)


def _ok(curve):
    return TrialResult.from_curves(
        metric_name="accuracy",
        chance_metric=CHANCE,
        curve=curve,
        loss_curve=[1 - c for c in curve],
        train_loss_curve=[1 - c for c in curve],
        status="ok",
        epochs=len(curve),
        config={},
    )


HALVES = Probe(1 / 3, 2)
CHANCE = 1 / 3  # iris


def _choose(policy, task, history, *, left=100, resumable=True, probe=HALVES):
    return probe_choice(
        policy,
        task,
        history,
        epochs_left=left,
        resumable=resumable,
        probe=probe,
        rng=np.random.default_rng(0),
        avoid=set(),
    )


def test_probe_settings_are_checked():
    assert PROBE == HALVES  # the default
    assert Probe.from_setting(None) == Probe.from_setting(True) == PROBE
    assert Probe.from_setting(False) is None
    assert Probe.from_setting({"fidelity": 0.25, "rounds": 3}) == Probe(0.25, 3)
    for bad in (0, 1.0, 1.5):
        with pytest.raises(ValueError, match="probe fidelity must be in"):
            Probe(bad)
    for bad in ("0.5", True, None):
        with pytest.raises(ValueError, match="probe fidelity must be in"):
            Probe(bad)
    for bad in (0, 2.0, True, "2"):
        with pytest.raises(ValueError, match="probe rounds must be a positive integer"):
            Probe(0.5, bad)
    with pytest.raises(ValueError, match="probe must be true, false or"):
        Probe.from_setting({"fidelity": 0.5, "round": 2})
    with pytest.raises(ConfigError, match=r"probe must be a hporl\.sampler\.Probe or None"):
        TuneOptions(probe=0.5)


def test_first_trial_full_then_probes_and_the_best_probe_continued(tiny_policy):
    policy = Reading(tiny_policy[0])
    task = builtin("iris", epochs=6)
    first = _choose(policy, task, [])
    assert (first.fidelity, first.epochs, first.cost, first.continues) == (1.0, 6, 6, None)
    # The policy reads every trial at the probes' epochs: the full one's curve cut at 2.
    history = [(first.config, _ok([0.5, 0.6, 0.7, 0.8, 0.85, 0.9]), 1.0)]
    probe = _choose(policy, task, history)
    assert (probe.fidelity, probe.epochs, probe.cost, probe.continues) == (1 / 3, 2, 2, None)
    assert task.chance_metric == pytest.approx(CHANCE)
    assert policy.shown[-1] == [(first.config, normalized_score(0.6, CHANCE))]
    history.append((probe.config, _ok([0.4, 0.95]), 1 / 3))
    assert _choose(policy, task, history).continues is None  # one probe of a round of two
    other = _ok([0.7, 0.75])
    history.append((dict(first.config), other, 1 / 3))
    more = _choose(policy, task, history)  # two probes: the better (0.95) trains on, 4 epochs
    assert (more.fidelity, more.epochs, more.cost, more.continues) == (1.0, 6, 4, 1)
    assert more.config == probe.config
    history[1] = (probe.config, _ok([0.4, 0.95, 0.9, 0.9, 0.9, 0.9]), 1.0)
    assert _choose(policy, task, history).epochs == 2  # continued: a new round of probes
    # What fits: in fewer than a full training's 6 epochs a new probe could not be continued
    # within the budget, so the best open probe is (4 epochs), even before its round of two is
    # complete; in 3 nothing could be trained to the end, and the run ends.
    history[1] = (probe.config, _ok([0.4, 0.95]), 1 / 3)
    one_open = history[:2]
    assert _choose(policy, task, one_open, left=6).epochs == 2  # a probe, continued later
    assert _choose(policy, task, one_open, left=5).continues == 1
    assert _choose(policy, task, history, left=3) is None
    assert _choose(policy, task, history, left=1) is None
    # A failed probe is never continued.
    history[1] = (probe.config, TrialResult(status="failed", metric_name="accuracy"), 1 / 3)
    assert _choose(policy, task, history).continues == 2


def test_full_trainings_without_probe_or_resume(tiny_policy):
    policy = Reading(tiny_policy[0])
    task = builtin("iris", epochs=6)
    history = [({}, _ok([0.5] * 6), 1.0)]
    for kwargs in ({"probe": None}, {"resumable": False}):
        choice = _choose(policy, task, history, **kwargs)
        assert (choice.fidelity, choice.epochs, choice.cost) == (1.0, 6, 6)
    # A probe that rounds to the full epochs is a full training.
    two = builtin("iris", epochs=1)
    assert _choose(policy, two, [({}, _ok([0.5]), 1.0)]).fidelity == 1.0
    # budgeted_choice hands a policy that is not budget-aware to probe_choice
    choice = budgeted_choice(
        policy,
        task,
        history,
        spent=6,
        budget_epochs=30,
        resumable=True,
        then="gp",
        after=10,
        space=tiny_policy[0].space,
        score=lambda r: r.best_metric,
        seed=0,
        position=1,
        rng=np.random.default_rng(0),
        avoid=set(),
    )
    assert (choice.fidelity, choice.epochs) == (1 / 3, 2)


def test_tune_model_probes_a_trial_count_policy_and_resumes(tiny_policy, tmp_path):
    policy, _ = tiny_policy
    task = builtin("iris", epochs=6)
    options = TuneOptions(compare_default=False, then=None, probe=Probe(1 / 3, 2))
    res = tune_model(data=task, policy=policy, budget_epochs=20, out=tmp_path, options=options)
    report = json.loads((tmp_path / "report.json").read_text())
    assert not report["budget_aware"] and report["probe"] == {"fidelity": 1 / 3, "rounds": 2}
    trials = res.trials
    plan = [(t["fidelity"], t["epochs"], t["epochs_cost"]) for t in trials]
    third = 1 / 3
    assert plan == [
        (1.0, 6, 6),
        (third, 2, 2),
        (third, 2, 2),
        (1.0, 6, 4),  # the better probe, resumed for 4 more epochs
        (third, 2, 2),
        (1.0, 6, 4),  # 4 epochs left: no new probe could be continued, this one is (20 epochs)
    ]
    assert report["epochs_spent"] == 20
    continued = trials[3]
    probes = {t["number"]: t for t in trials[1:3]}
    assert continued["continues"] in probes
    source = probes[continued["continues"]]
    assert continued["config"] == source["config"]
    rival = next(t for n, t in probes.items() if n != continued["continues"])
    assert source["best_val_metric"] >= rival["best_val_metric"]
    # The final model comes from a trial trained for all 6 epochs.
    full = [t for t in trials if t["fidelity"] == 1.0 and t["status"] == "ok"]
    assert res.config in [t["config"] for t in full]
    again = tune_model(data=task, policy=policy, budget_epochs=20, out=tmp_path, options=options)
    assert len(again.trials) == len(trials)


def test_cli_probe_option(csv_file, tiny_policy, tmp_path, capsys):
    _, policy_dir = tiny_policy
    out = tmp_path / "out"
    base = ["tune", "--data", str(csv_file), "--target", "y", "--policy", str(policy_dir)]
    code, _, err = run_cli(
        *base, "--budget-epochs", "4", "--epochs", "3", "--probe", "2:2", capsys=capsys
    )
    assert code != 0 and "--probe '2:2'" in err and "e.g. 0.333:2" in err
    assert len(err.strip().splitlines()) == 1
    code, _, err = run_cli(
        *base, "--budget-epochs", "9", "--epochs", "3", "--probe", "off", "--out", out,
        capsys=capsys,
    )  # fmt: skip
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    assert report["probe"] is None and [t["epochs"] for t in report["trials"]] == [3, 3, 3]
    code, text, err = run_cli(  # the default: probes of 1 epoch, each trial's epochs shown
        *base, "--budget-epochs", "7", "--epochs", "3", "--out", tmp_path / "probed",
        capsys=capsys,
    )  # fmt: skip
    assert code == 0, err
    lines = [line.strip() for line in text.splitlines() if line.strip().startswith("trial ")]
    assert [line.split(":")[0] for line in lines] == [
        "trial 1 [3 epochs]",
        "trial 2 [1 epoch]",
        "trial 3 [1 epoch]",
        "trial 4 [3 epochs]",  # the better probe, resumed (2 more epochs)
    ]
