from __future__ import annotations

import json
import subprocess
import sys

import pytest

import hporl
from hporl import Policy
from hporl.tasks import builtin
from tests._helpers import run_cli as run
from tests._helpers import saved_model_accuracy

REPORT_KEYS = {"config", "metric_name", "test_metric", "default_test_metric", "trials", "seconds"}


def cli(*args):
    """Run the CLI in a fresh process, as a user does."""
    return subprocess.run(
        [sys.executable, "-m", "hporl.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_spaces_and_tasks(capsys):
    code, out, _ = run("spaces", capsys=capsys)
    assert code == 0 and "optimizer" in out and "lcbench" in out and "autoaugment" in out
    assert "warmup_fraction" not in out and len(out.splitlines()) < 15  # names, not tables
    code, out, _ = run("spaces", "optimizer", capsys=capsys)
    assert code == 0 and "warmup_fraction" in out and "lcbench" not in out
    code, out, _ = run("--version", capsys=capsys)
    assert code == 0 and out.strip() == f"hporl {hporl.__version__}"
    code, out, _ = run("tasks", capsys=capsys)
    assert code == 0 and "digits_image" in out and "synth_clf_N" in out


def test_meta_train_then_tune_a_csv(tmp_path, csv_file, capsys):
    exp = tmp_path / "exp.yaml"
    exp.write_text(
        "name: cli\ntasks: [iris]\nbackend: {epochs: 1}\nbudget: 2\n"
        "agent: {total_timesteps: 64, net_arch: [16], params: {n_steps: 32, batch_size: 16}}\n"
    )
    code, _, err = run("meta-train", exp, "--out", tmp_path / "run", capsys=capsys)
    assert code == 0, err
    assert (tmp_path / "run" / "policy" / "policy.json").exists()
    code, _out, err = run(
        "tune",
        "--policy",
        tmp_path / "run",
        "--data",
        csv_file,
        "--target",
        "y",
        "--trials",
        "2",
        "--epochs",
        "2",
        "--out",
        tmp_path / "tuned",
        capsys=capsys,
    )
    assert code == 0, err
    report = json.loads((tmp_path / "tuned" / "report.json").read_text())
    assert set(report) >= REPORT_KEYS and len(report["trials"]) == 2
    code, _, _ = run("meta-train", exp, "--out", tmp_path / "run", "--resume", capsys=capsys)
    assert code == 0


@pytest.mark.slow
def test_demo_runs(tmp_path):
    proc = cli("demo", "--timesteps", "64", "--trials", "2", "--epochs", "1", "--out", tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "hporl policy" in proc.stdout and "random search" in proc.stdout
    assert "packaged default policy" in proc.stdout and "shipped" in proc.stdout
    assert "meta-training" in proc.stdout
    packaged = json.loads((tmp_path / "tuned-packaged" / "report.json").read_text())
    assert len(packaged["trials"]) == 2
    report = json.loads((tmp_path / "tuned" / "report.json").read_text())
    config = report["config"]
    assert len(report["trials"]) == 2 and report["task"] == "digits"
    assert Policy.load(tmp_path / "meta-train").space.validate(config) == config
    # the saved model of the held-out task scores what the report and the table say
    task = builtin("digits", epochs=1)
    assert report["test_metric"] == pytest.approx(
        saved_model_accuracy(tmp_path / "tuned", task, config)
    )
    assert f"{report['test_metric']:.4f}" in proc.stdout
    assert 0.0 <= report["default_test_metric"] <= 1.0


@pytest.mark.slow
def test_user_errors_are_one_line_and_exit_2(tmp_path, csv_file):
    exp = tmp_path / "bad.yaml"
    exp.write_text("tasks: [iris]\nbugdet: 3\n")
    good = tmp_path / "good.yaml"
    good.write_text("tasks: [iris]\n")
    cases = [
        (["spaces", "optimiser"], "hporl: error: unknown built-in search space 'optimiser'"),
        (["meta-train", exp], f"hporl: error: {exp}: unknown key 'bugdet'. Did you mean 'budget'?"),
        (["meta-train", tmp_path / "absent.yaml"], "hporl: error: cannot read experiment file"),
        (["meta-train", good, "--wait", "never"], "hporl: error: options: agent.wait: "),
        (["tune", "--policy", tmp_path, "--data", csv_file, "--target", "y"], "hporl: error: "),
        (["tune", "--policy", tmp_path, "--data", csv_file, "--target", "z"], "hporl: error: "),
        (
            ["demo", "--held-out", "iris"],
            "hporl: error: --held-out 'iris' is one of the meta-training tasks",
        ),
    ]
    for args, message in cases:
        proc = cli(*args)
        assert proc.returncode == 2, (args, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(message), (args, proc.stderr)
        assert "Traceback" not in proc.stderr
    proc = cli("tune", "--data", csv_file)  # a usage error from the parser
    assert proc.returncode == 2 and "Missing option" in proc.stderr


def test_tune_says_the_task_type_and_takes_another(tmp_path, capsys):
    """An integer target with 40 values reads as 40 classes, and the run says why;
    --task-type regression makes it a regression scored by R²."""
    import numpy as np

    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 3))
    y = rng.integers(0, 40, size=200)
    csv = tmp_path / "counts.csv"
    csv.write_text(
        "a,b,c,y\n" + "\n".join(f"{r[0]},{r[1]},{r[2]},{t}" for r, t in zip(X, y, strict=True))
    )
    args = ("tune", "--data", csv, "--target", "y", "--trials", "1", "--epochs", "1")
    code, out, _ = run(*args, "--out", tmp_path / "a", capsys=capsys)
    assert code in (0, None) and "task: classification (inferred from the target" in out
    code, out, _ = run(*args, "--out", tmp_path / "b", "--task-type", "regression", capsys=capsys)
    assert code in (0, None) and "task: regression (given)" in out
    assert json.loads((tmp_path / "b" / "report.json").read_text())["metric_name"] == "r2"
    code, _, err = run(*args, "--task-type", "regr", capsys=capsys)
    assert code == 2 and "--task-type 'regr': choose one of classification, regression" in err


@pytest.mark.slow
def test_sigterm_ends_a_tune_run_cleanly(tmp_path):
    """SIGTERM (a scheduler's stop) ends `hporl tune` as Ctrl-C does: one "aborted" line, exit
    130, and no trial left RUNNING in the store."""
    import signal
    import subprocess
    import sys
    import time

    import optuna
    from optuna.trial import TrialState
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    data = tmp_path / "digits.csv"
    header = ",".join(f"p{i}" for i in range(X.shape[1])) + ",label"
    data.write_text(
        header + "\n" + "\n".join(",".join(map(str, [*r, t])) for r, t in zip(X, y, strict=True))
    )
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "hporl.cli", "tune", "--data", str(data), "--target", "label",
         "--trials", "50", "--epochs", "40", "--out", str(out)],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not (out / "trials.db").exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    time.sleep(4)  # inside a trial
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, (proc.returncode, err[-3000:])
    assert err.strip().splitlines()[-1] == "hporl: aborted"
    assert "Traceback" not in err
    url = f"sqlite:///{out / 'trials.db'}"
    states = [
        t.state
        for name in optuna.get_all_study_names(url)
        for t in optuna.load_study(study_name=name, storage=url).trials
    ]
    assert TrialState.RUNNING not in states
