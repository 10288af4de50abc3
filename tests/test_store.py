"""The trial store: records, the cache, resume after kill -9, and several writers at once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from hporl import Evaluator, SearchSpace, StoreError, TorchBackend, TrialStore, TuneOptions
from hporl.store import evaluation_key, mask_url, storage_url
from hporl.tasks import builtin

ROOT = Path(__file__).resolve().parents[1]
HPORL = str(Path(sys.executable).with_name("hporl"))


class CountingBackend(TorchBackend):
    def __init__(self) -> None:
        super().__init__(num_threads=1)
        self.calls = 0

    def evaluate(self, task, config, **kwargs):
        self.calls += 1
        return super().evaluate(task, config, **kwargs)


@pytest.fixture(scope="module")
def space():
    return SearchSpace.builtin("optimizer")


def test_second_identical_evaluate_does_not_train(tmp_path, space):
    task = builtin("iris", epochs=2)
    inner = CountingBackend()
    backend = Evaluator(inner, store=TrialStore(tmp_path / "t.db"), run="r", space=space)
    config = space.default()
    first = backend.evaluate(task, config, seed=0)
    again = backend.evaluate(task, config, seed=0)
    assert inner.calls == 1 and not first.cached and again.cached
    assert again.curve == first.curve and again.test_metric == first.test_metric
    # Another process (a new store on the same file) finds it too.
    other = Evaluator(CountingBackend(), store=TrialStore(tmp_path / "t.db"), run="s", space=space)
    assert other.evaluate(task, config, seed=0).cached and other.backend.calls == 0
    assert other.n_store_hits == 1 and other.n_trained == 0
    # A different seed, epoch count, configuration or data is a different evaluation.
    backend.evaluate(task, config, seed=1)
    backend.evaluate(task, config, seed=0, epochs=1)
    backend.evaluate(task, {**config, "lr": 0.01}, seed=0)
    backend.evaluate(builtin("iris", epochs=2, seed=1), config, seed=0)
    assert inner.calls == 5 and backend.n_trained == 5 and backend.n_memory_hits == 1


def test_trials_hold_config_result_and_state(tmp_path, space):
    task = builtin("iris", epochs=3)
    url = storage_url(tmp_path / "t.db", None)
    backend = Evaluator(TorchBackend(num_threads=1), store=TrialStore(url), run="run", space=space)
    good = backend.evaluate(task, space.default(), seed=0)
    bad = backend.evaluate(task, {**space.default(), "lr": -1.0}, seed=0)  # outside the space
    assert bad.status == "failed"
    study = optuna.load_study(study_name="run/iris", storage=url)
    assert study.user_attrs["hporl_fingerprint"] == task.fingerprint
    ok, failed = study.trials
    assert ok.state == TrialState.COMPLETE and ok.value == pytest.approx(good.best_metric)
    assert space.from_optuna_params(ok.params) == space.default()
    assert set(ok.distributions) == set(ok.params)
    assert ok.intermediate_values == dict(enumerate(good.curve, start=1))
    attrs = ok.user_attrs
    assert attrs["status"] == "ok" and attrs["seed"] == 0 and attrs["epochs"] == 3
    assert attrs["hporl_version"] and attrs["wall_time"] > 0
    assert attrs["hporl_key"] == evaluation_key(task.fingerprint, space.default(), 0, 3)
    assert failed.state == TrialState.FAIL and "lr" in failed.user_attrs["reason"]
    assert failed.params == {}  # not in the space: kept in hporl_config only
    assert failed.user_attrs["hporl_config"]["lr"] == -1.0


def test_bad_storage_is_refused_before_anything_is_written(tmp_path):
    target = tmp_path / "keep.db"
    target.write_bytes(b"important bytes that are not sqlite")
    with pytest.raises(StoreError, match="is not a SQLite database; nothing was changed"):
        TrialStore(target)
    assert target.read_bytes() == b"important bytes that are not sqlite"
    with pytest.raises(StoreError, match="its database driver is not installed"):
        TrialStore("mysql+mysqldb://u@127.0.0.1:1/x")
    with pytest.raises(StoreError, match=r"storage 'postgresql\+psycopg://u:\*\*\*@"):
        TrialStore("postgresql+psycopg://u:secret@127.0.0.1:1/x")
    assert mask_url("postgresql://u:secret@h/db") == "postgresql://u:***@h/db"


# -- kill -9 in the middle of a trial ------------------------------------------------------------
def _csv(path: Path) -> Path:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(3000, 12))
    y = (X[:, 0] + 0.5 * X[:, 1] ** 2 + rng.normal(0, 0.3, size=3000) > 0.5).astype(int)
    rows = [",".join(f"{v:.4f}" for v in r) + f",{t}" for r, t in zip(X, y, strict=True)]
    path.write_text(",".join(f"x{i}" for i in range(12)) + ",y\n" + "\n".join(rows))
    return path


def _tune_cmd(csv: Path, policy: Path, out: Path) -> list[str]:
    return [
        HPORL,
        "tune",
        "--data",
        str(csv),
        "--target",
        "y",
        "--policy",
        str(policy),
        "--trials",
        "4",
        "--epochs",
        "40",  # long enough that the poll below sees the third trial running
        "--out",
        str(out),
    ]


def _trials(out: Path) -> list[optuna.trial.FrozenTrial]:
    url = storage_url(out / "trials.db", None)
    try:
        names = optuna.get_all_study_names(url)
    except Exception:
        return []
    names = [n for n in names if n.startswith("tune/")]
    return optuna.load_study(study_name=names[0], storage=url).trials if names else []


@pytest.mark.slow
def test_kill_9_mid_trial_loses_nothing(tiny_policy, tmp_path):
    _, policy_dir = tiny_policy
    csv = _csv(tmp_path / "data.csv")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        _tune_cmd(csv, policy_dir, killed),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        trials = _trials(killed) if (killed / "trials.db").exists() else []
        done = [t for t in trials if t.state == TrialState.COMPLETE]
        running = [  # in training: claimed, and its configuration chosen (all of it: a trial
            # killed while its parameters are suggested one by one is failed without a retry)
            t
            for t in trials
            if t.state == TrialState.RUNNING
            and "hporl_owner" in t.user_attrs
            and t.params
            and t.user_attrs.get("hporl_configuring") is not True
        ]
        if len(done) >= 2 and running:
            break
        assert proc.poll() is None, proc.stderr.read().decode()
        time.sleep(0.05)
    else:
        pytest.fail("never saw a running third trial")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = {t.number: (t.params, t.value) for t in _trials(killed) if t.state.is_finished()}
    victim = running[0].number

    subprocess.run(_tune_cmd(csv, policy_dir, killed), env=env, check=True, capture_output=True)
    clean = tmp_path / "clean"
    subprocess.run(_tune_cmd(csv, policy_dir, clean), env=env, check=True, capture_output=True)

    after = _trials(killed)
    for number, (params, value) in before.items():  # nothing lost, nothing changed
        assert (after[number].params, after[number].value) == (params, value)
    retry = [t for t in after if t.system_attrs.get("failed_trial") == victim]
    if after[victim].state == TrialState.COMPLETE:
        # killed after its result was stored, before it was told: finished from that result
        # on resume, not trained again (see TrialStore.fail_orphans)
        assert "hporl_result" in after[victim].user_attrs and not retry
        assert len(after) == 4
    else:  # killed mid-training: failed, and retried once with the same configuration
        assert after[victim].state == TrialState.FAIL
        assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE
        assert retry[0].params == after[victim].params
        assert len(after) == 5
    with_result = [t for t in after if "hporl_result" in t.user_attrs]
    assert len(with_result) == 4
    reference = [t for t in _trials(clean) if "hporl_result" in t.user_attrs]
    assert [t.params for t in with_result] == [t.params for t in reference]
    resumed = json.loads((killed / "report.json").read_text())
    uninterrupted = json.loads((clean / "report.json").read_text())
    assert resumed["config"] == uninterrupted["config"]
    assert resumed["test_metric"] == uninterrupted["test_metric"]
    assert sum(t["resumed"] for t in resumed["trials"]) == len(before)


# -- several writers -------------------------------------------------------------------------------
WORKER = """
import sys, torch
torch.set_num_threads(1)
from hporl import Policy, TuneOptions, tune_model
from hporl.tasks import builtin
url, policy, worker, n = sys.argv[1:5]
res = tune_model(data=builtin("iris", epochs=1), policy=Policy.load(policy), n_trials=int(n),
                 storage=url,
                 options=TuneOptions(study_name="shared", worker=worker, compare_default=False))
