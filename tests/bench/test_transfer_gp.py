"""Transfer GP (the bench's ``transfer_gp`` method and ``then: transfer_gp``): a Gaussian process
whose prior is the meta-train tasks' scores, over their candidates."""

import numpy as np
import optuna
import pytest

from hporl.bench import BenchConfig
from hporl.bench._samplers import TransferCandidates, TransferGPSampler
from hporl.exceptions import ConfigError
from hporl.space import config_key

N = 300


def _families(space, seed=0):
    """Candidates and two families of tasks: one best at lr 1e-3, the other at lr 1e-1."""
    rng = np.random.default_rng(seed)
    configs = [space.sample(rng) for _ in range(N)]
    lr = np.log10([c["lr"] for c in configs])

    def family(best: float, offset: float) -> np.ndarray:
        return 0.9 + offset - 0.05 * (lr - best) ** 2

    train = [family(-3, o) for o in (0.0, -0.1, 0.02, -0.05)]
    train += [family(-1, o) for o in (0.01, -0.08, 0.0, -0.2)]
    values = np.array(train) + rng.normal(0, 0.002, (len(train), N))
    regret = (values.max(1, keepdims=True) - values) / np.ptp(values, 1, keepdims=True)
    return configs, TransferCandidates(configs, regret, values), family


def _run(sampler, space, score, n, *, fail=(), direction="maximize"):
    study = optuna.create_study(direction=direction, sampler=sampler)
    picked = []
    for i in range(n):
        trial = study.ask()
        config = space.suggest(trial)
        picked.append(config)
        if i in fail:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
        else:
            y = score(config)
            study.tell(trial, y if direction == "maximize" else -y)
    return picked


@pytest.mark.parametrize("best", [-3, -1])
def test_it_starts_with_the_portfolio_then_finds_the_tasks_own_best(best, small_space):
    configs, transfer, family = _families(small_space)
    test = family(best, -0.3)  # another level than any meta-train task: raw scores, not ranks
    truth = dict(zip(map(config_key, configs), test, strict=True))
    picked = _run(
        TransferGPSampler(small_space, transfer, seed=0),
        small_space,
        lambda c: truth[config_key(c)],
        6,
    )
    assert picked[:2] == transfer.portfolio(2)  # the hedge: here the same under any weighting
    found = max(truth[config_key(c)] for c in picked)
    assert found >= test.max() - 0.002  # lr within 0.2 decades of the task's best in 6 trials
    portfolio = [configs[i] for i in np.argsort(transfer.regret.mean(0))[:6]]
    assert found > max(truth[config_key(c)] for c in portfolio) + 0.01  # best-average misses
    assert len({config_key(c) for c in picked}) == 6  # never the same candidate twice


def _spreads(space, seed=0):
    """Candidates, the meta-train tasks of two families whose scores spread 30x apart (wide:
    best at lr 1e-3; narrow: best at lr 1e-1), and a narrow task at a level none of them has."""
    rng = np.random.default_rng(seed)
    configs = [space.sample(rng) for _ in range(N)]
    lr = np.log10([c["lr"] for c in configs])
    wide = [0.6 + o - 0.05 * (lr + 3) ** 2 for o in (0.0, -0.1, 0.05, -0.2, 0.1)]
    narrow = [0.9 + o - 0.0015 * (lr + 1) ** 2 for o in (0.0, 0.03, -0.02)]
    values = np.array(wide + narrow) + rng.normal(0, 0.0002, (8, N))
    regret = (values.max(1, keepdims=True) - values) / np.ptp(values, 1, keepdims=True)
    test = 0.97 - 0.0015 * (lr + 1) ** 2
    return configs, TransferCandidates(configs, regret, values), test


def test_a_task_whose_scores_spread_little_is_read_as_well_as_one_that_spreads_much(small_space):
    """Scores are standardised per task: the narrow family, outvoted by its spread in raw
    units, still tells where a narrow task's best lies."""
    configs, transfer, test = _spreads(small_space)
    truth = dict(zip(map(config_key, configs), test, strict=True))
    picked = _run(
        TransferGPSampler(small_space, transfer, seed=0),
        small_space,
        lambda c: truth[config_key(c)],
        6,
    )
    found = max(truth[config_key(c)] for c in picked)
    assert (test.max() - found) / np.ptp(test) < 0.02


