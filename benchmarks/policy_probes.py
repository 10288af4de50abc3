"""Can a full-fidelity policy's proposals, probed at a fraction of the epochs, reach its K = 10
regret with half the epochs? Offline on LCBench, no RL.

For each fold of a 4-fold LCBench bench (its YAML: ``test_tasks`` and ``policy_path``), each
held-out task is played by the fold's K-trial policy (deterministic, no repeats). Its first
proposal trains fully; every later proposal is a probe of ``e`` epochs, and the policy reads the
probes' scores (every trial in its history at ``e`` epochs, the first included, so that the
ranks it sees compare like with like). Schedules:

- ``e:r``: ``r`` probes, then the best probe not yet continued (by its best epoch's score, as
  ``hporl.sampler.probe_choice``) is continued to the full 52 epochs (at the cost of the extra
  epochs), again and again;
- ``full``: every proposal trains fully (the K-trial policy as benched);
- ``e:r:oracle``: as ``e:r``, but the probe continued is the one whose final score is the
  highest (not knowable when tuning: how much a better choice among the probes could buy).

Regret at B full-training equivalents: of the best configuration trained fully within B x 52
epochs, normalised by the task's 10,000-sample y_min / y_max (y_max not raised to the best any
method found, so figures sit a little below the bench's).

    python benchmarks/policy_probes.py FOLD0.yaml ... FOLD3.yaml [--split train]
        [--schedules full,6:3,17:2,6:3:oracle] [--data DIR]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import yaml

from hporl.backends.lcbench import LCBenchBackend
from hporl.policy import Policy
from hporl.space import config_key

BUDGETS = (1, 2, 3, 4, 5, 6, 8, 10)
FULL = 52


def play(
    policy: Policy,
    backend: LCBenchBackend,
    task,
    probe: int | None,
    per_round: int,
    oracle: bool = False,
):
    """(epochs spent when trained fully, final score) of each configuration trained fully, in
    order, until the largest budget is spent."""
    history, seen, probes = [], set(), []  # probes: [score at `probe`, config]
    found: list[tuple[int, float]] = []
    spent = 0
    limit = max(BUDGETS) * FULL

    def propose() -> dict:
        config = policy.suggest(task, history, deterministic=True, avoid=seen)
        seen.add(config_key(config))
        return config

    while spent < limit:
        config = propose()
        if probe is None or not found:  # the first trial, or the full-fidelity schedule
            full = backend.evaluate(task, config, epochs=FULL)
            spent += FULL
            found.append((spent, full.curve[-1] if full.ok else -np.inf))
            cut = full if probe is None else backend.evaluate(task, config, epochs=probe)
            history.append((config, cut))
            continue
        short = backend.evaluate(task, config, epochs=probe)
        spent += probe
        history.append((config, short))
        key = max(short.curve) if short.ok else -np.inf  # its best epoch, as probe_choice
        if oracle and short.ok:  # choose by the final score (not knowable: an upper bound)
            key = backend.evaluate(task, config, epochs=FULL).curve[-1]
        probes.append([key, config])
        if len(probes) % per_round == 0:
            best = max(probes, key=lambda p: p[0])
            best[0] = -np.inf  # continued: not again
            full = backend.evaluate(task, best[1], epochs=FULL)
            spent += FULL - probe
            found.append((spent, full.curve[-1] if full.ok else -np.inf))
    return found


def regrets(found, lo, hi):
    out = []
    for b in BUDGETS:
        best = max((v for s, v in found if s <= b * FULL), default=lo)
        out.append(float(1 - (max(best, lo) - lo) / (hi - lo)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("configs", nargs="+", help="the folds' bench YAML files")
    parser.add_argument("--data", default=None, help="the LCBench scenario folder")
    parser.add_argument(
        "--split",
        choices=("test", "train"),
        default="test",
        help="play the folds' held-out tasks, or their training tasks (to choose a schedule "
        "without looking at the held-out ones)",
    )
    parser.add_argument("--schedules", default="full,17:1,17:2,17:3,9:2,9:3,9:4,6:3,6:5,26:1,26:2")
    args = parser.parse_args()
    backend = LCBenchBackend(data_dir=args.data)
    schedules = {}
    for s in args.schedules.split(","):
        if s == "full":
            schedules[s] = (None, 1, False)
        else:
            e, r, *how = s.split(":")
            oracle = how == ["oracle"]
            label = f"probe {e} ep, rounds of {r}" + (", oracle choice" if oracle else "")
            schedules[label] = (int(e), int(r), oracle)
    table: dict[str, list[list[float]]] = {name: [] for name in schedules}
    for path in args.configs:
        config = yaml.safe_load(Path(path).read_text())
        policy = Policy.load(Path(config["policy_path"]) / "policy")
        names = config[f"{args.split}_tasks"]
        for name in names:
            task = backend.task(name)
            lo, hi = backend.normalisation(task, n=10_000, seed=0)
            for label, (probe, per_round, oracle) in schedules.items():
                found = play(policy, backend, task, probe, per_round, oracle)
                table[label].append(regrets(found, lo, hi))
        print(f"{path}: {len(names)} {args.split} tasks", flush=True)
    print("| schedule | " + " | ".join(f"B={b}" for b in BUDGETS) + " |")
    print("|---" * (len(BUDGETS) + 1) + "|")
    for label, rows in table.items():
        r = np.array(rows)
        m, se = r.mean(0), r.std(0, ddof=1) / np.sqrt(len(r))
        print(
            f"| {label} | "
            + " | ".join(f"{a:.3f}±{s:.3f}" for a, s in zip(m, se, strict=True))
            + " |"
        )


if __name__ == "__main__":
    main()
