"""`benchmarks/transfer_pruning.py`'s rules and its calibration table (the offline harness of
budget-aware transfer GP)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from hporl.bench import RUNGS, Rungs

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "transfer_pruning.py"


@pytest.fixture(scope="module")
def harness():
    spec = importlib.util.spec_from_file_location("transfer_pruning", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_rules_name_the_rungs(harness):
    assert harness._rungs("rungs") is RUNGS
    assert harness._rungs("full") is None and harness._rungs("oracle:0.5:2") is None
    assert harness._rungs("rungs:0.25/0.5:0.2:3:resume") == Rungs((0.25, 0.5), 0.2, 3, True)
    per_trial = harness._rungs("rungs:0.5/0.75:0.3/0.5:2:cost")
    assert per_trial == Rungs((0.5, 0.75), (0.3, 0.5), 2, per_cost=True)
    assert harness._rungs("rungs:0.5:0.3:2:anyway") == Rungs((0.5,), 0.3, 2, fits=False)


def test_the_calibration_table_counts_the_share_won_by_trial_and_chance(harness):
    # (trials before the one asked about, its chance, whether it would have won)
    decisions = [(2, 0.6, True), (2, 0.6, False), (2, 0.05, False)]
    decisions += [(9, 0.6, False)] * 3 + [(9, 0.6, True), (12, 0.9, True)]
    lines = harness.calibration(decisions).splitlines()
    assert lines[0].startswith("trial | decisions | mean chance | share won")
    rows = {line.split(" | ")[0]: line.split(" | ") for line in lines[1:]}
    assert set(rows) == {"1-3", "10+"}  # no decisions at trials 4-9
    assert rows["1-3"][1:4] == ["3", "0.417", "0.333"]
    assert rows["1-3"][4] == "0.00 (1)" and rows["1-3"][7] == "0.50 (2)"
    assert rows["10+"][1:4] == ["5", "0.660", "0.400"]
    assert rows["10+"][7] == "0.25 (4)" and rows["10+"][8] == "1.00 (1)"
    assert harness.calibration([]) == "no rung decisions"


def test_sampler_settings_are_numbers_or_lists(harness):
    settings = harness._settings("xi=0.5,rbf=0.01/0.04/0.16,local=100")
    assert settings == {"xi": 0.5, "rbf": [0.01, 0.04, 0.16], "local": 100}
    assert harness._settings(None) == {} and harness._settings("") == {}
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        harness._settings("xi")
