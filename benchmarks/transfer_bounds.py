"""How low can transfer from LCBench's training tasks bring regret after K trials? Offline bounds
for issue 14's K = 3 and K = 10 targets.

Methods, each choosing among one shared random sample of the space (seed 0), 4-fold over the 34
tasks (the folds of the LCBench benches), regret normalised against each task's 10,000-sample
y_min / y_max (:func:`transfer_experts.lcbench_sample`):

- ``portfolio``: the greedy portfolio of the training tasks (what the policy's warm start clones);
- ``adaptive``: :func:`hporl.pretrain.adaptive_orders` (task features, then score matching);
- ``transfer GP``: :class:`hporl.bench.TransferGPSampler` (the bench's ``transfer_gp``) held
  to the candidates: the portfolio's first two, then a mixture over the training tasks, then a
  Gaussian process whose prior is the training tasks' standardised values (the class's
  docstring), conditioned on the test task's values so far. It is given the values in the
  normalised units, i.e. the test task's y_min / y_max, which no tuner knows (the bench gives
  it raw scores);
- ``oracle: nearest training task``: in hindsight, the training task whose own top-K
  candidates do best on the test task, played in that order. Perfect task identification, which
  no tuner has after a few trials.

The last line is the sample's own floor: the regret of its best candidate on each task. With
``--candidates 10000`` the sample is the normalisation sample itself, so that floor is 0; in
``hporl bench`` y_max is raised to the best any method found, and there a method held to the
sample plateaus far above it (README, "Transfer GP"): these figures bound the choice *among*
candidates, not what a search of the whole space reaches.

    python benchmarks/transfer_bounds.py [--candidates 4000] [--data DIR]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from hporl import SearchSpace
from hporl.bench import TransferCandidates, TransferGPSampler
from hporl.pretrain import adaptive_orders, greedy_portfolio
from hporl.space import config_key
from transfer_experts import four_folds, lcbench_configs, lcbench_sample

KS = (1, 3, 5, 10, 30)
SPACE = SearchSpace.builtin("lcbench")


def transfer_gp(values: np.ndarray, configs: list[dict], target: np.ndarray, k: int) -> list[int]:
    """The candidates :class:`hporl.bench.TransferGPSampler` tries, in order, on a task whose
    values are ``target``, given the training tasks' ``values[t, c]`` (candidates only)."""
    sampler = TransferGPSampler(SPACE, TransferCandidates(configs, 1 - values, values))
    index = {config_key(c): i for i, c in enumerate(configs)}
    tried: list[int] = []
    for _ in range(k):
        config = sampler.next_config([(configs[i], float(target[i])) for i in tried])
        tried.append(index[config_key(config)])
    return tried


def nearest_task_oracle(values: np.ndarray, target: np.ndarray, k: int) -> list[float]:
    """Regret at each K of the training task's top-K list that does best on ``target`` at K."""
    out = []
    tops = np.argsort(-values, axis=1)[:, :k]
    for kk in KS:
        out.append(min(1 - target[top[:kk]].max() for top in tops))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", type=int, default=4000)
    parser.add_argument("--data", default=None, help="the LCBench scenario folder")
    args = parser.parse_args()
    start = time.perf_counter()
    v, f = lcbench_sample(args.candidates, args.data)
    configs = lcbench_configs(args.candidates)
    rows: dict[str, list[list[float]]] = {}

    def add(name: str, i: int, order: list[int]) -> None:
        rows.setdefault(name, []).append([1 - v[i, order[:k]].max() for k in KS])

    for test, train in four_folds(len(v)):
        portfolio = greedy_portfolio(v[train], max(KS))
        for i in test:
            add("portfolio", i, portfolio)
            idx = [*train, i]
            add("adaptive", i, adaptive_orders(v[idx], f[idx], max(KS))[-1])
            add("transfer GP", i, transfer_gp(v[train], configs, v[i], max(KS)))
            rows.setdefault("oracle: nearest training task", []).append(
                nearest_task_oracle(v[train], v[i], max(KS))
            )
    floor = 1 - v.max(1)
    base = np.array(rows["portfolio"])
    print(
        f"{args.candidates} candidates, {len(v)} tasks, 4-fold; mean normalised regret ± s.e. "
        f"(× portfolio) at K = {', '.join(map(str, KS))}"
    )
    for name, r in rows.items():
        r = np.array(r)
        se = r.std(0) / np.sqrt(len(r))
        ratio = r.mean(0) / base.mean(0)
        cells = "  ".join(
            f"{m:.4f}±{s:.4f} ({q:.2f})" for m, s, q in zip(r.mean(0), se, ratio, strict=True)
        )
        print(f"{name:30s} {cells}")
    print(
        f"the sample's best on each task (no list of candidates gets lower): "
        f"{floor.mean():.4f}±{floor.std() / np.sqrt(len(floor)):.4f}"
    )
    print(f"{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