def test_the_benchmarks_units_do_not_change_the_proposals(small_space):
    """Percent instead of fractions, on every task: the same search."""
    configs, transfer, family = _families(small_space)
    truth = dict(zip(map(config_key, configs), family(-1, 0.0), strict=True))
    percent = TransferCandidates(configs, transfer.regret, 100 * transfer.values)
    runs = [
        _run(
            TransferGPSampler(small_space, t, seed=0),
            small_space,
            lambda c, k=k: k * truth[config_key(c)],
            6,
        )
        for t, k in ((transfer, 1), (percent, 100))
    ]
    assert runs[0] == runs[1]


def test_the_two_families_get_different_proposals(small_space):
    configs, transfer, family = _families(small_space)
    runs = []
    for best in (-3, -1):
        truth = dict(zip(map(config_key, configs), family(best, 0.0), strict=True))
        sampler = TransferGPSampler(small_space, transfer, seed=0)
        runs.append(_run(sampler, small_space, lambda c, t=truth: t[config_key(c)], 4))
    assert runs[0][0] == runs[1][0] and runs[0][1:] != runs[1][1:]


def test_failures_are_not_proposed_again_and_minimise_is_read(small_space):
    configs, transfer, family = _families(small_space)
    truth = dict(zip(map(config_key, configs), family(-1, 0.0), strict=True))
    picked = _run(
        TransferGPSampler(small_space, transfer, seed=0),
        small_space,
        lambda c: truth[config_key(c)],
        6,
        fail={0, 2},
        direction="minimize",  # the study minimises -score: the same search
    )
    assert len({config_key(c) for c in picked}) == 6
    maximised = _run(
        TransferGPSampler(small_space, transfer, seed=0),
        small_space,
        lambda c: truth[config_key(c)],
        6,
        fail={0, 2},
    )
    assert picked == maximised


def test_a_failed_first_trial_covers_nothing_in_the_hedge(small_space):
    """The portfolio stage complements what the tried configurations cover: a failure covers
    nothing, so the second trial is the next best-average candidate, not the failure's
    complement."""
    configs, transfer, family = _families(small_space)
    truth = dict(zip(map(config_key, configs), family(-1, 0.0), strict=True))
    score = lambda c: truth[config_key(c)]  # noqa: E731
    failed = _run(TransferGPSampler(small_space, transfer, seed=0), small_space, score, 2, fail={0})
    assert failed == transfer.best_average(2)
    ran = _run(TransferGPSampler(small_space, transfer, seed=0), small_space, score, 2)
    assert ran == transfer.portfolio(2) and ran[1] != failed[1]


def test_with_every_candidate_tried_it_samples_at_random(small_space):
    configs, transfer, family = _families(small_space)
    few = TransferCandidates(configs[:4], transfer.regret[:, :4], transfer.values[:, :4])
    truth = dict(zip(map(config_key, configs), family(-1, 0.0), strict=True))
    sampler = TransferGPSampler(small_space, few, seed=0)
    picked = _run(sampler, small_space, lambda c: truth.get(config_key(c), 0.5), 7)
    keys = [config_key(c) for c in picked]
    assert sorted(keys[:4]) == sorted(map(config_key, configs[:4]))  # the candidates first
    assert len(set(keys)) == 7  # then random configurations, not a candidate again


def test_a_trial_under_way_is_not_proposed_again(small_space):
    _, transfer, _ = _families(small_space)
    study = optuna.create_study(
        direction="maximize", sampler=TransferGPSampler(small_space, transfer, seed=0)
    )
    first, second = study.ask(), study.ask()  # both running, neither told
    assert small_space.suggest(first) != small_space.suggest(second)


def test_a_configuration_outside_the_candidates_counts_through_meta(small_space):
    configs, transfer, _ = _families(small_space)
    asked = []

    def meta(more):
        asked.extend(more)
        lr = np.log10([c["lr"] for c in more])
        return np.array([0.9 - 0.05 * (lr - (-3 if t < 4 else -1)) ** 2 for t in range(8)])

    outside = {"optimizer": "adam", "lr": 0.1}
    low = {"optimizer": "adam", "lr": 1e-4}
    with_meta = TransferCandidates(configs, transfer.regret, transfer.values, meta)
    keys = set(map(config_key, configs))
    for candidates in (with_meta, transfer):  # without meta: its nearest candidate's scores
        sampler = TransferGPSampler(small_space, candidates, seed=0)
        config = sampler.next_config([(outside, 0.95), (low, 0.5)])
        assert config != outside
        assert np.log10(config["lr"]) > -2  # near lr 0.1, where the good score was
        # with meta, configurations around the best so far compete with the candidates
        assert (config_key(config) in keys) == (candidates is transfer)
    assert outside in asked and len(asked) > 1
    assert all(small_space.validate(c) == c for c in asked)  # complete, in range