print("done", worker, len(res.trials))
"""


def _run_workers(url: str, policy_dir: Path, workers: int, trials: int) -> None:
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, url, str(policy_dir), f"w{i}", str(trials)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=ROOT,
        )
        for i in range(workers)
    ]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err.decode()[-2000:]
        assert b"database is locked" not in err, err.decode()[-2000:]
    study = optuna.load_study(study_name="shared", storage=url)
    finished = [t for t in study.trials if "hporl_result" in t.user_attrs]
    assert len(finished) == workers * trials
    assert all(t.state.is_finished() for t in study.trials)
    assert len({t.number for t in study.trials}) == len(study.trials)
    per_worker = {}
    for t in finished:
        per_worker[t.user_attrs["hporl_worker"]] = (
            per_worker.get(t.user_attrs["hporl_worker"], 0) + 1
        )
    assert per_worker == {f"w{i}": trials for i in range(workers)}


@pytest.mark.slow
def test_four_workers_share_one_sqlite_store(tiny_policy, tmp_path):
    _, policy_dir = tiny_policy
    _run_workers(storage_url(tmp_path / "shared.db", None), policy_dir, workers=4, trials=3)


@pytest.mark.slow
def test_eight_workers_share_one_postgres_store(tiny_policy, postgres_db_url):
    _, policy_dir = tiny_policy
    _run_workers(postgres_db_url, policy_dir, workers=8, trials=3)


@pytest.mark.slow
def test_cli_unreachable_storage_is_one_line_and_exit_2(tiny_policy, tmp_path):
    _, policy_dir = tiny_policy
    csv = tmp_path / "d.csv"
    csv.write_text("a,b,y\n" + "\n".join(f"{i},{i % 3},{i % 2}" for i in range(40)))
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.json").write_text('{"kept": true}')
    proc = subprocess.run(
        [
            *(HPORL, "tune", "--data", str(csv), "--target", "y", "--policy", str(policy_dir)),
            *("--out", str(out), "--storage", "postgresql+psycopg://hporl:pw@127.0.0.1:1/nowhere"),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "hporl: error: storage 'postgresql+psycopg://hporl:***@127.0.0.1:1/nowhere' cannot be used"
    )
    assert "pw" not in proc.stderr
    assert (out / "report.json").read_text() == '{"kept": true}'


def test_a_trial_opened_and_annotated_at_once_reads_as_one_written_row_by_row(tmp_path, space):
    """The batched writes of an RDB store (one transaction to open a trial, one to annotate it)
    leave what optuna's row-by-row API leaves in an in-memory store."""
    task = builtin("iris", epochs=3)
    result = TorchBackend(num_threads=1).evaluate(task, space.default(), seed=0)
    config = {**space.default(), "lr": 0.01}
    trials = []
    for url in (tmp_path / "t.db", None):
        store = TrialStore(url)
        study = store.study("run", task)
        trial = store.open_trial(study, space, config)
        assert space.suggest(trial) == space.validate(config)  # read back, not sampled
        if url is not None:  # annotating again updates the rows
            store.annotate(trial, task, config, result, seed=0, worker="first")
        store.annotate(trial, task, config, result, seed=0, worker="w")
        study.tell(trial, result.best_metric)
        trials.append(study.trials[0])
    rdb, memory = trials
    assert rdb.params == memory.params == space.optuna_params(config)
    assert rdb.intermediate_values == memory.intermediate_values
    assert rdb.intermediate_values == dict(enumerate(result.curve, start=1))
    assert rdb.user_attrs.keys() == memory.user_attrs.keys()
    assert rdb.user_attrs["hporl_worker"] == memory.user_attrs["hporl_worker"] == "w"
    assert rdb.user_attrs["hporl_result"] == memory.user_attrs["hporl_result"]
    assert rdb.state == memory.state == TrialState.COMPLETE


