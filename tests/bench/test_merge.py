"""`benchmarks/merge_bench.py`: fold runs, and runs of other methods on the same tasks, merged
into the report one bench would have written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hporl.bench import run
from tests._helpers import LCBENCH_BENCH, needs_lcbench

MERGE = Path(__file__).resolve().parents[2] / "benchmarks" / "merge_bench.py"


def _regrets(out: Path) -> dict[tuple, float]:
    rows = json.loads((out / "results.json").read_text())
    return {(r["method"], r["task"], r["seed"], r["trial"]): r["regret"] for r in rows}


@needs_lcbench
def test_runs_of_other_methods_merge_under_one_normalisation(tmp_path):
    config = {
        **LCBENCH_BENCH,
        "test_tasks": ["34539", "167152"],
        "budgets": [1, 14],  # TPE samples like random search for its first 10
        "seeds": 2,
        "normalisation_samples": 30,  # few: a method beats y_max, so runs raise it differently
    }
    both = {**config, "methods": ["random", "tpe"]}
    run(both, out=tmp_path / "both")
    run({**config, "methods": ["random"]}, out=tmp_path / "a")
    run({**config, "methods": ["tpe", "random"]}, out=tmp_path / "b")
    (tmp_path / "both.yaml").write_text(yaml.safe_dump(both))
    args = [sys.executable, str(MERGE), str(tmp_path / "both.yaml"), str(tmp_path / "a"),
            str(tmp_path / "b")]  # fmt: skip
    apart = subprocess.run([*args, "--out", str(tmp_path / "m")], capture_output=True, text=True)
    assert "overlap" in apart.stderr and apart.returncode != 0  # same tasks: needs the flag
    merged = subprocess.run(
        [*args, "--methods-apart", "--out", str(tmp_path / "m")], capture_output=True, text=True
    )
    assert merged.returncode == 0, merged.stderr
    want, got = _regrets(tmp_path / "both"), _regrets(tmp_path / "m")
    assert got.keys() == want.keys()  # random taken once, from the first run
    assert got == pytest.approx(want)
    alone = _regrets(tmp_path / "a")
    assert any(alone[k] != pytest.approx(want[k]) for k in alone)  # the merge changed them
    summary = json.loads((tmp_path / "m" / "summary.json").read_text())
    assert list(summary["methods"]) == ["random", "tpe"]


@needs_lcbench
def test_more_seeds_run_apart_merge_into_the_bench_of_all_seeds(tmp_path):
    """``first_seed``: seeds 0 and 1 run as two benches give the runs of one bench of both
    seeds, and merge (``--methods-apart``, one run per method, task and seed) into its report."""
    config = {
        **LCBENCH_BENCH,
        "test_tasks": ["34539"],
        "methods": ["random", "tpe"],
        "budgets": [1, 12],
        "seeds": 2,
        "normalisation_samples": 30,
    }
    run(config, out=tmp_path / "both")
    run({**config, "seeds": 1}, out=tmp_path / "a")
    run({**config, "seeds": 1, "first_seed": 1}, out=tmp_path / "b")
    assert {k[2] for k in _regrets(tmp_path / "b")} == {1}
    (tmp_path / "both.yaml").write_text(yaml.safe_dump(config))
    merged = subprocess.run(
        [sys.executable, str(MERGE), str(tmp_path / "both.yaml"), str(tmp_path / "a"),
         str(tmp_path / "b"), "--methods-apart", "--out", str(tmp_path / "m")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert merged.returncode == 0, merged.stderr
    want, got = _regrets(tmp_path / "both"), _regrets(tmp_path / "m")
    assert got.keys() == want.keys() and got == pytest.approx(want)
    with pytest.raises(ValueError, match="first_seed"):
        run({**config, "first_seed": -1}, out=tmp_path / "bad")
