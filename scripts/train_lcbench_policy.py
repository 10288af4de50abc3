"""Meta-train a policy for the ``lcbench`` space on the LCBench surrogate, for sim-to-real use.

The policy reads each task by its size (the ``"size"`` feature set,
``hporl.tasks.SIZE_FEATURE_NAMES``), which a real classification task has too, so ``tune_model(..., policy=...)`` can use it to tune real
training of LCBench's funnel MLP (``hporl.tasks.models.lcbench_mlp``, SGD with momentum, cosine
schedule) on data it never saw; ``benchmarks/default_policy.py --policy DIR --space lcbench
--model lcbench_mlp`` measures that against random search and TPE.

Data: ../shared/benchmarks/yahpo/lcbench (or HPORL_YAHPO_DATA). The recipe of
``examples/bench_lcbench.yaml``'s ``policy: {}`` (hporl's defaults: the adaptive warm start on
10,000 surrogate-scored candidates, then a million MaskablePPO steps), on 33 of the 34 tasks
(the bench protocol wants one held out; it is unused here).

    .venv/bin/python scripts/train_lcbench_policy.py [--out runs/lcbench-policy] [--quick]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from hporl.bench._runner import BenchConfig, _Bench, _policy


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/lcbench-policy"))
    parser.add_argument("--quick", action="store_true", help="a tiny budget (for tests)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    scale = 0.004 if args.quick else 1.0
    probe = _Bench(
        BenchConfig.load({"benchmark": "lcbench", "test_tasks": ["3945"], "methods": ["random"]}),
        args.out,
    )
    tasks = list(probe.all_tasks)
    # hporl's defaults (hporl.recipes: the adaptive warm start on the 10,000-config sample, then
    # a million PPO steps), for K = 10 trials; --quick shrinks only the budgets.
    settings: dict = {"budget": 10}
    if args.quick:
        settings["pretrain"] = {"candidates": 8, "epochs": 5}
        settings["agent"] = {"total_timesteps": 64, "n_envs": 2, "params": {"n_steps": 32}}
    config = BenchConfig.load(
        {
            "benchmark": "lcbench",
            "train_tasks": tasks[1:],
            "test_tasks": tasks[:1],
            "methods": ["policy"],
            "normalisation_samples": max(int(10_000 * scale), 8),
            "policy": settings,
        }
    )
    bench = _Bench(config, args.out)
    start = time.perf_counter()
    policy = _policy(config, bench, tasks[1:], args.out / "run", progress_bar=True)
    policy.save(args.out)
    note = {
        "space": "lcbench",
        "features": policy.feature_names,
        "training_tasks": policy.training_tasks,
        "settings": settings,
        "seconds": round(time.perf_counter() - start, 1),
    }
    (args.out / "TRAINING.json").write_text(json.dumps(note, indent=2))
    print(f"{policy!r} saved to {args.out} in {note['seconds']} s")


if __name__ == "__main__":
    main()