def test_a_trial_killed_between_its_result_and_its_tell_is_finished_not_run_again(tmp_path, space):
    """kill -9 after the result was written into the running trial, before ``tell``: the next
    run finishes that trial from its result; nothing is queued again or counted twice."""
    import socket

    task = builtin("iris", epochs=2)
    result = TorchBackend(num_threads=1).evaluate(task, space.default(), seed=0)
    store = TrialStore(tmp_path / "t.db")
    study = store.study("tune", task)
    trial = store.open_trial(study, space, space.default())
    store.annotate(trial, task, space.default(), result, seed=0)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    trial.set_user_attr("hporl_owner", f"{socket.gethostname()}:{dead.pid}")
    assert store.fail_orphans(study) == []
    (only,) = study.trials  # nothing queued again
    assert only.state == TrialState.COMPLETE and only.value == pytest.approx(result.best_metric)
    assert len(store.results(study)) == 1


@pytest.mark.parametrize("n_trials", [2, 3])
def test_a_dead_trial_of_a_run_already_complete_is_not_queued_to_wait_for_ever(
    tiny_policy, tmp_path, n_trials
):
    """Two processes on one ``--out`` count one worker's trials: when one has finished the run's
    trials and the other died mid-trial, a restart has nothing left to run, so a retry queued then
    would stay WAITING for ever. It is queued only when the run will take it."""
    import socket

    from hporl import tune_model

    policy, _ = tiny_policy
    task = builtin("iris", epochs=1)
    out = tmp_path / "run"
    tune_model(
        data=task, policy=policy, n_trials=2, out=out, options=TuneOptions(compare_default=False)
    )
    store = TrialStore(out / "trials.db")
    (name,) = [s.study_name for s in optuna.get_all_study_summaries(store.storage)]
    study = optuna.load_study(study_name=name, storage=store.storage)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    orphan = store.open_trial(study, policy.space, policy.space.sample(7))  # the other process's
    orphan.set_user_attr("hporl_owner", f"{socket.gethostname()}:{dead.pid}")
    orphan.set_user_attr("hporl_worker", str(out.resolve()))

    result = tune_model(
        data=task, policy=policy, n_trials=n_trials, out=out,
        options=TuneOptions(compare_default=False),
    )  # fmt: skip
    trials = optuna.load_study(study_name=name, storage=store.storage).get_trials()
    assert not [t for t in trials if t.state in (TrialState.WAITING, TrialState.RUNNING)]
    assert trials[orphan.number].state == TrialState.FAIL
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == orphan.number]
    assert len(retries) == n_trials - 2  # run only when the run had a trial left to give it
    assert [t.params for t in retries] == [trials[orphan.number].params] * (n_trials - 2)
    assert len(result.trials) == n_trials


