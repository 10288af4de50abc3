"""``hporl.sampler.PolicySampler``: a trained policy proposes the trials of an optuna study."""

from __future__ import annotations

import json
import warnings

import optuna
import pytest

import hporl
from hporl import SyntheticBackend
from hporl.backends import SyntheticTask
from hporl.sampler import PolicySampler


def test_the_package_exports_this_sampler():
    assert hporl.PolicySampler is PolicySampler


@pytest.mark.parametrize(
    "pruner",
    [
        optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1),
        # Hyperband shows a sampler only the trials of the asked trial's bracket: the policy's
        # history is still the whole study's (it raised IndexError, reading by trial number).
        optuna.pruners.HyperbandPruner(min_resource=1, max_resource=27),
    ],
    ids=["median", "hyperband"],
)
def test_policy_sampler_in_an_optuna_study_with_a_pruner(trained, pruner):
    task = SyntheticTask("t", [0.2, 0.4, 0.6, 0.8])
    backend = SyntheticBackend(trained.space)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        direction="maximize",
        sampler=PolicySampler(trained, task=task, seed=0),
        pruner=pruner,
        study_name="hyperband brackets",
    )

    def objective(trial):
        config = trained.space.suggest(trial)

        def report(epoch, value):
            trial.report(value, epoch)
            return trial.should_prune()

        r = backend.evaluate(task, config, epochs=27, on_epoch=report)
        if r.stopped_early:
            raise optuna.TrialPruned()
        if not r.ok:
            raise RuntimeError(r.reason)
        return r.best_metric

    study.optimize(objective, n_trials=12, catch=(RuntimeError,))
    assert len(study.trials) == 12
    configs = [json.dumps(t.params, sort_keys=True) for t in study.trials]
    assert len(set(configs)) == 12  # never the same configuration twice
    states = {t.state for t in study.trials}
    assert optuna.trial.TrialState.COMPLETE in states
    sampler = study.sampler
    history = sampler.history(study)
    assert len(history) == 12


def test_policy_sampler_history_leaves_out_retried_and_stale_failures(trained):
    """A FAIL trial that optuna retried is represented by its retry; a stale one by nothing."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = trained.space
    study = optuna.create_study(direction="maximize")
    dists = space.to_optuna()
    configs = [
        {"optimizer": "adam", "lr": 1e-3},
        {"optimizer": "sgd", "lr": 0.1, "momentum": 0.9},
        {"optimizer": "rmsprop", "lr": 1e-2, "momentum": 0.5},
        {"optimizer": "adam", "lr": 0.3},
    ]

    def add(config, state, value=None, **kwargs):
        params = space.optuna_params(config)
        study.add_trial(
            optuna.trial.create_trial(
                state=state,
                value=value,
                params=params,
                distributions={k: dists[k] for k in params},
                **kwargs,
            )
        )

    FAIL, COMPLETE = optuna.trial.TrialState.FAIL, optuna.trial.TrialState.COMPLETE
    add(configs[0], COMPLETE, 0.8)  # 0
    add(configs[1], FAIL)  # 1: its process died; retried by trial 4
    add(configs[2], FAIL, user_attrs={"hporl_stale": True})  # 2: stale, not retried
    add(configs[3], FAIL)  # 3: a genuine failure, kept
    add(configs[1], COMPLETE, 0.6, system_attrs={"failed_trial": 1, "retry_history": [1]})  # 4
    # 5: a retry still waiting (enqueued) also stands for trial 1
    study.enqueue_trial(space.optuna_params(configs[2]))
    sampler = PolicySampler(trained, task=SyntheticTask("t", [0.5] * 4), seed=0)
    assert sampler.history(study) == [(configs[0], 0.8), (configs[3], None), (configs[1], 0.6)]

    # a retry chain (1 -> 4 retried again as 6, which is waiting): 1 and the failed 4 both go
    study = optuna.create_study(direction="minimize")
    add(configs[0], FAIL)  # 0
    add(configs[0], FAIL, system_attrs={"failed_trial": 0, "retry_history": [0]})  # 1
    add(configs[0], COMPLETE, 0.25, system_attrs={"failed_trial": 0, "retry_history": [0, 1]})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retried = optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number
        assert retried(study.trials[2]) == 0
    assert sampler.history(study) == [(configs[0], -0.25)]


def test_each_finished_trial_is_parsed_once(trained, monkeypatch):
    """The history is read before every proposal; a finished trial's configuration is parsed
    the first time only (trials used to slow down as they piled up)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    task = SyntheticTask("t", [0.2, 0.4, 0.6, 0.8])
    backend = SyntheticBackend(trained.space)
    sampler = PolicySampler(trained, task=task, seed=0)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    parsed = []
    space_class = type(trained.space)
    original = space_class.from_optuna_params

    def counting(self, params):
        parsed.append(json.dumps(params, sort_keys=True))
        return original(self, params)

    monkeypatch.setattr(space_class, "from_optuna_params", counting)

    def objective(trial):
        return backend.evaluate(task, trained.space.suggest(trial)).best_metric

    study.optimize(objective, n_trials=8)
    finished = [json.dumps(t.params, sort_keys=True) for t in study.trials]
    assert sorted(parsed) == sorted(finished[:-1])  # the last one was never read back
    expected = [original(trained.space, t.params) for t in study.trials]
    assert [c for c, _ in sampler.history(study)] == expected


def test_each_trial_is_read_once_however_many_proposals(trained, monkeypatch):
    """Trial cost stays flat as trials pile up: a proposal parses and scores only the trials that
    finished since the last one (a finished trial never changes), not the whole history again;
    the history it hands the policy is the one read from scratch."""
    import hporl.policy
    import hporl.sampler
    from hporl.observation import trial_score

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    task = SyntheticTask("t", [0.2, 0.4, 0.6, 0.8])
    backend = SyntheticBackend(trained.space)
    sampler = PolicySampler(trained, task=task, seed=0)
    parsed, scored = [], []
    real = type(trained.space).from_optuna_params
    monkeypatch.setattr(
        type(trained.space),
        "from_optuna_params",
        lambda space, params: parsed.append(1) or real(space, params),
    )
    for module in (hporl.sampler, hporl.policy):
        monkeypatch.setattr(module, "trial_score", lambda *a: scored.append(1) or trial_score(*a))
    study = optuna.create_study(direction="maximize", sampler=sampler)

    def objective(trial):
        config = trained.space.suggest(trial)
        if trial.number == 3:
            raise RuntimeError("a failed trial counts as failed")
        return backend.evaluate(task, config, epochs=2).best_metric

    n = 40
    study.optimize(objective, n_trials=n, catch=(RuntimeError,))
    # read from scratch at every proposal, it would be n * (n - 1) / 2 = 780 of each
    assert len(scored) <= n and len(parsed) <= 2 * n
    fresh = PolicySampler(trained, task=task, seed=0)
    assert sampler.history(study) == fresh.history(study)
    failed = [t for t in study.trials if t.state == optuna.trial.TrialState.FAIL]
    assert [v for _, v in sampler.history(study)].count(None) == len(failed) >= 1
