"""`benchmarks/paired_regret.py`: paired regret differences of two methods of a finished bench,
at its budgets (trials or epochs), or against one budget of the other method."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from hporl.bench import run
from tests._helpers import RPART_TINY, needs_rpart

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "paired_regret.py"


def _paired(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True)


@needs_rpart
@pytest.mark.parametrize("unit", ["trials", "epochs"])
def test_paired_differences_are_the_differences_of_the_report_means(tmp_path, unit):
    config = {**RPART_TINY, "methods": ["random", "best_average"], "seeds": 2}
    summary = run({**config, "budget_unit": unit}, out=tmp_path)
    done = _paired(str(tmp_path), "random", "best_average")
    assert done.returncode == 0, done.stderr
    got = dict(re.findall(r"[KB] = (\d+): ([-+]\d\.\d+)", done.stdout))
    regret = {m: summary["methods"][m]["regret"] for m in ("random", "best_average")}
    for k in ("1", "3"):  # every run is paired: the mean difference is the means' difference
        assert float(got[k]) == pytest.approx(
            regret["random"][k] - regret["best_average"][k], abs=1e-4
        )
    assert f"4 paired runs ({unit})" in done.stdout
    # random at B = 1 against best-average at 3: the differences of those cells
    cross = _paired(str(tmp_path), "random", "best_average", "--budgets", "1", "--against", "3")
    (value,) = re.findall(r"= 1: ([-+]\d\.\d+)", cross.stdout)
    records = json.loads((tmp_path / "results.json").read_text())
    assert len(records) == 2 * 2 * 2 * 3  # methods x tasks x seeds x trials
    assert float(value) == pytest.approx(
        regret["random"]["1"] - regret["best_average"]["3"], abs=1e-4
    )
    wrong = _paired(str(tmp_path), "random", "tpe")
    assert wrong.returncode != 0 and "no method 'tpe'" in wrong.stderr
