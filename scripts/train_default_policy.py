"""Meta-train hporl's packaged default policy (the ``optimizer`` space) and write it into the package.

    .venv/bin/python scripts/train_default_policy.py                 # the shipped policy, ~25 min
    .venv/bin/python scripts/train_default_policy.py --quick --candidates 4 --timesteps 64 \\
        --out /tmp/run --policy-out /tmp/policy                        # a smoke run

The task distribution: every built-in real data set (tabular, the digits images with a CNN,
mnist1d, two generated image tasks with a LeNet), generated ``synth_clf_N`` / ``synth_reg_N``
families of varied size, width, noise, class count and imbalance, and model variants (linear,
narrow, wide and deep MLPs). The warm start evaluates ``--candidates`` configurations of the
space on every task, behaviour-clones their greedy portfolio, then MaskablePPO refines it.

Every evaluation goes through the trial store (``OUT/trials.db`` or ``--storage``): stopped and
started again, the script trains no evaluation twice (``summary.json``: ``trained``,
``store_hits``). The held-out data sets of ``benchmarks/default_policy.py`` (the ``heldout``
and ``heldout_hard`` suites) are kept out of the training tasks by name; the script refuses to
run otherwise.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch

from hporl import run_experiment
from hporl.tasks import Task, builtin, suites
from hporl.tasks import models as M

ROOT = Path(__file__).resolve().parents[1]
POLICY_DIR = ROOT / "src" / "hporl" / "policies" / "default"
HELD_OUT = set(suites()["heldout"]) | set(suites()["heldout_hard"])


def training_tasks(quick: bool = False) -> list[Task]:
    """The meta-training tasks; a variant's name is ``<data set>+<model>``."""

    def variant(name: str, model: Any, label: str) -> Task:
        task = builtin(name, model=model)
        task.name = f"{name}+{label}"
        return task

    if quick:
        return [builtin("iris"), builtin("wine"), variant("breast_cancer", M.linear, "linear")]
    fixed = [
        "iris",
        "wine",
        "breast_cancer",
        "digits",
        "diabetes",
        "digits_linear",
        "digits_image",  # 1x8x8 images, SmallCNN
        "mnist1d",
        "shapes",  # generated 16x16 images, LeNet
        "gratings",
    ]
    tasks = [builtin(n) for n in fixed]
    tasks += [builtin(f"synth_clf_{i}") for i in range(24)]
    tasks += [builtin(f"synth_reg_{i}") for i in range(4)]
    tasks += [
        variant("breast_cancer", M.linear, "linear"),
        variant("wine", M.mlp((32,)), "mlp32"),
        variant("digits", M.mlp((256, 256, 128)), "mlp256x256x128"),
        variant("mnist1d", M.linear, "linear"),
        variant("mnist1d", M.mlp((256, 128, 64), dropout=0.1), "mlp256x128x64"),
        variant("synth_clf_24", M.linear, "linear"),
        variant("synth_clf_25", M.linear, "linear"),
        variant("synth_clf_26", M.mlp((32,)), "mlp32"),
        variant("synth_clf_27", M.mlp((16, 16)), "mlp16x16"),
        variant("synth_clf_28", M.mlp((512, 256)), "mlp512x256"),
        variant("synth_clf_29", M.mlp((256, 256, 256, 128), dropout=0.2), "mlp4x256"),
        variant("synth_reg_4", M.mlp((256, 256, 128)), "mlp256x256x128"),
    ]
    return tasks


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "default-policy")
    parser.add_argument("--policy-out", type=Path, default=POLICY_DIR)
    parser.add_argument("--storage", default=None, help="trial store (default OUT/trials.db)")
    parser.add_argument("--epochs", type=int, default=10, help="epochs per trial")
    parser.add_argument("--budget", type=int, default=10, help="K: trials per episode")
    parser.add_argument("--candidates", type=int, help="warm-start candidates (default 40)")
    parser.add_argument("--timesteps", type=int, help="MaskablePPO steps (default 3,000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="three small tasks (smoke test)")
    parser.add_argument(
        "--surrogate",
        type=Path,
        help="meta-train through this surrogate (`hporl surrogate fit`) instead of real training: "
        "the whole-history policy (layout version 2), the surrogate recipe of hporl.recipes "
        "(warm start on --candidates surrogate-scored configurations, then --timesteps PPO steps "
        "on 32 envs); defaults then 2,000 candidates and 1,000,000 steps",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    tasks = training_tasks(args.quick)
    names = [t.name for t in tasks]
    leaked = sorted({n.split("+")[0] for n in names} & HELD_OUT)
    assert not leaked, f"held-out data sets in the training tasks: {leaked}"
    assert len(set(names)) == len(names), "task names must be unique"

    surrogate = args.surrogate is not None
    args.candidates = args.candidates or (2000 if surrogate else 40)
    args.timesteps = args.timesteps or (1_000_000 if surrogate else 3000)
    experiment = {
        "name": "default-policy",
        "tasks": tasks,
        "space": "optimizer",
        "backend": {"name": "torch", "epochs": args.epochs},
        "reward": "best_metric",
        "budget": args.budget,
        "pretrain": {"candidates": args.candidates, "seed": args.seed},
        "agent": {
            "algorithm": "maskable_ppo",
            "total_timesteps": args.timesteps,
            "learning_rate": 1e-4,
            "seed": args.seed,
            "net_arch": [64, 64],
            "params": {"n_steps": 256, "batch_size": 64, "ent_coef": 0.0},
        },
    }
    if surrogate:  # cheap steps: the recipe measured on LCBench's surrogate
        from hporl.recipes import SURROGATE_AGENT, SURROGATE_PRETRAIN

        experiment["backend"] = {"surrogate": str(args.surrogate), "epochs": args.epochs}
        experiment["pretrain"] |= SURROGATE_PRETRAIN
        experiment["agent"] = {
            **SURROGATE_AGENT,
            "algorithm": "maskable_ppo",
            "total_timesteps": args.timesteps,
            "seed": args.seed,
        }
    start = time.perf_counter()
    run_experiment(experiment, out=args.out, storage=args.storage, progress_bar=surrogate)
    seconds = time.perf_counter() - start
    summary = json.loads((args.out / "summary.json").read_text())
    portfolio = json.loads((args.out / "portfolio.json").read_text())

    args.policy_out.mkdir(parents=True, exist_ok=True)
    for name in ("policy.safetensors", "policy.json"):
        shutil.copyfile(args.out / "policy" / name, args.policy_out / name)
    note = {
        "script": "scripts/train_default_policy.py",
        "argv": sys.argv[1:] if argv is None else argv,
        "space": "optimizer",
        "backend": "surrogate" if surrogate else "torch",
        "surrogate": str(args.surrogate) if surrogate else None,
        "epochs_per_trial": args.epochs,
        "budget_K": args.budget,
        "candidates": args.candidates,
        "ppo_timesteps": args.timesteps,
        "seed": args.seed,
        "tasks": names,
        "held_out_by_name": sorted(HELD_OUT),
        "seconds": round(seconds, 1),
        "evaluations_trained": summary.get("trained"),
        "evaluations_from_store": summary.get("store_hits"),
        "portfolio_mean_regret_on_training_tasks": portfolio.get("portfolio_mean_regret"),
        "behaviour_cloning_action_accuracy": portfolio.get("action_accuracy"),
        "torch": torch.__version__,
    }
    (args.policy_out / "TRAINING.json").write_text(json.dumps(note, indent=2) + "\n")
    print(json.dumps({k: v for k, v in note.items() if k != "tasks"}, indent=2))
    return summary


if __name__ == "__main__":
    main()