def test_it_needs_the_candidates_scores(small_space):
    configs, transfer, _ = _families(small_space)
    with pytest.raises(ValueError, match="scores on the meta-train tasks"):
        TransferGPSampler(small_space, TransferCandidates(configs, transfer.regret))


def test_then_transfer_gp_is_checked():
    base = {"benchmark": "small", "train_tasks": ["iris"], "test_tasks": ["wine"]}
    BenchConfig.load({**base, "methods": ["policy"], "policy": {"then": "transfer_gp"}})
    epochs = {**base, "methods": ["policy"], "budget_unit": "epochs"}
    BenchConfig.load({**epochs, "policy": {"then": "transfer_gp", "after": 0}})
    with pytest.raises(ConfigError, match="epochs transfer_gp proposes every trial"):
        BenchConfig.load({**epochs, "policy": {"then": "transfer_gp"}})
    with pytest.raises(ConfigError, match="random, tpe, gp, cmaes, transfer_gp"):
        BenchConfig.load({**base, "methods": ["policy"], "policy": {"then": "transfer"}})
    # after: 0 never asks the policy: naming one, or probing, contradicts it
    never = {"then": "transfer_gp", "after": 0}
    with pytest.raises(ConfigError, match="would never propose"):
        BenchConfig.load({**base, "methods": ["policy"], "policy_path": "p", "policy": never})
    with pytest.raises(ConfigError, match=r"policies\.mine: after: 0 .* never propose"):
        mine = {**never, "agent": {"algorithm": "ppo"}}
        BenchConfig.load({**base, "methods": ["mine"], "policies": {"mine": mine}})
    with pytest.raises(ConfigError, match=r"policy\.probe: transfer_gp trains every trial"):
        BenchConfig.load({**epochs, "policy": {**never, "probe": {"fidelity": 0.5}}})
    BenchConfig.load({**epochs, "policy": {**never, "probe": False, "pruner": "median"}})


@pytest.mark.parametrize("after", [0, 1])
def test_a_policy_hands_over_to_transfer_gp_for_the_rest(after, tiny_policy):
    from hporl.bench._samplers import make_sampler
    from hporl.sampler import HandoverSampler, PolicySampler

    policy, _ = tiny_policy
    rng = np.random.default_rng(0)
    configs = [policy.space.sample(rng) for _ in range(20)]
    values = rng.random((3, 20))
    transfer = TransferCandidates(configs, 1 - values, values)
    sampler = make_sampler(
        "handed",
        space=policy.space,
        seed=0,
        n_trials=30,
        transfer=transfer,
        policy=policy,
        then="transfer_gp",
        after=after,
    )
    assert isinstance(sampler, HandoverSampler)
    if after:
        assert isinstance(sampler.sampler_at(0), PolicySampler)
    assert all(isinstance(sampler.sampler_at(p), TransferGPSampler) for p in (after, 10, 29))


def test_a_policy_on_a_surrogate_hands_over_to_transfer_gp_by_default():
    surrogate = {"benchmark": "yahpo/rbv2_rpart", "train_tasks": ["3"], "test_tasks": ["6"]}
    assert BenchConfig.load(surrogate).handover_of("policy") == ("transfer_gp", 0)
    assert BenchConfig.load(surrogate).transfer_only("policy")
    assert BenchConfig.load({**surrogate, "policy": {"after": 3}}).handover_of("policy") == (
        "transfer_gp",
        3,
    )
    own = {**surrogate, "methods": ["mine"], "policies": {"mine": {"then": "tpe"}}}
    assert BenchConfig.load(own).handover_of("mine") == ("tpe", None)
    alone = BenchConfig.load({**surrogate, "policy": {"then": None}})
    assert alone.handover_of("policy") == (None, None)
    # a policy of its own (saved, or meta-trained with settings) proposes its first trial
    named = BenchConfig.load({**surrogate, "policy_path": "p"})
    assert named.handover_of("policy") == ("transfer_gp", 1)
    assert not named.transfer_only("policy")
    recipe = {**surrogate, "methods": ["old"], "policies": {"old": {"n_bins": 8}}}
    assert BenchConfig.load(recipe).handover_of("old") == ("transfer_gp", 1)
    # epoch budgets: transfer GP trains full trials from the first; a policy of its own (a
    # budget-aware one too) is probed, or chooses, then hands over to optuna's GP
    epochs = {**surrogate, "budget_unit": "epochs", "methods": ["policy"]}
    assert BenchConfig.load(epochs).handover_of("policy") == ("transfer_gp", 0)
    assert BenchConfig.load({**epochs, "policy_path": "p"}).handover_of("policy") == ("gp", None)
    aware = BenchConfig.load({**epochs, "policy": {"budget_unit": "epochs"}})
    assert aware.handover_of("policy") == ("gp", None)
    # no meta-train tasks to take scores from, real training: optuna's GP
    loaded = {"benchmark": "yahpo/rbv2_rpart", "test_tasks": ["6"], "methods": ["policy"]}
    assert BenchConfig.load({**loaded, "policy_path": "p"}).handover_of("policy") == ("gp", None)
    real = {"benchmark": "small", "train_tasks": ["iris"], "test_tasks": ["wine"]}
    assert BenchConfig.load(real).handover_of("policy") == ("gp", None)


