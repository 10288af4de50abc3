"""The evaluation layer: one cache, de-duplication, dispatch, one retry, the checked final fit."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from hporl import ConfigError, Evaluator, SearchSpace, SyntheticBackend, TorchBackend, TrialStore
from hporl.backends import SyntheticTask, TrialResult
from hporl.evaluation import final_fit_problem
from hporl.tasks import builtin

SPACE = SearchSpace.builtin("optimizer")


class Counting(SyntheticBackend):
    def __init__(self, space):
        super().__init__(space)
        self.calls = 0

    def evaluate(self, task, config, **kwargs):
        self.calls += 1
        return super().evaluate(task, config, **kwargs)


class DiesOnce(SyntheticBackend):
    """Kills its worker process the first time it evaluates anything (a marker file remembers)."""

    def __init__(self, space, marker):
        super().__init__(space)
        self.marker = str(marker)

    def evaluate(self, task, config, **kwargs):
        if not Path(self.marker).exists():
            Path(self.marker).write_text(str(os.getpid()))
            os._exit(1)
        return super().evaluate(task, config, **kwargs)


def test_memory_cache_and_in_flight_evaluations_are_shared():
    backend = Counting(SPACE)
    task = SyntheticTask.sample(0, 1)[0]
    evaluator = Evaluator(backend)
    config = SPACE.default()
    first = evaluator.submit(task, config)
    again = evaluator.submit(task, config)
    assert first.done() and again.source == "memory" and again.result.cached
    assert again.result.best_metric == first.result.best_metric
    # Another seed or epoch count is another evaluation.
    evaluator.evaluate(task, config, seed=1)
    evaluator.evaluate(task, config, epochs=3)
    assert backend.calls == 3 and evaluator.n_trained == 3 and evaluator.n_memory_hits == 1


def test_the_store_serves_another_evaluator_and_record_false_keeps_nothing(tmp_path):
    task = builtin("iris", epochs=2)
    store_path = tmp_path / "t.db"
    first = Evaluator(TorchBackend(num_threads=1), store=TrialStore(store_path), space=SPACE)
    result = first.evaluate(task, SPACE.default())
    second = Evaluator(Counting(SPACE), store=TrialStore(store_path), space=SPACE)
    hit = second.evaluate(task, SPACE.default())
    assert hit.cached and hit.curve == result.curve and second.backend.calls == 0
    assert second.n_store_hits == 1 and second.n_trained == 0
    # record=False leaves the writing to the caller (tune_model annotates its own trial).
    quiet = Evaluator(TorchBackend(num_threads=1), store=TrialStore(store_path), space=SPACE)
    quiet.evaluate(task, {**SPACE.default(), "lr": 0.01}, record=False)
    assert TrialStore(store_path).lookup(task, {**SPACE.default(), "lr": 0.01}, seed=0) is None


@pytest.mark.slow
def test_a_dead_worker_is_retried_once_on_the_pool(tmp_path):
    tasks = SyntheticTask.sample(0, 2)
    with Evaluator(DiesOnce(SPACE, tmp_path / "died"), n_workers=2) as evaluator:
        evaluator.start(*tasks)
        evaluations = [evaluator.submit(t, SPACE.default()) for t in tasks]
        done, pending = evaluator.wait(evaluations)
    assert not pending and all(e.result.ok for e in done)
    # A broken pool fails every evaluation it held: each of those runs once more.
    retried = [e for e in done if e.retried_after]
    assert 1 <= evaluator.n_retried == len(retried) and evaluator.n_trained == 2
    assert all(e.retried_after.startswith("worker died") for e in retried)


def test_a_surrogate_answers_many_configurations_in_one_call():
    class Batched(Counting):
        batches = 0

        def evaluate_many(self, task, configs, *, epochs=None):
            Batched.batches += 1
            return [SyntheticBackend.evaluate(self, task, c, epochs=epochs) for c in configs]

    import numpy as np

    configs = [SPACE.sample(np.random.default_rng(i)) for i in range(5)]
    task = SyntheticTask.sample(0, 1)[0]
    evaluator = Evaluator(Batched(SPACE))
    many = evaluator.evaluate_many(task, configs)
    one_by_one = [Evaluator(SyntheticBackend(SPACE)).evaluate(task, c) for c in configs]
    assert Batched.batches == 1 and evaluator.backend.calls == 0
    assert [r.best_metric for r in many] == [r.best_metric for r in one_by_one]


def _config(**values):
    config = {p.name: values.get(p.name, p.default) for p in SPACE.parameters}
    return SPACE.validate({k: v for k, v in config.items() if SPACE.is_active(k, config)})


def test_a_final_fit_that_collapses_ships_the_trials_own_weights():
    """Seen on real data: RMSprop at lr 0.076 reaches 0.81 validation accuracy on digits, and its
    final training on train+val (one epoch, the best trial's) explodes to chance level."""
    task = builtin("digits", epochs=10)
    config = _config(optimizer="rmsprop", lr=0.076)
    evaluator = Evaluator(TorchBackend(num_threads=1))
    trial = evaluator.evaluate(task, config)
    assert trial.ok and trial.best_metric > 0.7
    final = evaluator.final_fit(task, config, trial)
    assert final.status == "fallback"
    assert final.reason.startswith("validation accuracy") and "far below" in final.reason
    # What is shipped is the trial's own model: it scores the trial's test metric exactly.
    assert final.result.test_metric == pytest.approx(trial.test_metric)
    assert final.result.best_metric == pytest.approx(trial.best_metric)
    assert final.report()["status"] == "fallback"
    # The same final fit is trained once.
    assert evaluator.final_fit(task, config, trial) is final


def test_a_healthy_final_fit_is_shipped():
    task = builtin("iris", epochs=5)
    evaluator = Evaluator(TorchBackend(num_threads=1))
    trial = evaluator.evaluate(task, SPACE.default())
    final = evaluator.final_fit(task, SPACE.default(), trial)
    assert final.status == "ok" and final.reason is None
    assert final.epochs == trial.best_epoch and final.result.epochs == trial.best_epoch


def _result(curve, losses, status="ok"):
    return TrialResult.from_curves(
        metric_name="accuracy",
        curve=curve,
        train_loss_curve=losses,
        chance_metric=0.5,
        status=status,
        reason=None if status == "ok" else "non-finite training loss in epoch 2",
    )


def test_final_fit_problems_are_named():
    trial = _result([0.8, 0.9], [0.6, 0.4])
    assert final_fit_problem(trial, _result([0.9, 0.95], [0.5, 0.3])) is None
    assert final_fit_problem(trial, _result([0.85], [0.5])) is None  # a small drop is noise
    exploded = final_fit_problem(trial, _result([0.9, 0.9], [228.0, 0.5]))
    assert (
        exploded
        == "the final training's loss exploded: 228 in epoch 1, the trial's highest was 0.6"
    )
    collapsed = final_fit_problem(trial, _result([0.5, 0.5], [0.6, 0.6]))
    assert collapsed.startswith("validation accuracy 0.5000 after the final training")
    diverged = final_fit_problem(trial, _result([0.9], [0.5], status="diverged"))
    assert diverged == "the final training diverged: non-finite training loss in epoch 2"


def test_a_surrogate_has_no_final_fit():
    task = SyntheticTask.sample(0, 1)[0]
    evaluator = Evaluator(SyntheticBackend(SPACE))
    trial = evaluator.evaluate(task, SPACE.default())
    with pytest.raises(ConfigError, match="trains no model to keep"):
        evaluator.final_fit(task, SPACE.default(), trial)


def test_an_evaluator_is_not_a_backend():
    with pytest.raises(ConfigError, match="not another Evaluator"):
        Evaluator(Evaluator(SyntheticBackend(SPACE)))


def test_tune_report_says_how_the_final_model_was_made(tiny_policy, tmp_path):
    from hporl import TuneOptions, tune_model

    policy, _ = tiny_policy
    tune_model(
        data=builtin("iris", epochs=2),
        policy=policy,
        n_trials=2,
        out=tmp_path,
        options=TuneOptions(compare_default=False),
    )
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["final_fit"]["status"] == "ok" and report["final_fit"]["reason"] is None
    assert report["final_fit"]["epochs"] == report["final_epochs"]
    assert report["final_fit"]["test_metric"] == report["test_metric"]


@pytest.mark.slow
def test_an_evaluation_under_way_is_not_started_twice(tmp_path):
    task = SyntheticTask.sample(0, 1)[0]
    with Evaluator(SyntheticBackend(SPACE), n_workers=2) as evaluator:
        evaluator.start(task)
        first = evaluator.submit(task, SPACE.default())
        again = evaluator.submit(task, SPACE.default())
        assert again is first and evaluator.n_shared == 1
        evaluator.wait([first])
    assert first.result.ok and evaluator.n_trained == 1
