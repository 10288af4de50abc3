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
