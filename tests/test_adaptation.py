"""Adaptation is tested, not assumed: a policy meta-trained on LCBench with the whole-history
encoder and the adaptive warm start (small: 12 tasks, K = 10, a short run), and the default on a
surrogate (``policy: {}``: transfer GP from the first trial), propose differently when the
scores differ, and differently on different held-out tasks."""

from __future__ import annotations

import numpy as np
import pytest

from hporl.bench import BenchConfig, make_sampler
from hporl.bench._runner import _Bench, _policy
from hporl.space import config_key
from tests._helpers import LCBENCH

TRAIN = ["3945", "7593", "34539", "126025", "126026", "126029", "146212", "167104", "167149"]
TRAIN += ["167152", "167161", "167168"]
HELD_OUT = ["168910", "189354", "189862", "189909"]


@pytest.fixture(scope="module")
def lcbench_policy(tmp_path_factory):
    if LCBENCH is None:
        pytest.skip("YAHPO LCBench data not found at ../shared/benchmarks/yahpo/lcbench")
    data = LCBENCH
    out = tmp_path_factory.mktemp("adaptation")
    config = BenchConfig.load(
        {
            "benchmark": "lcbench",
            "data_dir": str(data),
            "train_tasks": TRAIN,
            "test_tasks": HELD_OUT,
            "methods": ["policy"],
            "normalisation_samples": 500,
            "transfer_candidates": 500,
            # the defaults (whole history, 64 bins), the adaptive warm start, a short RL run
            "policy": {
                "budget": 10,
                "agent": {"total_timesteps": 2048, "n_envs": 8},
                "pretrain": {"expert": "adaptive", "candidate_sampling": "snapped"},
            },
        }
    )
    bench = _Bench(config, out)
    policy = _policy(config, bench, TRAIN, out / "run")
    return policy, bench


@pytest.mark.slow
def test_different_scores_on_the_first_trials_change_the_next_proposal(lcbench_policy):
    policy, bench = lcbench_policy
    task = bench.task(HELD_OUT[0])
    configs: list[dict] = []
    for _ in range(3):
        configs.append(policy.suggest(task, [(c, 0.5) for c in configs]))
    rising = policy.suggest(task, list(zip(configs, [0.6, 0.75, 0.9], strict=True)))
    falling = policy.suggest(task, list(zip(configs, [0.9, 0.75, 0.6], strict=True)))
    assert rising != falling


@pytest.mark.slow
def test_first_proposals_differ_across_held_out_tasks(lcbench_policy):
    policy, bench = lcbench_policy
    lists = set()
    for name in HELD_OUT:
        task = bench.task(name)
        history: list = []
        for _ in range(5):
            config = policy.suggest(task, history)
            history.append((config, bench.evaluator.evaluate(task, config)))
        lists.add(tuple(config_key(c) for c, _ in history))
    assert len(lists) >= 2  # not one list replayed on every task
    # and the whole history is read: the observation has a slot for every trial of the budget
    assert policy.layout.history == policy.budget == 10
    assert policy.layout.n_bins == 64
    assert np.all(
        [
            len(b) >= 64
            for b, p in zip(policy.layout.bins, policy.layout.params, strict=True)
            if p.kind == "float"
        ]
    )


# -- the default on a surrogate: transfer GP from the first trial (no policy meta-trained) -----
@pytest.fixture(scope="module")
def lcbench_transfer_gp(tmp_path_factory):
    if LCBENCH is None:
        pytest.skip("YAHPO LCBench data not found at ../shared/benchmarks/yahpo/lcbench")
    config = BenchConfig.load(
        {
            "benchmark": "lcbench",
            "data_dir": str(LCBENCH),
            "train_tasks": TRAIN,
            "test_tasks": HELD_OUT,
            "methods": ["policy"],
            "normalisation_samples": 500,
            "transfer_candidates": 500,
            "policy": {},
        }
    )
    assert config.transfer_only("policy")  # what `policy: {}` runs here
    bench = _Bench(config, tmp_path_factory.mktemp("adaptation_tgp"))
    transfer = bench.transfer_candidates(TRAIN)

    def sampler(seed: int = 0):  # as the bench's runner makes it for a transfer-only method
        return make_sampler(
            "transfer_gp", space=bench.space, seed=seed, n_trials=30, transfer=transfer
        )

    return bench, sampler


@pytest.mark.slow
def test_the_default_reads_the_first_scores_for_its_next_proposals(lcbench_transfer_gp):
    _, make = lcbench_transfer_gp
    sampler = make()
    first = sampler.next_config([])
    # the second proposal already depends on the first score (the weighted hedge)
    seconds = {config_key(sampler.next_config([(first, y)])) for y in (0.6, 0.75, 0.9)}
    assert len(seconds) >= 2
    configs = [first, sampler.next_config([(first, 0.75)])]
    configs.append(sampler.next_config(list(zip(configs, [0.75, 0.8], strict=True))))
    rising = sampler.next_config(list(zip(configs, [0.6, 0.75, 0.9], strict=True)))
    falling = sampler.next_config(list(zip(configs, [0.9, 0.75, 0.6], strict=True)))
    assert config_key(rising) != config_key(falling)


@pytest.mark.slow
def test_the_defaults_first_proposals_differ_across_held_out_tasks(lcbench_transfer_gp):
    bench, make = lcbench_transfer_gp
    lists = set()
    for name in HELD_OUT:
        task, sampler = bench.task(name), make()
        history: list = []
        for _ in range(5):
            config = sampler.next_config(history)
            history.append((config, float(bench.scores(task, [config])[0])))
        lists.add(tuple(config_key(c) for c, _ in history))
    assert len(lists) == len(HELD_OUT)  # every task its own list, from the same first trial
    assert len({keys[0] for keys in lists}) == 1
