"""Every bad input and fault of the hardening issue, run through the installed ``hporl`` command
as a user would: exit code, whether stderr is one ``hporl: ...`` line, any traceback, and the
child's peak memory (from ``wait4``), all measured in this one run. Prints a table and the
totals.

    python benchmarks/bad_input_survey.py [--only SUBSTRING]

Needs the packaged default policy; the full-disk cases need root (a 4 MiB tmpfs) and are left
out otherwise. Ctrl-C, kill -9 and two processes on one ``--out`` are timing cases: they are
tested in tests/test_cli.py and tests/test_store.py, not here.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from hporl import _policy_files
from hporl._io import write_checked_json

HPORL = str(Path(sys.executable).with_name("hporl"))
EXPERIMENT = (
    "name: tiny\ntasks: [iris, wine]\nbackend: {epochs: 1}\nbudget: 2\n"
    "agent: {total_timesteps: 128, net_arch: [16], params: {n_steps: 64, batch_size: 32}}\n"
)


@dataclass
class Case:
    name: str
    args: Callable[[Path], list[str]]  # the command line, given the case's own folder
    expect: int = 2  # the exit code a correct hporl gives


def _alias_bomb(levels: int, where: str = "agent") -> str:
    lines = ["a0: &a0 [1, 2, 3, 4, 5, 6, 7, 8, 9]"]
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    if where == "tasks":
        return "name: bomb\ntasks:\n" + "".join(f"  - {x}\n" for x in lines)
    return "name: bomb\ntasks: [iris]\nagent:\n  params:\n" + "".join(f"    {x}\n" for x in lines)


def _write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def _table(rows: int = 150, *, sep: str = ",", decimal: str = ".", target=None) -> str:
    import numpy as np

    rng = np.random.default_rng(0)
    X = rng.normal(size=(rows, 4))
    y = (X[:, 0] + X[:, 1] > 0).astype(int) if target is None else target(X)
    lines = [sep.join(["a", "b", "c", "d", "y"])]
    for r, t in zip(X, y, strict=True):
        lines.append(sep.join([f"{v:.4f}".replace(".", decimal) for v in r] + [str(t)]))
    return "\n".join(lines) + "\n"


def _policy(d: Path, change: Callable[[dict], None]) -> Path:
    """The packaged policy with ``change`` made to its JSON and the checksum redone, as anyone
    can."""
    dst = d / "policy"
    shutil.copytree(_policy_files.default_policy_dir(), dst)
    meta = json.loads((dst / "policy.json").read_text())
    change(meta)
    meta.pop("meta_sha256", None)
    write_checked_json(dst / "policy.json", meta)
    return dst


def _rename(meta: dict) -> None:
    params = meta["space"]["parameters"]
    params["lrx"] = params.pop("lr")


def _tune(d: Path, *extra: str, data: str | None = None) -> list[str]:
    csv = data or str(_write(d / "data.csv", _table()))
    return ["tune", "--data", csv, "--target", "y", "--trials", "2", "--epochs", "2", "--out", str(d / "out"), *extra]  # fmt: skip


def _meta(d: Path, text: str, *extra: str) -> list[str]:
    return ["meta-train", str(_write(d / "experiment.yaml", text)), "--out", str(d / "run"), *extra]


def _read_only(d: Path) -> Path:
    """A folder this process cannot write into (root ignores modes: a read-only tmpfs then)."""
    out = d / "ro"
    out.mkdir()
    out.chmod(0o555)
    if os.geteuid() == 0:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(out)], check=True)
        _MOUNTS.append(out)
    return out


_MOUNTS: list[Path] = []


CASES = [
    # 1. YAML bounds
    Case("yaml alias bomb under agent.params (558 B)", lambda d: _meta(d, _alias_bomb(8))),
    Case("yaml alias bomb under tasks", lambda d: _meta(d, _alias_bomb(8, "tasks"))),
    Case("yaml 50 MB of integers", lambda d: _meta(d, "x: [" + ", ".join(["1"] * 17_000_000) + "]\n")),
    Case("yaml n_bins 10^12", lambda d: _meta(d, EXPERIMENT + "n_bins: 1000000000000\n")),
    Case("yaml history 10^12", lambda d: _meta(d, EXPERIMENT + "history: 1000000000000\n")),
    Case("yaml net_arch width 10^12", lambda d: _meta(d, EXPERIMENT.replace("[16]", "[1000000000000]"))),
    # 2. policy directories, checksums redone
    Case("policy n_bins 10^12", lambda d: _tune(d, "--policy", str(_policy(d, lambda m: m["layout"].update(n_bins=10**12))))),
    Case("policy history 10^12", lambda d: _tune(d, "--policy", str(_policy(d, lambda m: m["layout"].update(history=10**12))))),
    Case("policy n_features 10^12", lambda d: _tune(d, "--policy", str(_policy(d, lambda m: m["layout"].update(n_features=10**12))))),
    Case("policy net_arch 10^12", lambda d: _tune(d, "--policy", str(_policy(d, lambda m: m["policy_kwargs"].update(net_arch=[10**12]))))),
    Case("policy negative budget", lambda d: _tune(d, "--policy", str(_policy(d, lambda m: m["layout"].update(budget=-3))))),
    Case("policy lr range up to 1e6", lambda d: _tune(d, "--policy", str(_policy(d, lambda m: m["space"]["parameters"]["lr"].update(high=1e6))))),
    Case("policy parameter renamed", lambda d: _tune(d, "--policy", str(_policy(d, _rename)))),
    # 4. data that would silently change meaning
    Case("decimal commas, ';'-separated (read right)", lambda d: _tune(d, data=str(_write(d / "c.csv", _table(sep=";", decimal=",")))), expect=0),
    Case("regression target around 1e300", lambda d: _tune(d, "--task-type", "regression", data=str(_write(d / "r.csv", _table(target=lambda X: [f"{1e300 * (1 + v):.6e}" for v in X[:, 0]]))))),
    Case("constant regression target", lambda d: _tune(d, "--task-type", "regression", data=str(_write(d / "k.csv", _table(target=lambda X: [5.0] * len(X)))))),
    Case("duplicate column names", lambda d: _tune(d, data=str(_write(d / "dup.csv", _table().replace("a,b,c", "a,a,c", 1))))),
    Case("backend device cuda:7 on a CPU build", lambda d: _meta(d, EXPERIMENT.replace("backend: {epochs: 1}", "backend: {epochs: 1, device: 'cuda:7'}"))),
    Case("--epochs 0", lambda d: [*_tune(d)[:-4], "--epochs", "0", "--out", str(d / "out")]),
    # 5. one line where a traceback was
    Case("read-only --out", lambda d: [*_tune(d)[:-2], "--out", str(_read_only(d) / "out")]),
    Case("--seed -1", lambda d: _tune(d, "--seed", "-1")),
    Case("--seed 2^32", lambda d: _tune(d, "--seed", str(2**32))),
    Case("--storage is a directory", lambda d: _tune(d, "--storage", str(d))),
    Case("learning_rate: .inf", lambda d: _meta(d, EXPERIMENT.replace("agent: {", "agent: {learning_rate: .inf, "))),
    Case("params: {n_steps: 0}", lambda d: _meta(d, EXPERIMENT.replace("n_steps: 64", "n_steps: 0"))),
    Case("junk device string", lambda d: _meta(d, EXPERIMENT.replace("backend: {epochs: 1}", "backend: {epochs: 1, device: 'gpu please'}"))),
    Case("--data /dev/zero", lambda d: _tune(d, data="/dev/zero")),
]  # fmt: skip


@contextlib.contextmanager
def _full_disk() -> Iterator[Path | None]:
    if os.geteuid() != 0:
        yield None
        return
    path = Path(tempfile.mkdtemp(prefix="hporl-full-"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)
        shutil.rmtree(path, ignore_errors=True)


def _fill(disk: Path, leave_kb: int) -> None:
    (disk / "filler").unlink(missing_ok=True)
    st = os.statvfs(disk)
    with open(disk / "filler", "wb") as f:
        f.write(b"\0" * max(st.f_bavail * st.f_frsize - leave_kb * 1024, 0))


def _on_full_disk(disk: Path, leave_kb: int, command: str) -> Callable[[Path], list[str]]:
    """A case whose command writes its output to ``disk``, filled to ``leave_kb`` KiB free
    first; either outcome is right (it fits, or one line and exit 2)."""

    def args(d: Path) -> list[str]:
        _fill(disk, leave_kb)
        line = _meta(d, EXPERIMENT) if command == "meta-train" else _tune(d)
        return [*line[:-1], str(disk / f"{command}{leave_kb}")]

    return args


def run(args: list[str], cwd: Path) -> tuple[int, str, float, float]:
    """Exit code, stderr, peak RSS (MiB) and wall seconds of ``hporl args``."""
    start = time.perf_counter()
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(
            [HPORL, *args],
            stdout=subprocess.DEVNULL,
            stderr=err,
            cwd=cwd,
            env={**os.environ, "HOME": str(cwd)},
        )
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        text = err.read().decode(errors="replace")
    return proc.returncode, text, usage.ru_maxrss / 1024, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="run the cases whose name holds this")
    args = parser.parse_args()
    signal.signal(signal.SIGINT, signal.default_int_handler)
    rows = []
    with tempfile.TemporaryDirectory() as tmp, _full_disk() as disk:
        cases = list(CASES)
        if disk is not None:
            for leave in (200, 500, 800, 1200):
                for command in ("meta-train", "tune"):
                    name = f"full disk, {leave} KiB left, {command}"
                    cases.append(Case(name, _on_full_disk(disk, leave, command), expect=-1))
        cases = [c for c in cases if args.only in c.name]
        for i, case in enumerate(cases):
            folder = Path(tmp) / f"case{i}"
            folder.mkdir()
            code, err, rss, wall = run(case.args(folder), folder)
            lines = err.strip().splitlines()
            # an error is one "hporl: ..." line; a run that succeeds may warn (decimal commas)
            clean = code == 0 or (len(lines) == 1 and lines[0].startswith("hporl: "))
            good = clean and (code == case.expect or (case.expect == -1 and code in (0, 2)))
            rows.append((case.name, code, clean, "Traceback" in err, rss, wall, good, lines))
        for path in _MOUNTS:
            subprocess.run(["umount", "-l", str(path)], check=False)
    print(f"{'case':<48} {'exit':>4} {'1 line':>6} {'tb':>3} {'peak MiB':>8} {'s':>5}  first line")
    for name, code, clean, tb, rss, wall, good, lines in rows:
        first = (lines[-1] if lines else "")[:90]
        flag = "" if good else "  <-- NOT AS EXPECTED"
        print(
            f"{name:<48} {code:>4} {clean!s:>6} {tb!s:>3} {rss:>8.0f} {wall:>5.1f}  {first}{flag}"
        )
    good = sum(r[6] for r in rows)
    print(f"\n{len(rows)} bad inputs and faults tried: {good} as expected, {len(rows) - good} not")


if __name__ == "__main__":
    main()