@pytest.mark.parametrize("k", range(4))
def test_after_a_few_scores_it_plays_the_best_of_the_task_they_match(k, small_space):
    """The mixture stage (trials 3 to 5): three scores, at another level than any task's, are
    enough to tell which meta-train task this is, and to play near that task's own best."""
    rng = np.random.default_rng(0)
    configs = [small_space.sample(rng) for _ in range(N)]
    lr = np.log10([c["lr"] for c in configs])
    levels, bests = (0.8, 0.6, 0.9, 0.7), (-4, -3, -2, -1)
    values = np.array([o - 0.05 * (lr - b) ** 2 for o, b in zip(levels, bests, strict=True)])
    values += rng.normal(0, 0.001, values.shape)
    transfer = TransferCandidates(configs, 1 - values, values)
    test = values[k] + 0.05
    tried = rng.choice(N, 3, replace=False)
    truth = dict(zip(map(config_key, configs), test, strict=True))
    config = TransferGPSampler(small_space, transfer, seed=0).next_config(
        [(configs[i], float(test[i])) for i in tried]
    )
    assert truth[config_key(config)] > test[tried].max()
    assert test.max() - truth[config_key(config)] < 0.05 * np.ptp(test)


def test_runs_share_the_candidates_encoding(small_space):
    """Each run (a task and a seed) gets its own sampler; the 10,000 candidates are encoded
    once per fold, not once per run."""
    _, transfer, _ = _families(small_space)
    first, second = (TransferGPSampler(small_space, transfer, seed=s) for s in (0, 1))
    assert first._x is second._x and first._index is second._index
    assert np.allclose(first._x[3], small_space.encode(transfer.configs[3]))


def test_with_meta_the_first_proposal_refines_the_best_candidate(small_space):
    """Every meta-train task is best at the bound lr = 1 with adam; a sample of 30 candidates
    has none there. With ``meta`` the first proposal is searched for around the best-average
    candidates, and beats them on the meta-train tasks; without refinement it is the best-average
    candidate itself."""
    rng = np.random.default_rng(3)
    configs = [small_space.sample(rng) for _ in range(30)]
    offsets = np.array([0.0, -0.1, 0.05, -0.2])

    def meta(more):
        lr = np.log10([c["lr"] for c in more])
        adam = np.array([c["optimizer"] == "adam" for c in more])
        return 0.9 + offsets[:, None] - 0.05 * lr**2 + 0.05 * adam

    values = meta(configs)
    transfer = TransferCandidates(configs, values.max(1, keepdims=True) - values, values, meta)
    plain = TransferGPSampler(small_space, transfer, seed=0, rounds=0).next_config([])
    assert plain == transfer.best_average(1)[0]
    refined = TransferGPSampler(small_space, transfer, seed=0).next_config([])
    assert config_key(refined) not in {config_key(c) for c in configs}
    assert meta([refined]).mean() > values.max(1).mean()  # above every task's best candidate
    assert refined["optimizer"] == "adam" and np.log10(refined["lr"]) > -0.1


