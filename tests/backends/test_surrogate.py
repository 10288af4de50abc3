"""The surrogate learned from the trial store: fit on real trials, files, the backend contract,
the CLI and meta-training through it."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from hporl import Evaluator, SearchSpace, TorchBackend, TrialStore
from hporl.backends import SurrogateBackend, SyntheticTask
from hporl.backends._trial_table import read_trials
from hporl.backends.surrogate import META, WEIGHTS, FitSettings, held_out_report, quality
from hporl.exceptions import ConfigError, ModelError
from hporl.experiment import run_experiment
from hporl.tasks import builtin
from hporl.tasks import models as M
from tests._helpers import run_cli, truncate

TINY = FitSettings(members=3, hidden=(32, 32), steps=300, batch_size=128)
TASKS = ["iris", "wine", "breast_cancer", "synth_clf_0", "synth_clf_1"]
EPOCHS = 3


@pytest.fixture(scope="module")
def space():
    return SearchSpace.builtin("optimizer")


def _tasks():
    tasks = [builtin(n, epochs=EPOCHS) for n in TASKS]
    variant = builtin("wine", model=M.linear, epochs=EPOCHS)
    variant.name = "wine+linear"
    return [*tasks, variant]


@pytest.fixture(scope="module")
def store_path(tmp_path_factory, space):
    """A small real store: 6 tasks x 8 configurations x 3 epochs of real training, plus one
    configuration outside the space and one that fails."""
    path = tmp_path_factory.mktemp("base") / "trials.db"
    evaluator = Evaluator(TorchBackend(num_threads=1), store=TrialStore(path), run="b", space=space)
    for task in _tasks():
        for i in range(8):
            evaluator.evaluate(task, space.sample(i), seed=0)
    evaluator.evaluate(_tasks()[0], {"optimizer": "lbfgs", "lr": 0.1}, seed=0)  # failed
    return path


@pytest.fixture(scope="module")
def fitted(store_path, space, tmp_path_factory):
    backend = SurrogateBackend.fit([store_path], space=space, settings=TINY)
    directory = backend.save(tmp_path_factory.mktemp("surrogate") / "s")
    return backend, directory


def test_trials_are_read_from_the_store_with_their_task_features(store_path, space):
    table = read_trials([store_path], space)
    assert len(table) == 6 * 8
    assert table.skipped == {"failed": 1}
    assert sorted(set(table.tasks)) == sorted([*TASKS, "wine+linear"])
    assert "log_epochs" not in table.feature_names and len(table.feature_names) == 18
    assert set(table.budgets) == {EPOCHS}
    iris = builtin("iris", epochs=EPOCHS).features()
    i = table.tasks.index("iris")
    assert np.allclose(table.features[i], np.delete(iris, -1))  # log_epochs is last
    assert all(len(c) == EPOCHS and np.all(np.abs(c) <= 1) for c in table.curves)


def test_a_store_that_does_not_exist_is_refused(tmp_path, space):
    with pytest.raises(ConfigError, match=re.escape(f"storage {str(tmp_path / 'no.db')!r}: no such file")):  # fmt: skip
        read_trials([tmp_path / "no.db"], space)
    assert not (tmp_path / "no.db").exists()


def test_save_load_round_trip_gives_identical_predictions(fitted, space):
    backend, directory = fitted
    loaded = SurrogateBackend.load(directory)
    task = builtin("digits", epochs=EPOCHS)  # a task it was not fitted on
    configs = [space.sample(100 + i) for i in range(5)]
    a, b = backend.predict(task, configs), loaded.predict(task, configs)
    for field in ("mean", "std", "p_diverged", "test", "seconds"):
        assert np.array_equal(getattr(a, field), getattr(b, field)), field
    assert loaded.evaluate(task, configs[0], seed=3) == backend.evaluate(task, configs[0], seed=3)
    assert loaded.meta["trials"] == 48 and loaded.meta["budgets"] == [EPOCHS]
    assert not list(directory.glob("*.pkl")) and not list(directory.glob("*.pt"))


def _edit_json(change):
    def damage(d: Path) -> None:
        meta = json.loads((d / META).read_text())
        change(meta)
        (d / META).write_text(json.dumps(meta))

    return damage


def _resign(change):
    """Edit the JSON and recompute its own checksum, as someone covering their tracks would."""
    from hporl._io import meta_sha256

    def damage(d: Path) -> None:
        meta = json.loads((d / META).read_text())
        change(meta)
        meta["meta_sha256"] = meta_sha256(meta)
        (d / META).write_text(json.dumps(meta))

    return damage


def _flip_last_byte(d: Path) -> None:
    data = bytearray((d / WEIGHTS).read_bytes())
    data[-1] ^= 0xFF
    (d / WEIGHTS).write_bytes(bytes(data))


EDITED = (
    "{d}/surrogate.json was edited by hand: its checksum does not match (meta_sha256 differs "
    "from its content); restore the saved file or re-run `hporl surrogate fit`"
)
CORRUPTED = "{d}/surrogate.safetensors is corrupted or was changed: its sha256 does not match surrogate.json"
DAMAGE = [
    ("no json", lambda d: (d / META).unlink(), "{d} is not a surrogate directory: surrogate.json is missing"),
    ("no weights", lambda d: (d / WEIGHTS).unlink(), "{d} is not a surrogate directory: surrogate.safetensors is missing"),
    ("json value edited", _edit_json(lambda m: m["settings"].update(members=4)), EDITED),
    ("json key added", _edit_json(lambda m: m.update(note="mine")), EDITED),
    ("json truncated", truncate(META), re.compile(r"\{d\}/surrogate\.json is not valid JSON: .+")),
    ("json not an object", lambda d: (d / META).write_text("[1]"), "{d}/surrogate.json is not a surrogate description: expected a JSON object"),
    ("other format", _resign(lambda m: m.update(format_version=0)), "{d}/surrogate.json: the surrogate was saved in format_version 0 and this hporl reads format 1; re-run `hporl surrogate fit` to make a new surrogate"),
    ("weights truncated", truncate(WEIGHTS), CORRUPTED),
    ("weights byte flipped", _flip_last_byte, CORRUPTED),
    ("weights checksum edited too", _resign(lambda m: m["checksums"].update({WEIGHTS: "0" * 64})), CORRUPTED),
    ("shape edited and re-signed", _resign(lambda m: m["settings"].update(hidden=[16, 16])), re.compile(r"\{d\}/surrogate\.json is incomplete or does not match surrogate\.safetensors: .+")),
    ("feature renamed and re-signed", _resign(lambda m: m["feature_names"].__setitem__(0, "mine")), "{d}/surrogate.json: the surrogate reads task feature 'mine', which this hporl does not compute; re-run `hporl surrogate fit` to make a new surrogate"),
]  # fmt: skip


def _expect(message, d: Path):
    if isinstance(message, re.Pattern):
        return re.compile(message.pattern.replace(r"\{d\}", re.escape(str(d))))
    return message.format(d=d)


def _matches(text: str, expected) -> bool:
    return bool(expected.fullmatch(text)) if isinstance(expected, re.Pattern) else text == expected


@pytest.fixture
def copy_dir(fitted, tmp_path):
    import shutil

    return Path(shutil.copytree(fitted[1], tmp_path / "copy"))


@pytest.mark.parametrize(("name", "damage", "message"), DAMAGE, ids=[c[0] for c in DAMAGE])
def test_damaged_surrogate_is_refused_with_one_line(copy_dir, name, damage, message):
    SurrogateBackend.load(copy_dir)  # good before the damage
    damage(copy_dir)
    with pytest.raises(ModelError) as raised:
        SurrogateBackend.load(copy_dir)
    text = str(raised.value)
    assert "\n" not in text and _matches(text, _expect(message, copy_dir)), text


@pytest.mark.parametrize("case", [DAMAGE[2], DAMAGE[8]], ids=["json edited", "weights flipped"])
def test_damaged_surrogate_in_an_experiment_is_one_line_and_exit_2(
    copy_dir, tmp_path, capsys, case
):
    _, damage, message = case
    damage(copy_dir)
    experiment = tmp_path / "e.yaml"
    experiment.write_text(
        f"name: s\ntasks: [iris]\nbackend: {{surrogate: {copy_dir}}}\n"
        "agent: {total_timesteps: 64, params: {n_steps: 64, batch_size: 32}}\n"
    )
    code, _, err = run_cli("meta-train", experiment, "--out", tmp_path / "run", capsys=capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert _matches(lines[0].removeprefix("hporl: error: "), _expect(message, copy_dir)), err


def _check_contract(result, epochs):
    assert result.status in ("ok", "diverged")
    n = result.epochs_done
    assert result.epochs == epochs and len(result.loss_curve) == len(result.train_loss_curve) == n
    values = result.curve + result.loss_curve + result.train_loss_curve
    assert all(math.isfinite(v) for v in values)
    if result.status == "ok":
        assert n == epochs and result.reason is None and not result.stopped_early
        assert result.final_metric == result.curve[-1]
        assert result.best_metric == max(result.curve) == result.curve[result.best_epoch - 1]
        assert math.isfinite(result.test_metric) and result.wall_time > 0
    else:
        assert n < epochs and result.reason.startswith("the surrogate predicts a non-finite loss")
    assert -1 <= (result.best_metric or 0) <= 1 and result.metric_name == "accuracy"


def test_evaluate_keeps_the_trial_result_contract_and_is_deterministic(fitted, space):
    backend, _ = fitted
    task = builtin("iris", epochs=EPOCHS)
    for i in range(20):
        config = space.sample(1000 + i)
        result = backend.evaluate(task, config, seed=0)
        _check_contract(result, EPOCHS)
        assert result.config == config and result.chance_metric == task.chance_metric
        assert backend.evaluate(task, config, seed=0) == result
        assert backend.evaluate(task, config, seed=1).curve == result.curve  # noise 0: the mean
    # More epochs than its trials ran: cut to theirs, as the YAHPO backends do.
    assert backend.evaluate(task, space.default(), epochs=50).epochs == EPOCHS
    assert backend.evaluate(task, space.default(), epochs=2).epochs_done == 2
    # on_epoch stops a trial, as a pruner does.
    stopped = backend.evaluate(task, space.default(), on_epoch=lambda e, v: e == 2)
    assert stopped.stopped_early and stopped.epochs_done == 2
    # evaluate_many is evaluate for each (a batch rounds floats its own way).
    configs = [space.sample(i) for i in range(4)] + [{"lr": 9.0}]
    many = backend.evaluate_many(task, configs)
    for batched, config in zip(many, configs, strict=True):
        one = backend.evaluate(task, config)
        assert batched.status == one.status and batched.reason == one.reason
        assert np.allclose(batched.curve, one.curve, atol=1e-6) and batched.config == config


def test_noise_is_seeded(fitted, space):
    noisy = SurrogateBackend.load(fitted[1], noise=1.0)
    task, config = builtin("wine", epochs=EPOCHS), space.sample(7)
    a, b = noisy.evaluate(task, config, seed=0), noisy.evaluate(task, config, seed=0)
    assert a == b
    assert noisy.evaluate(task, config, seed=1).curve != a.curve
    _check_contract(a, EPOCHS)
    with pytest.raises(ConfigError, match="noise must be a number >= 0"):
        SurrogateBackend.load(fitted[1], noise=-1)


def test_a_value_it_cannot_use_gives_a_failed_result(fitted, space):
    backend, _ = fitted
    task = builtin("iris", epochs=EPOCHS)
    out = backend.evaluate(task, {**space.default(), "lr": 5.0})
    assert out.status == "failed" and out.curve == [] and out.best_metric is None
    assert out.reason == "parameter 'lr': value 5.0 is outside [1e-05, 1.0] (the surrogate's space)"
    unknown = backend.evaluate(task, {**space.default(), "depth": 3})
    assert unknown.status == "failed" and "'depth'" in unknown.reason
    # A configuration missing parameters takes their defaults, as real training does.
    partial = backend.evaluate(task, {"lr": 0.01})
    assert partial.config == {"lr": 0.01} and partial.status == "ok"
    assert partial.curve == backend.evaluate(task, {**space.default(), "lr": 0.01}).curve


def test_the_ensemble_is_less_sure_off_data(fitted, space):
    """On the data it was fitted on (wine's 8 trained configurations) the members agree more
    than on unseen configurations of an unseen kind of task (images, a LeNet). Unseen
    configurations of a seen task were too close to call with this tiny ensemble: which won
    depended on torch's thread count."""
    backend, _ = fitted
    configs = [space.sample(200 + i) for i in range(32)]
    near = backend.predict(builtin("wine", epochs=EPOCHS), [space.sample(i) for i in range(8)])
    far = backend.predict(builtin("shapes", epochs=EPOCHS), configs)
    assert np.all(far.std >= 0) and far.score_std.mean() > 0
    assert far.score_std.mean() > near.score_std.mean()


def test_divergence_in_the_store_is_predicted(store_path, space):
    """Real curves, each given four fresh configurations of which those with a learning rate
    above 0.02 diverged in epoch 1: the surrogate fitted on that predicts divergence for a high
    rate and not for a low one, on configurations it never saw."""
    table = read_trials([store_path], space).subset(list(range(48)) * 4)
    for i in range(len(table)):
        config = space.sample(10_000 + i)
        table.configs[i] = space.encode(config)
        if config["lr"] > 0.02:
            table.curves[i] = table.curves[i][:0]
            table.diverged[i] = True
    assert 40 < sum(table.diverged) < 100
    backend = SurrogateBackend.fit(table, space=space, settings=TINY)
    task = builtin("iris", epochs=EPOCHS)
    high = [backend.evaluate(task, {**space.sample(500 + i), "lr": 0.9}) for i in range(20)]
    low = [backend.evaluate(task, {**space.sample(500 + i), "lr": 1e-4}) for i in range(20)]
    assert sum(r.status == "diverged" for r in high) >= 16
    assert sum(r.status == "diverged" for r in low) <= 2
    for result in high + low:
        _check_contract(result, EPOCHS)
    diverged = next(r for r in high if r.status == "diverged")
    assert diverged.curve == [] and diverged.best_metric is None and diverged.test_metric is None
    assert diverged.reason.startswith("the surrogate predicts a non-finite loss in epoch 1 (p = ")


def test_check_space_names_what_the_surrogate_was_not_fitted_on(fitted, space):
    backend, _ = fitted
    task = builtin("iris", epochs=EPOCHS)
    backend.check_space(space, task)
    backend.check_space(SearchSpace.from_dict({"lr": space["lr"].to_dict()}), task)  # a part
    wider = SearchSpace.from_dict({"lr": {"type": "float", "low": 1e-6, "high": 1.0, "log": True}})
    with pytest.raises(ConfigError, match=re.escape("parameter 'lr': the surrogate was fitted with low=1e-05, the space has low=1e-06")):  # fmt: skip
        backend.check_space(wider, task)
    other = SearchSpace.from_dict({"depth": {"type": "int", "low": 1, "high": 4}})
    with pytest.raises(ConfigError, match="parameter 'depth': the surrogate was fitted on the space 'optimizer', which lacks it"):  # fmt: skip
        backend.check_space(other, task)
    with pytest.raises(ConfigError, match="the surrogate backend evaluates real tasks"):
        backend.check_space(space, SyntheticTask("s", np.zeros(4)))


def test_held_out_report_on_real_trials(store_path, space):
    table = read_trials([store_path], space)
    report = held_out_report(table, folds=3, settings=TINY)
    # wine and wine+linear share their data: held out together, so 5 data sets in 3 folds.
    assert report["folds"] == 3 and report["tasks"] == 6
    scored = [e for e in report["per_task"] if "spearman" in e]
    assert scored and all(-1 <= e["spearman"] <= 1 for e in scored)
    assert all(0 <= e["regret_top"] <= 1 and 0 <= e["regret_random"] <= 1 for e in scored)
    assert report["spearman_median"] == float(np.median([e["spearman"] for e in scored]))
    json.dumps(report, allow_nan=False)


def test_cli_surrogate_fit_writes_the_surrogate_and_its_report(store_path, tmp_path, capsys):
    out = tmp_path / "sur"
    code, stdout, err = run_cli(
        "surrogate", "fit", "--storage", store_path, "--out", out, "--folds", "2",
        "--members", "2", "--steps", "100", capsys=capsys,
    )  # fmt: skip
    assert code == 0, err
    assert "Spearman on held-out tasks: median" in stdout and "48 trials of 6 tasks" in stdout
    report = json.loads((out / "report.json").read_text())
    assert report["trials"] == 48 and report["held_out"]["folds"] == 2
    assert report["settings"]["members"] == 2 and report["fit_seconds"] > 0
    assert SurrogateBackend.load(out).meta["trials"] == 48


def test_cli_surrogate_fit_bad_input_is_one_line(tmp_path, capsys):
    code, _, err = run_cli("surrogate", "fit", "--storage", tmp_path / "no.db", "--out", tmp_path / "o", capsys=capsys)  # fmt: skip
    assert code == 2 and err.strip() == f"hporl: error: storage {str(tmp_path / 'no.db')!r}: no such file (a trial store to read)"  # fmt: skip
    empty = tmp_path / "empty.db"
    TrialStore(empty)
    code, _, err = run_cli("surrogate", "fit", "--storage", empty, "--out", tmp_path / "o", capsys=capsys)  # fmt: skip
    assert code == 2 and err.strip() == "hporl: error: no usable trials to fit a surrogate on (no finished trials)"  # fmt: skip


def test_meta_training_through_the_surrogate(fitted, tmp_path, space):
    _, directory = fitted
    policy = run_experiment(
        {
            "name": "through",
            "tasks": ["iris", "wine", "digits"],
            "backend": {"surrogate": str(directory), "epochs": EPOCHS, "noise": 0.5},
            "budget": 3,
            "agent": {"total_timesteps": 128, "params": {"n_steps": 64, "batch_size": 32}},
        },
        out=tmp_path / "run",
    )
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["trained"] > 0 and "storage" not in summary  # predictions are not stored
    assert not (tmp_path / "run" / "trials.db").exists()
    assert policy.meta["backend"] == "surrogate" and policy.meta["surrogate"] == str(directory)
    assert space.validate(policy.suggest(builtin("iris")))


def test_a_loaded_surrogate_saves_again_unchanged(fitted, tmp_path, space):
    loaded = SurrogateBackend.load(fitted[1])
    again = SurrogateBackend.load(loaded.save(tmp_path / "again"))
    task, configs = builtin("wine", epochs=EPOCHS), [space.sample(i) for i in range(3)]
    assert np.array_equal(again.predict(task, configs).mean, loaded.predict(task, configs).mean)
    first = json.loads((fitted[1] / META).read_text())
    second = json.loads((tmp_path / "again" / META).read_text())
    assert first.keys() == second.keys() and first["tasks"] == second["tasks"]


@pytest.mark.slow
def test_meta_training_through_the_surrogate_on_worker_processes(fitted, tmp_path):
    """Two envs whose evaluations run in a pool of two processes: the surrogate travels there."""
    policy = run_experiment(
        {
            "name": "pool",
            "tasks": ["iris", "wine"],
            "backend": {"surrogate": str(fitted[1]), "epochs": EPOCHS},
            "agent": {
                "n_envs": 2,
                "total_timesteps": 128,
                "params": {"n_steps": 32, "batch_size": 32},
            },
        },
        out=tmp_path / "run",
    )
    assert policy.meta["timesteps"] >= 128
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["trained"] > 0


def test_quality_of_a_fitted_surrogate_on_trials_read_for_it(fitted, store_path, space):
    backend, _ = fitted
    table = read_trials([store_path], space, feature_names=backend.feature_names)
    report = quality(backend, table)
    assert report["tasks"] == 6 and report["tasks_scored"] >= 1
    assert report["spearman_median"] > 0.5  # on the trials it was fitted on
    other = read_trials([store_path], space, feature_names=backend.feature_names[:-1])
    with pytest.raises(ConfigError, match="other task features or another space"):
        quality(backend, other)