def test_a_study_records_its_task_features_and_an_older_study_gets_them(tmp_path):
    from hporl.store import TASK_FEATURES
    from hporl.tasks import FEATURE_NAMES

    task = builtin("iris", epochs=2)
    store = TrialStore(tmp_path / "t.db")
    attrs = store.study("r", task).user_attrs
    assert attrs[TASK_FEATURES] == [float(v) for v in task.features()]
    assert attrs["hporl_feature_names"] == list(FEATURE_NAMES)
    assert attrs["hporl_task_type"] == "classification" and attrs["hporl_task_epochs"] == 2
    assert attrs["hporl_chance_metric"] == task.chance_metric
    # A study written before features were kept gets them when its task opens it again.
    old = optuna.create_study(storage=store.storage, study_name="old/iris", direction="maximize")
    old.set_user_attr("hporl_task", "iris")
    old.set_user_attr("hporl_fingerprint", task.fingerprint)
    again = TrialStore(tmp_path / "t.db").study("old", task)
    assert again.user_attrs[TASK_FEATURES] == attrs[TASK_FEATURES]
    # Another task with that study's name does not write its features there.
    other = optuna.create_study(storage=store.storage, study_name="x/iris", direction="maximize")
    other.set_user_attr("hporl_task", "iris")
    other.set_user_attr("hporl_fingerprint", "0" * 32)
    assert TASK_FEATURES not in store.study("x", task).user_attrs


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")  # the test asks, as tune_model does
def test_a_trial_that_died_while_its_parameters_were_chosen_is_not_retried(tiny_policy, tmp_path):
    """A sampler after the policy (GP) suggests a trial's parameters one write at a time: a
    process killed in between leaves a trial with some of them. Nothing trained, so a resumed
    run fails it without a retry (a retry would complete the parameters at random) and proposes
    what an uninterrupted run does."""
    import socket

    from hporl import tune_model

    policy, _ = tiny_policy
    task = builtin("iris", epochs=1)
    options = TuneOptions(compare_default=False)  # GP after the policy's 2 trials
    out = tmp_path / "run"
    tune_model(data=task, policy=policy, n_trials=2, out=out, options=options)
    store = TrialStore(out / "trials.db")
    (name,) = [s.study_name for s in optuna.get_all_study_summaries(store.storage)]
    study = optuna.load_study(study_name=name, storage=store.storage)
    half = study.ask()
    store.claim(half, configuring=True)
    choices = policy.space.to_optuna()["optimizer"].choices
    half.suggest_categorical("optimizer", list(choices))  # then the process dies
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    half.set_user_attr("hporl_owner", f"{socket.gethostname()}:{dead.pid}")
    half.set_user_attr("hporl_worker", str(out.resolve()))

    resumed = tune_model(data=task, policy=policy, n_trials=4, out=out, options=options)
    clean = tune_model(
        data=task, policy=policy, n_trials=4, out=tmp_path / "clean", options=options
    )
    trials = optuna.load_study(study_name=name, storage=store.storage).get_trials()
    assert trials[2].state == TrialState.FAIL and trials[2].user_attrs["hporl_stale"] is True
    assert not [t for t in trials if t.system_attrs.get("failed_trial") == 2]
    assert [t["config"] for t in resumed.trials] == [t["config"] for t in clean.trials]


def test_a_heartbeat_the_database_refuses_is_no_traceback(monkeypatch):
    """A full disk met by a running trial's heartbeat thread (not by the run) raised in that
    thread, and Python printed its traceback beside the run's one-line error."""
    import threading

    from hporl.tune import _Heartbeat

    raised: list[BaseException] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: raised.append(args.exc_value))

    class Full:
        calls = 0

        def get_heartbeat_interval(self) -> int:
            return 0

        def record_heartbeat(self, trial_id: int) -> None:
            Full.calls += 1
            raise optuna.exceptions.StorageInternalError("database or disk is full")

    beat = _Heartbeat(7, Full())
    beat.start()
    while Full.calls < 3:  # it keeps trying
        time.sleep(0.01)
    beat.join()
    assert raised == []