@pytest.mark.parametrize("direction", ["maximize", "minimize"])
def test_a_pruned_trial_counts_as_the_best_curve_would_have_ended_it(direction, small_space):
    """A pruned trial is read as its last reported value plus what the best complete trial
    gained from that epoch on; with no complete trial, as nothing (like a trial under way)."""
    configs, transfer, _ = _families(small_space)
    sign = 1.0 if direction == "maximize" else -1.0
    sampler = TransferGPSampler(small_space, transfer, seed=0)
    seen = []
    sampler.next_config = lambda trials: seen.append(list(trials)) or None  # type: ignore
    study = optuna.create_study(direction=direction, sampler=sampler)
    key = lambda i: config_key(configs[i])  # noqa: E731

    def add(i, curve, state=optuna.trial.TrialState.COMPLETE):
        params = small_space.optuna_params(configs[i])
        study.add_trial(
            optuna.trial.create_trial(
                params=params,
                distributions={n: small_space.to_optuna()[n] for n in params},
                intermediate_values={e + 1: sign * v for e, v in enumerate(curve)},
                value=sign * curve[-1] if state == optuna.trial.TrialState.COMPLETE else None,
                state=state,
            )
        )

    def observed():
        small_space.suggest(study.ask())  # the sampler reads the history at the first suggest
        return {config_key(c): y for c, y in seen[-1]}

    add(1, [0.4, 0.45], optuna.trial.TrialState.PRUNED)
    assert observed()[key(1)] is None
    add(0, [0.5, 0.6, 0.7, 0.8])
    add(2, [0.3, 0.5, 0.9, 0.95])  # ends best
    add(3, [0.4], optuna.trial.TrialState.PRUNED)
    now = observed()
    assert now[key(0)] == pytest.approx(0.8)
    assert now[key(1)] == pytest.approx(0.45 + (0.95 - 0.5))
    assert now[key(3)] == pytest.approx(0.4 + (0.95 - 0.3))


def test_the_second_trial_hedges_against_the_tasks_the_first_score_leaves(small_space):
    """Trial 2 is the portfolio's hedge; with ``hedge="posterior"`` each meta-train task counts
    as likely as the first score makes it (the mixture's posterior). Three families: the first
    trial suits the widest; a high first score points at the family of higher level, a low one
    at the other, and the hedge goes to that family's best. Weighted alike, it does not move."""
    rng = np.random.default_rng(0)
    configs = [small_space.sample(rng) for _ in range(N)]
    lr = np.log10([c["lr"] for c in configs])
    rows = [0.9 - 0.02 * (lr + 3) ** 2] * 4  # the first trial suits these
    rows += [0.6 - 0.05 * (lr + 1) ** 2] * 2 + [0.7 - 0.05 * (lr + 5) ** 2] * 2
    values = np.array(rows) + rng.normal(0, 0.002, (8, N))
    transfer = TransferCandidates(configs, values.max(1, keepdims=True) - values, values)
    first = TransferGPSampler(small_space, transfer, seed=0).next_config([])

    def second(hedge: str, score: float) -> float:
        sampler = TransferGPSampler(small_space, transfer, seed=0, hedge=hedge)
        return float(np.log10(sampler.next_config([(first, score)])["lr"]))

    assert second("posterior", 0.2) > -1.5 and second("posterior", 0.9) < -4.5
    assert second("uniform", 0.2) == second("uniform", 0.9) > -1.5


def test_on_a_plateau_it_looks_further_afield(small_space):
    """A test task flat (0.85) around the meta-train tasks' best (lr 1e-3) and better (0.95)
    below lr 10^-4.3, which no meta-train task is: plain expected improvement keeps proposing
    near-copies of its best (rbv2_rpart's task 40994 did so for 25 trials). With the rule, once
    ``patience`` trials in a row scored the best without raising it, expected improvement is
    taken over the best plus ``xi`` times the task's scale, and the proposals spread out; a
    trial that raises the best ends that."""
    rng = np.random.default_rng(0)
    configs = [small_space.sample(rng) for _ in range(N)]
    lr = np.log10([c["lr"] for c in configs])
    families = ((0.0, -3), (-0.1, -3), (0.02, -3), (-0.05, -1), (0.03, -1))
    values = np.array([0.9 + o - 0.05 * (lr - b) ** 2 for o, b in families])
    values += rng.normal(0, 0.002, values.shape)
    transfer = TransferCandidates(configs, values.max(1, keepdims=True) - values, values)

    def truth(config):
        x = float(np.log10(config["lr"]))
        return 0.95 if x < -4.3 else round(min(0.85, 0.85 - 0.1 * (abs(x + 3) - 0.5)), 3)

    def run(patience, n=25):
        trials = []
        for _ in range(n):
            sampler = TransferGPSampler(small_space, transfer, seed=0, patience=patience)
            config = sampler.next_config(trials)
            trials.append((config, truth(config)))
        return trials

    plain, ruled = run(0), run(5)
    assert plain[:12] == ruled[:12]  # the same until the plateau is long enough

    def spread(trials):
        return max(abs(np.log10(c["lr"]) + 3) for c, _ in trials[12:])

    assert spread(plain) < 0.5 < 0.6 < spread(ruled)
    raised = [*plain, (configs[int(np.argmin(lr))], 0.95)]

    def propose(trials, patience):
        return TransferGPSampler(small_space, transfer, seed=0, patience=patience).next_config(
            trials
        )

    assert propose(plain, 5) != propose(plain, 0)
    assert propose(raised, 5) == propose(raised, 0)


