"""Helpers shared by several test modules (test modules never import each other)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from hporl import HPOEnv, Policy, SyntheticBackend
from hporl.backends import SyntheticTask
from hporl.cli import main

SMALL_SPACE = {
    "optimizer": {"type": "categorical", "choices": ["sgd", "adam", "rmsprop"]},
    "lr": {"type": "float", "low": 1e-5, "high": 1.0, "log": True},
    "momentum": {
        "type": "float",
        "low": 0.0,
        "high": 0.99,
        "when": {"optimizer": ["sgd", "rmsprop"]},
    },
}


def make_env_fn(space, tasks, budget=1):
    """An env factory (for ``train_agent``) over the synthetic backend."""
    backend = SyntheticBackend(space)
    return lambda: HPOEnv(space, backend, tasks, budget=budget)


def run_cli(*args: Any, capsys) -> tuple[int, str, str]:
    """Run ``hporl`` in this process: (exit code, stdout, stderr)."""
    code = 0
    try:
        main([str(a) for a in args])
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def write_csv(path: Path) -> Path:
    """120 rows of three numeric columns and a two-class string target ``y``."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 3))
    y = np.where(X[:, 0] - X[:, 2] > 0, "a", "b")
    path.write_text(
        "x1,x2,x3,y\n"
        + "\n".join(",".join(f"{v:.3f}" for v in r) + f",{t}" for r, t in zip(X, y, strict=True))
    )
    return path


@torch.no_grad()
def accuracy_on_test_split(model: torch.nn.Module, task) -> float:
    """The classification accuracy of ``model`` on ``task``'s test split, computed here
    (not by the backend) to check what a tuning result reports."""
    model.eval()
    predicted = model(task.X_test).argmax(1)
    return (predicted == task.y_test).float().mean().item()


def saved_model_accuracy(directory: Path, task, config: dict[str, Any]) -> float:
    """Load ``directory/model.pt`` (weights only) into ``task``'s model built for ``config``
    and return its test accuracy: what a saved tuning result really scores."""
    model = task.build_model(0, config)
    model.load_state_dict(torch.load(Path(directory) / "model.pt", weights_only=True))
    return accuracy_on_test_split(model, task)


def policy_from(agent, space, cfg, budget=1, n_features=4):
    env = HPOEnv(
        space,
        SyntheticBackend(space),
        SyntheticTask.sample(0, 2, n_features=n_features),
        budget=budget,
    )
    return Policy.from_agent(
        agent,
        env.layout,
        algorithm=cfg.algorithm,
        policy_kwargs=cfg.policy_kwargs(env.layout),
        training_tasks=["a", "b"],
    )


def truncate(name: str, keep: float = 0.5) -> Callable[[Path], None]:
    """A damage for file-check tests: cut the file ``name`` of a directory to ``keep`` of it."""

    def damage(d: Path) -> None:
        data = (d / name).read_bytes()
        (d / name).write_bytes(data[: int(len(data) * keep)])

    return damage


def lcbench_data() -> Path | None:
    """The YAHPO LCBench scenario folder beside the checkout (``../shared``), or ``None``."""
    for candidate in (
        Path(__file__).resolve().parents[1] / ".." / "shared" / "benchmarks" / "yahpo" / "lcbench",
        Path("../shared/benchmarks/yahpo/lcbench"),
    ):
        if (candidate / "model.onnx").exists():
            return candidate
    return None


LCBENCH = lcbench_data()
needs_lcbench = pytest.mark.skipif(
    LCBENCH is None, reason="YAHPO LCBench data not found at ../shared/benchmarks/yahpo/lcbench"
)
LCBENCH_BENCH = {"benchmark": "lcbench", "data_dir": str(LCBENCH)}
"""The start of an LCBench bench config (tests marked ``needs_lcbench``)."""

RPART = (
    Path(__file__).resolve().parents[1] / ".." / "shared" / "benchmarks" / "yahpo" / "rbv2_rpart"
)
needs_rpart = pytest.mark.skipif(
    not (RPART / "model.onnx").is_file(), reason=f"YAHPO rbv2_rpart data not found at {RPART}"
)
RPART_TINY = {
    "benchmark": "yahpo/rbv2_rpart",
    "data_dir": str(RPART),
    "train_tasks": ["1040", "1049", "1050"],
    "test_tasks": ["1056", "1063"],
    "methods": ["random", "best_average", "portfolio"],
    "budgets": [1, 3],
    "seeds": 1,
    "normalisation_samples": 100,
    "transfer_candidates": 30,
}
"""A bench on rbv2_rpart small enough for a test (shared by the bench tests)."""
