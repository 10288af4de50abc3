"""Executors: a local process pool, Ray in a network namespace of its own, worker death, time
limits, meta-training environments as Ray actors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from hporl import ConfigError, TuneOptions, tune_model
from hporl.executors import LocalExecutor
from hporl.store import storage_url
from hporl.tasks import builtin

SCRIPTS = Path(__file__).parent / "ray_scripts"
ROOT = Path(__file__).resolve().parents[1]


def _study(out: Path) -> optuna.Study:
    url = storage_url(out / "trials.db", None)
    (name,) = [n for n in optuna.get_all_study_names(url) if n.startswith("tune/")]
    return optuna.load_study(study_name=name, storage=url)


@pytest.mark.slow
def test_local_pool_runs_trials_in_parallel_and_records_each(tiny_policy, tmp_path):
    policy, _ = tiny_policy
    res = tune_model(
        data=builtin("iris", epochs=2),
        policy=policy,
        n_trials=4,
        executor=LocalExecutor(2),
        out=tmp_path,
        options=TuneOptions(compare_default=False),
    )
    assert len(res.trials) == 4 and all(t["status"] == "ok" for t in res.trials)
    configs = [json.dumps(t["config"], sort_keys=True) for t in res.trials]
    assert len(set(configs)) == 4  # no configuration proposed twice, even while running
    study = _study(tmp_path)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 4


def test_time_limit_stops_a_trial_and_says_so(tiny_policy, tmp_path):
    policy, _ = tiny_policy
    res = tune_model(
        data=builtin("digits", epochs=30),
        policy=policy,
        n_trials=2,
        out=tmp_path,
        options=TuneOptions(trial_timeout=0.05, compare_default=False),
    )
    for t in res.trials:
        assert t["epochs"] < 30 and t["reason"].startswith("time limit of 0.05 s reached after")
    assert {t.state for t in _study(tmp_path).trials} == {TrialState.PRUNED}


def test_executor_bad_input(tiny_policy):
    policy, _ = tiny_policy
    task = builtin("iris", epochs=1)
    with pytest.raises(ConfigError, match="executor must be one of local, ray, got 'dask'"):
        tune_model(data=task, policy=policy, n_trials=1, executor="dask")
    with pytest.raises(ConfigError, match="n_workers must be a positive integer, got 0"):
        tune_model(data=task, policy=policy, n_trials=1, executor=LocalExecutor(0))
    with pytest.raises(ConfigError, match="trial_timeout must be a positive number"):
        tune_model(data=task, policy=policy, n_trials=1, options=TuneOptions(trial_timeout=-1))


# -- Ray, inside a network namespace that has only a loopback interface ------------------------
@pytest.fixture
def netns():
    """A network namespace of this test's own (only `lo`, up); deleted afterwards."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("network namespaces need root and iproute2")
    name = f"hporl-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"], check=True)
        links = subprocess.run(
            ["ip", "netns", "exec", name, "ip", "-o", "link"], capture_output=True, text=True
        ).stdout
        assert [line.split(":")[1].strip() for line in links.splitlines()] == ["lo"]
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.fixture
def ray_tmp():
    """A short temporary directory of the test's own for Ray's files (Ray's socket paths must
    stay under ~107 characters, which pytest's tmp_path exceeds)."""
    path = Path(tempfile.mkdtemp(prefix="hr-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _in_netns(netns: str, tmp: Path, *args: str, timeout: int = 900) -> dict:
    pytest.importorskip("ray")
    env = {
        **os.environ,
        "TMPDIR": str(tmp),  # Ray's temporary files under the test's directory
        "RAY_USAGE_STATS_ENABLED": "0",
        "PYTHONPATH": str(ROOT),
    }
    proc = subprocess.run(
        ["ip", "netns", "exec", netns, sys.executable, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_tune_on_ray_records_every_trial(tiny_policy, tmp_path, netns, ray_tmp):
    _, policy_dir = tiny_policy
    out = tmp_path / "out"
    report = _in_netns(
        netns, ray_tmp, str(SCRIPTS / "tune_on_ray.py"), str(policy_dir), str(out), "one_node"
    )
    assert len(report["trials"]) == 4 and all(t["status"] == "ok" for t in report["trials"])
    assert not report["ray_still_up"]
    study = _study(out)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 4
    assert not list(ray_tmp.glob("hporl-ray-*"))  # the local Ray's files removed at the end


@pytest.mark.slow
def test_tune_on_a_two_node_ray_cluster(tiny_policy, tmp_path, netns, ray_tmp):
    _, policy_dir = tiny_policy
    out = tmp_path / "out"
    report = _in_netns(
        netns, ray_tmp, str(SCRIPTS / "tune_on_ray.py"), str(policy_dir), str(out), "two_nodes"
    )
    assert report["nodes"] == 2 and report["addresses"]  # all loopback (checked in the script)
    assert len(report["trials"]) == 4


@pytest.mark.slow
def test_killed_ray_worker_loses_no_trial(tiny_policy, tmp_path, netns, ray_tmp):
    _, policy_dir = tiny_policy
    out = tmp_path / "out"
    report = _in_netns(
        netns, ray_tmp, str(SCRIPTS / "tune_on_ray.py"), str(policy_dir), str(out), "kill"
    )
    assert len(report["killed"]) == 1
    study = _study(out)
    # The evaluator ran the killed trial's training once more; the trial records both.
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 4
    retried = [t for t in study.trials if "retried_after" in t.user_attrs]
    assert len(retried) == 1 and retried[0].user_attrs["retried_after"].startswith("worker died")
    assert all("hporl_result" in t.user_attrs for t in study.trials)
    assert len(report["trials"]) == 4


@pytest.mark.slow
def test_meta_training_with_ray_environments(tmp_path, netns, ray_tmp):
    script = tmp_path / "meta.py"
    script.write_text(
        "import json, sys, torch\n"
        "torch.set_num_threads(1)\n"
        "from hporl import run_experiment\n"
        "if __name__ == '__main__':\n"
        "    p = run_experiment({'name': 'rm', 'tasks': ['iris', 'wine'], 'backend': {'epochs': 1},\n"
        "        'budget': 2, 'agent': {'total_timesteps': 96, 'n_envs': 2, 'executor': 'ray',\n"
        "        'net_arch': [16], 'params': {'n_steps': 24, 'batch_size': 16}}}, out=sys.argv[1])\n"
        "    import ray\n"
        "    print(json.dumps({'timesteps': p.meta['timesteps'], 'ray_up': ray.is_initialized()}))\n"
    )
    out = tmp_path / "run"
    report = _in_netns(netns, ray_tmp, str(script), str(out))
    assert report["timesteps"] >= 96 and not report["ray_up"]
    assert (out / "policy" / "policy.json").exists()
    url = storage_url(out / "trials.db", None)
    stored = sum(
        len(optuna.load_study(study_name=n, storage=url).trials)
        for n in optuna.get_all_study_names(url)
    )
    summary = json.loads((out / "summary.json").read_text())
    # trained on Ray workers, recorded by the driver alone: every training once in the store
    assert stored == summary["trained"] > 0 and summary["retried"] == 0


@pytest.mark.slow
def test_ray_cancels_a_trial_that_never_reaches_an_epoch_end(tmp_path, netns, ray_tmp):
    script = tmp_path / "hang.py"
    script.write_text(
        "import json, time\n"
        "from hporl.backends import Backend\n"
        "from hporl.executors import RayExecutor\n"
        "from hporl.tasks import builtin\n"
        "class Hangs(Backend):\n"
        "    def evaluate(self, task, config, **kwargs):\n"
        "        time.sleep(600)  # never calls on_epoch\n"
        "if __name__ == '__main__':\n"
        "    with RayExecutor(1) as ex:\n"
        "        ex.start(Hangs(), builtin('iris'))\n"
        "        t0 = time.perf_counter()\n"
        "        r = ex.submit({'lr': 0.1}, time_limit=1.0).result(timeout=120)\n"
        "        print(json.dumps({'status': r.status, 'reason': r.reason,\n"
        "                          'seconds': time.perf_counter() - t0}))\n"
    )
    report = _in_netns(netns, ray_tmp, str(script))
    assert report["status"] == "failed"
    assert report["reason"] == "time limit of 1 s: worker cancelled"
    assert 6 < report["seconds"] < 60  # twice the limit + 5 s of grace, then cancelled