def _with_epochs(space):
    """``_families`` with curves: after ``e`` of 10 epochs every configuration scores
    ``(0.5 + 0.05 e)`` times its final score, on every task; ``meta`` records the epochs it is
    asked for."""
    configs, transfer, family = _families(space)
    tasks = [(-3, o) for o in (0.0, -0.1, 0.02, -0.05)] + [
        (-1, o) for o in (0.01, -0.08, 0.0, -0.2)
    ]
    asked = []

    def meta(more, epoch=None):
        asked.append(epoch)
        lr = np.log10([c["lr"] for c in more])
        factor = 1.0 if epoch is None else 0.5 + 0.05 * epoch
        return np.array([factor * (0.9 + o - 0.05 * (lr - b) ** 2) for b, o in tasks])

    transfer = TransferCandidates(configs, transfer.regret, transfer.values, meta)
    return configs, transfer, family, asked


def _three_complete_then_next(space):
    """Transfer GP over ``_with_epochs``' candidates after 3 complete trials on the first family
    task: the sampler, the trials, the best score, the next proposal and the epochs ``meta`` was
    asked for."""
    configs, transfer, family, asked = _with_epochs(space)
    truth = dict(zip(map(config_key, configs), family(-3, 0.0), strict=True))
    sampler = TransferGPSampler(space, transfer, seed=0)
    trials = []
    for _ in range(3):
        config = sampler.next_config(trials)
        trials.append((config, truth[config_key(config)]))
    return sampler, trials, max(y for _, y in trials), sampler.next_config(trials), asked


def test_a_trial_read_after_fewer_epochs_tells_how_likely_it_is_to_beat_the_best(small_space):
    """A trial stopped after 5 of 10 epochs is read against the meta-train tasks' scores after 5
    epochs: a score there that, on those tasks, leads to more than the best complete trial makes
    finishing it likely; one that leads to less makes it unlikely. Such a trial is never the best
    found: the improvement is over the complete trials."""
    sampler, trials, best, nxt, asked = _three_complete_then_next(small_space)
    chance = [
        sampler.improvement_chance([*trials, (nxt, 0.75 * (best + d), 5)], nxt)
        for d in (-0.3, -0.1, -0.02, 0.02, 0.05)
    ]
    assert chance == sorted(chance) and chance[0] < 0.1 and chance[-1] > 0.7
    assert 5 in asked  # the tasks' scores after 5 epochs, not their final ones
    # nothing complete yet: whatever it read, a trial may be the best
    assert sampler.improvement_chance([(nxt, 0.1, 5)], nxt) == 1.0
    # a partial trial with a high score is not the incumbent: the next proposal still
    # improves on the best complete trial, and a trial it read is never proposed again
    after = sampler.next_config([*trials, (nxt, 0.99, 5)])
    assert after is not None and config_key(after) != config_key(nxt)


def test_freeze_thaw_resumes_a_stopped_trial_when_it_is_the_better_use_of_the_epochs(small_space):
    """With ``resume``, a trial stopped at a rung is trained on instead of the next proposal when
    its expected improvement per epoch left beats the proposal's per full training: one whose
    early score points above the best complete trial is, one whose early score points far below
    it is not. Without ``resume`` nothing is ever resumed."""
    from hporl.bench import Rungs

    sampler, trials, best, stopped, _ = _three_complete_then_next(small_space)
    configs = sampler.transfer.configs
    thaw = Rungs(at=(0.5,), resume=True)
    gains = {}
    for d in (-0.3, 0.05):
        history = [*trials, (stopped, 0.75 * (best + d), 5)]
        proposal = sampler.next_config(history)
        gains[d] = sampler.expected_improvements(history, [stopped, proposal])
        assert (gains[d] >= 0).all()
        assert Rungs(at=(0.5,)).resumed(sampler, history, proposal, 10) is None
        assert thaw.resumed(sampler, history, proposal, 10) == (3 if d > 0 else None)
    assert gains[0.05][0] > 10 * gains[-0.3][0]
    # nothing stopped, or nothing complete to improve on: nothing to resume
    assert thaw.resumed(sampler, trials, stopped, 10) is None
    assert thaw.resumed(sampler, [(stopped, 0.5, 5)], configs[0], 10) is None
    with pytest.raises(ValueError, match="at least one observed trial"):
        sampler.expected_improvements([], [stopped])


