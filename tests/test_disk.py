"""A run directory without write permission, and a disk that fills up mid-run: a typed error,
and nothing stored before is lost. Needs root (tmpfs mounts); CI runs as root."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import optuna
import pytest

from hporl import StoreError, TrialStore, TuneOptions, tune_model
from hporl.store import storage_url
from hporl.tasks import builtin

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")


@pytest.fixture
def mount(tmp_path):
    mounted = []

    def make(name: str, options: str) -> Path:
        path = tmp_path / name
        path.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], check=True)
        mounted.append(path)
        return path

    yield make
    for path in mounted:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _read_only_view(src: Path, dst: Path) -> Path:
    """``dst``: a read-only bind mount of ``src`` (the same files, not writable)."""
    dst.mkdir()
    subprocess.run(["mount", "--bind", str(src), str(dst)], check=True)
    subprocess.run(["mount", "-o", "remount,bind,ro", str(dst)], check=True)
    return dst


def test_read_only_run_directory(tiny_policy, mount):
    policy, _ = tiny_policy
    disk = mount("ro", "size=4m")
    task = builtin("iris", epochs=1)
    tune_model(
        data=task,
        policy=policy,
        n_trials=2,
        out=disk / "run",
        options=TuneOptions(compare_default=False),
    )
    before = {p.name: p.read_bytes() for p in (disk / "run").iterdir() if p.is_file()}
    view = _read_only_view(disk, disk.parent / "view")
    try:
        with pytest.raises(StoreError, match=r"output directory '.*/view/run' is not writable"):
            tune_model(data=task, policy=policy, n_trials=3, out=view / "run")
        with pytest.raises(
            StoreError, match=r"cannot create output directory .*: Read-only file system"
        ):
            tune_model(data=task, policy=policy, n_trials=3, out=view / "new")
        with pytest.raises(StoreError, match="cannot create the directory for the trial store"):
            TrialStore(view / "new" / "trials.db")
        with pytest.raises(StoreError, match="is not readable and writable"):
            TrialStore(view / "run" / "trials.db")
    finally:
        subprocess.run(["umount", "-l", str(view)], check=False)
    assert {p.name: p.read_bytes() for p in (disk / "run").iterdir() if p.is_file()} == before


@pytest.mark.slow
def test_disk_full_in_the_middle_of_a_run(tiny_policy, mount):
    policy, _ = tiny_policy
    disk = mount("full", "size=4m")
    task = builtin("iris", epochs=1)
    out = disk / "run"
    tune_model(
        data=task, policy=policy, n_trials=2, out=out, options=TuneOptions(compare_default=False)
    )
    report = (out / "report.json").read_bytes()
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        with pytest.raises(OSError, match="No space left"):
            while True:
                os.write(fd, b"\0" * 65536)
    finally:
        os.close(fd)
    with pytest.raises(StoreError, match=r"No space left on device|disk is full"):
        tune_model(
            data=task,
            policy=policy,
            n_trials=6,
            out=out,
            options=TuneOptions(compare_default=False),
        )
    assert (out / "report.json").read_bytes() == report  # the good file was not replaced
    filler.unlink()
    result = tune_model(
        data=task, policy=policy, n_trials=6, out=out, options=TuneOptions(compare_default=False)
    )
    assert len(result.trials) == 6 and sum(t["resumed"] for t in result.trials) >= 2
    study_name = optuna.get_all_study_names(storage_url(out / "trials.db", None))[0]
    study = optuna.load_study(study_name=study_name, storage=storage_url(out / "trials.db", None))
    assert len([t for t in study.trials if "hporl_result" in t.user_attrs]) == 6


def _fill(disk: Path, leave_kb: int) -> None:
    """Fill ``disk`` up to ``leave_kb`` KiB free."""
    (disk / "filler").unlink(missing_ok=True)
    free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
    with open(disk / "filler", "wb") as f:
        f.write(b"\0" * max(free - leave_kb * 1024, 0))


@pytest.mark.slow
def test_a_disk_that_fills_at_any_point_of_a_cli_run_is_one_line(mount, tmp_path, capsys):
    """Wherever the disk runs out (the trial store, a checkpoint, the policy's weights, the saved
    model, its ONNX copy), the command ends with one "hporl: error: ... No space left" or "disk
    is full" line and exit 2: no traceback. Free space is swept so that each part is hit."""
    from sklearn.datasets import load_digits

    from hporl.cli import main

    X, y = load_digits(return_X_y=True)
    data = tmp_path / "digits.csv"
    header = ",".join(f"p{i}" for i in range(X.shape[1])) + ",label"
    rows = (",".join(map(str, [*r, t])) for r, t in zip(X, y, strict=True))
    data.write_text(header + "\n" + "\n".join(rows))
    experiment = tmp_path / "tiny.yaml"
    experiment.write_text(
        "name: tiny\ntasks: [iris, wine]\nbackend: {epochs: 1}\nbudget: 2\n"
        "agent: {total_timesteps: 128, net_arch: [16], params: {n_steps: 64, batch_size: 32}}\n"
    )
    disk = mount("full", "size=4m")
    commands = {
        "meta-train": ["meta-train", experiment, "--out"],
        "tune": ["tune", "--data", data, "--target", "label", "--trials", "3", "--epochs", "1", "--out"],
    }  # fmt: skip
    errors = set()
    for name, args in commands.items():
        for i, leave in enumerate((200, 400, 600, 800, 1000, 1200)):
            _fill(disk, leave)
            try:
                main([str(a) for a in [*args, disk / f"{name}{i}"]])
                code = 0
            except SystemExit as exited:
                code = exited.code
            err = capsys.readouterr().err
            assert "Traceback" not in err, err
            if code != 0:
                assert code == 2, err
                (line,) = err.strip().splitlines()
                assert line.startswith("hporl: error: "), err
                assert "No space left" in line or "disk is full" in line, err
                errors.add(line.split(":")[2])  # what could not be written
            subprocess.run(["rm", "-rf", str(disk / f"{name}{i}")], check=True)
    assert len(errors) >= 3, errors  # several parts were hit, not only the first


@pytest.mark.parametrize("leave_kb", [0, 16, 64, 200, 380])
def test_weights_that_do_not_fit_are_a_store_error_wherever_the_disk_runs_out(mount, leave_kb):
    """torch's own file writer reports a disk that fills in the middle of a file as an internal
    assertion ("unexpected pos ..."); every weights file hporl writes fails as StoreError instead,
    and the good file already there stays."""
    import torch

    from hporl._io import save_tensors, save_torch

    disk = mount("weights", "size=1m")
    state = {"w": torch.arange(100_000, dtype=torch.float32)}  # 400 KB
    save_torch(disk / "model.pt", {"w": torch.zeros(4)})
    save_tensors(disk / "model.safetensors", {"w": torch.zeros(4)})
    _fill(disk, leave_kb)
    for save, name in ((save_torch, "model.pt"), (save_tensors, "model.safetensors")):
        with pytest.raises(StoreError, match=rf"cannot write .*{name}: .*No space left"):
            save(disk / name, state)
    assert torch.load(disk / "model.pt", weights_only=True)["w"].tolist() == [0.0] * 4
    assert sorted(p.name for p in disk.iterdir()) == ["filler", "model.pt", "model.safetensors"]
