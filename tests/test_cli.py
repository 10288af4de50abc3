from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from hporl.cli import main


def run(*args, capsys):
    code = 0
    try:
        main(list(args))
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_spaces_and_tasks(capsys):
    code, out, _ = run("spaces", capsys=capsys)
    assert code == 0 and "optimizer" in out and "lcbench" in out and "warmup_fraction" in out
    code, out, _ = run("tasks", capsys=capsys)
    assert code == 0 and "digits_image" in out and "synth_clf_N" in out


def test_demo_trains_and_writes_checkpoint(capsys, tmp_path):
    code, out, _ = run(
        "demo", "--task", "iris", "--epochs", "2", "--out", str(tmp_path), capsys=capsys
    )
    assert code == 0 and "best val accuracy" in out
    torch.load(tmp_path / "model.pt", weights_only=True)
    assert json.loads((tmp_path / "config.json").read_text())["result"]["status"] == "ok"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["demo", "--task", "digitz"], "hporl: error: unknown built-in task 'digitz'"),
        (["spaces", "optimiser"], "hporl: error: unknown built-in search space 'optimiser'"),
    ],
)
def test_user_errors_are_one_line_and_exit_2(args, message):
    proc = subprocess.run(
        [sys.executable, "-m", "hporl.cli", *args], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), proc.stderr
    assert "Traceback" not in proc.stderr