def test_per_cost_the_acquisition_favours_a_choice_likely_to_be_stopped(small_space):
    """With ``cost`` (``rungs: {per_cost: true}``), expected improvement is divided by the
    expected cost: a choice sure to beat the best trains to the end (cost 1), one sure not to
    stops at the first rung; so a choice's acquisition rises by at most 1 / first rung, the
    more the less likely it is to beat the best. Before ``after`` trials, and without
    ``per_cost``, there is no cost."""
    from hporl.bench import Rungs

    sampler, trials, _, _, _ = _three_complete_then_next(small_space)
    rungs = Rungs(at=(0.5, 0.75), per_cost=True)
    assert Rungs().cost(trials) is None and rungs.cost(trials[:1]) is None
    cost = rungs.cost(trials)
    assert cost is not None
    assert np.allclose(cost(np.array([0.0, 0.5, 1.0])), [0.5, 0.75, 1.0])
    seen = [(c, y, None) for c, y in trials]
    z, x = sampler._z, sampler._x
    for stage in (
        lambda c: sampler._expected_improvement(seen, z, x, cost=c),
        lambda c: sampler._mixture_improvement(seen, z, c),
    ):
        plain, per_cost = stage(None), stage(cost)
        ratio = per_cost / np.maximum(plain, 1e-300)
        some = plain > 1e-12
        assert np.all((ratio[some] >= 1 - 1e-9) & (ratio[some] <= 2 + 1e-9))
        assert ratio[some].max() - ratio[some].min() > 0.1  # it does rank differently
    # the chance it divides by is improvement_chance's
    one = sampler.transfer.configs[:1]
    chance = sampler.improvement_chance(trials, one[0])
    z1, x1 = sampler._final_choices(one)
    ei = sampler._expected_improvement(seen, z1, x1)
    assert np.allclose(sampler._expected_improvement(seen, z1, x1, cost=cost), ei / cost(chance))
    assert sampler.next_config(trials, cost) is not None


def test_per_trial_chances_stop_each_trial_below_its_own(small_space):
    """``chance: [P, ...]``: the trial after ``after`` trials stops below the first, the next
    below the second, every later one below the last; so a trial whose chance lies between two
    thresholds stops where the higher one is its own, and goes on where the lower one is."""
    from hporl.bench import Rungs

    rungs = Rungs.from_setting({"chance": [0.2, 0.4, 0.6]})
    assert rungs.chance == (0.2, 0.4, 0.6) and Rungs().threshold(7) == 0.3
    assert [rungs.threshold(n) for n in range(7)] == [0.2, 0.2, 0.2, 0.4, 0.6, 0.6, 0.6]
    sampler, trials, best, nxt, _ = _three_complete_then_next(small_space)
    # the score after 5 of 10 epochs whose chance is nearest 0.4
    chances = {
        y: sampler.improvement_chance([*trials, (nxt, y, 5)], nxt)
        for y in 0.75 * (best + np.linspace(-0.3, 0.05, 36))
    }
    y = min(chances, key=lambda y: abs(chances[y] - 0.4))
    assert 0.25 < chances[y] < 0.55
    for after, stops in ((3, None), (2, 5)):  # the 4th trial: its first threshold, its second
        rungs = Rungs(at=(0.5,), chance=(0.2, 0.6), after=after)
        assert rungs.stop_at(sampler, trials, nxt, lambda e, y=y: y, 10) == stops


def test_a_trial_stops_only_when_what_it_saves_fits_another_complete_trial(small_space):
    """``fits`` (the default): stopping at a rung of ``e`` epochs with ``left`` epochs left in
    the budget saves epochs only if ``left - e`` still fits a full training; otherwise the
    trial trains on (it is not even scored at the rung). ``fits=False``, or no end
    (``left=None``), stops it as before."""
    from hporl.bench import Rungs

    sampler, trials, best, nxt, _ = _three_complete_then_next(small_space)
    low = 0.75 * (best - 0.3)  # after 5 of 10 epochs: far below what the best had
    asked = []

    def score_at(e):
        asked.append(e)
        return low

    rungs = Rungs(at=(0.5,), chance=0.3, after=2)
    assert rungs.fits and Rungs().fits
    assert rungs.stop_at(sampler, trials, nxt, score_at, 10) == 5
    assert rungs.stop_at(sampler, trials, nxt, score_at, 10, left=15) == 5  # 10 left after
    asked.clear()
    assert rungs.stop_at(sampler, trials, nxt, score_at, 10, left=14) is None
    assert asked == []
    anyway = Rungs(at=(0.5,), chance=0.3, after=2, fits=False)
    assert anyway.stop_at(sampler, trials, nxt, score_at, 10, left=14) == 5
    assert Rungs.from_setting({"fits": False}) == Rungs(fits=False)


def test_a_trial_read_after_fewer_epochs_needs_the_tasks_scores_at_any_epoch(small_space):
    configs, transfer, _ = _families(small_space)
    sampler = TransferGPSampler(small_space, transfer, seed=0)
    with pytest.raises(ValueError, match=r"transfer.meta"):
        sampler.next_config([(configs[0], 0.8), (configs[1], 0.7), (configs[2], 0.5, 3)])


def test_rungs_settings():
    from hporl.bench import RUNGS, Rungs

    assert Rungs.from_setting(None) is RUNGS and Rungs.from_setting(True) is RUNGS
    assert Rungs.from_setting(False) is None
    rungs = Rungs.from_setting({"at": [0.25, 0.5], "chance": 0.2, "after": 3})
    assert rungs == Rungs(at=(0.25, 0.5), chance=0.2, after=3)
    assert not rungs.resume and Rungs.from_setting({"resume": True}) == Rungs(resume=True)
    assert not rungs.per_cost and Rungs.from_setting({"per_cost": True}).per_cost
    assert rungs.epochs(52) == [13, 26] and RUNGS.epochs(52) == [26, 39]
    assert RUNGS.epochs(1) == [] and Rungs(at=(0.1, 0.2)).epochs(4) == [1]
    for bad, message in [
        ({"at": [0.5, 0.25]}, "increasing fractions"),
        ({"at": [1.0]}, "increasing fractions"),
        ({"at": []}, "increasing fractions"),
        ({"chance": 1.5}, "chance must be in"),
        ({"chance": []}, "chance must be in"),
        ({"chance": [0.3, 1.0]}, "chance must be in"),
        ({"after": -1}, "after must be a whole number"),
        ({"resume": "yes"}, "resume must be true or false"),
        ({"per_cost": 1}, "per_cost must be true or false"),
        ({"fits": "no"}, "fits must be true or false"),
        ({"every": 2}, "rungs must be true, false or a mapping"),
        ("half", "rungs must be true, false or a mapping"),
    ]:
        with pytest.raises(ValueError, match=message):
            Rungs.from_setting(bad)


def test_a_grid_of_rbf_weights_reads_how_far_the_task_lies_from_the_tasks_span(small_space):
    """``rbf=[...]``: the RBF term's weight is weighed by the evidence, beside the scale. A task
    that is one of the meta-train family's puts its weight on the smallest; one with an effect
    that no meta-train task has (here: Adam scores 0.3 more) on the largest. One weight in a
    list is the scalar."""
    configs, transfer, family = _families(small_space)
    base = family(-3, 0.0)
    adam = np.array([c["optimizer"] == "adam" for c in configs])
    picked = np.random.default_rng(1).choice(len(configs), 10, replace=False)
    grid = TransferGPSampler(small_space, transfer, seed=0, rbf=[0.001, 0.04, 1.0])
    weights = {}
    for name, task in (("in the span", base), ("outside it", base + 0.3 * adam)):
        seen = [(configs[i], float(task[i]), None) for i in picked]
        w, *_ = grid._posterior(seen, grid._z, grid._x)
        weights[name] = w.reshape(3, -1).sum(1)
    assert 0 < adam[picked].sum() < len(picked)
    assert weights["in the span"][0] > 0.9 and weights["outside it"][2] > 0.9
    trials = [(configs[i], float(base[i])) for i in picked]
    one, alone = (TransferGPSampler(small_space, transfer, rbf=r) for r in ([0.04], 0.04))
    assert one.next_config(trials) == alone.next_config(trials)
    for bad in ([], -0.1, [0.04, float("nan")]):
        with pytest.raises(ValueError, match="rbf must be a weight"):
            TransferGPSampler(small_space, transfer, rbf=bad)
