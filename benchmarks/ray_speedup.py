"""Ray executor: speed-up of ``tune_model`` with 2 parallel trials vs 1, and Ray's per-trial
overhead with an instant backend; all measured in one run.

Ray is started inside a network namespace of this script's own that has only a loopback
interface (created and deleted here; needs root and iproute2), so nothing listens on another
address of this machine. Prints:

- ``tune_model`` wall time on Ray with ``n_parallel=1`` and ``2`` (same trial budget; the
  policy proposes different configurations once its history differs, so the training seconds
  inside trials are printed too, and the throughput ratio: training seconds per wall second),
  and where the difference goes: Ray start-up, shipping the task, scheduling;
- per-trial overhead (ms) of a Ray task against an in-process call, for a backend that
  answers at once.

    python benchmarks/ray_speedup.py [--trials 8] [--epochs 12]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def in_namespace(args: list[str]) -> int:
    name = f"hporl-bench-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    tmp = tempfile.mkdtemp(prefix="hrb-", dir="/tmp")
    try:
        subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"], check=True)
        env = {**os.environ, "TMPDIR": tmp, "RAY_USAGE_STATS_ENABLED": "0"}
        cmd = ["ip", "netns", "exec", name, sys.executable, __file__, "--inside", *args]
        return subprocess.run(cmd, env=env, check=False).returncode
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)
        shutil.rmtree(tmp, ignore_errors=True)


def measure(trials: int, epochs: int) -> None:
    import concurrent.futures as cf

    import numpy as np
    import optuna
    import ray
    import torch

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from hporl import SearchSpace, TorchBackend, tune_model
    from hporl.executors import LocalExecutor, RayExecutor
    from hporl.tasks import builtin
    from store_overhead import InstantBackend, tiny_policy

    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = SearchSpace.builtin("optimizer")
    tmp = Path(tempfile.mkdtemp(prefix="hrp-"))
    policy = tiny_policy(space, tmp / "policy")
    task = builtin("digits", epochs=epochs)

    # Ray's fixed costs, measured on their own.
    t0 = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    startup = time.perf_counter() - t0
    t0 = time.perf_counter()
    ref = ray.put(task)
    put = time.perf_counter() - t0
    del ref
    ray.shutdown()

    walls: dict[int, float] = {}
    busy: dict[int, float] = {}
    for p in (1, 2):
        t0 = time.perf_counter()
        res = tune_model(
            data=task,
            policy=policy,
            n_trials=trials,
            n_parallel=p,
            executor="ray",
            compare_default=False,
        )
        walls[p] = time.perf_counter() - t0
        if p == 1:
            first = res
        trial_seconds = sum(t["seconds"] for t in res.trials)
        busy[p] = trial_seconds
        final = res.final_result.wall_time if res.final_result else 0.0
        print(
            f"n_parallel={p}: {walls[p]:.1f} s wall for {trials} trials "
            f"({trial_seconds:.1f} s of training in trials, final training {final:.1f} s)"
        )
    t0 = time.perf_counter()
    res = tune_model(data=task, policy=policy, n_trials=trials, compare_default=False)
    local = time.perf_counter() - t0
    print(f"local, in process: {local:.1f} s wall")
    print(f"speed-up of 2 parallel trials on Ray vs 1: {walls[1] / walls[2]:.2f}x (ideal 2x)")
    print(
        "throughput (training seconds per wall second): "
        f"{busy[1] / walls[1]:.2f} with 1, {busy[2] / walls[2]:.2f} with 2 "
        f"(ratio {busy[2] / walls[2] / (busy[1] / walls[1]):.2f}x)"
    )
    print(f"Ray start-up {startup:.2f} s, ray.put of the task {put * 1e3:.1f} ms")

    # The same configurations (those of the first run) through 1 and 2 Ray workers, each
    # executor started (Ray up, task shipped, workers warm) before the clock starts.
    same = [t["config"] for t in first.trials]
    fixed: dict[int, float] = {}
    for p in (1, 2):
        with RayExecutor(p) as ex:
            ex.start(TorchBackend(num_threads=1), task)
            cf.wait([ex.submit(c) for c in same[:p]])  # workers warm
            t0 = time.perf_counter()
            cf.wait([ex.submit(c) for c in same])
            fixed[p] = time.perf_counter() - t0
    print(
        f"the same {len(same)} configurations on warm Ray workers: {fixed[1]:.1f} s with 1, "
        f"{fixed[2]:.1f} s with 2 (speed-up {fixed[1] / fixed[2]:.2f}x)"
    )

    # Meta-training env steps per second with 1 and 2 environments as Ray actors, on a space
    # with conditional parameters (optimizer) and one without (lcbench, its funnel MLP).
    from hporl import run_experiment

    steps = 960
    for space_name, model in (("optimizer", None), ("lcbench", "lcbench_mlp")):
        rates = {}
        for n in (1, 2):
            t0 = time.perf_counter()
            run_experiment(
                {
                    "name": f"ray-envs-{space_name}-{n}",
                    "tasks": ["digits", "wine", "breast_cancer"],
                    "space": space_name,
                    "model": model,
                    "backend": {"epochs": 40},
                    "budget": 3,
                    "agent": {
                        "total_timesteps": steps,
                        "n_envs": n,
                        "executor": "ray",
                        "net_arch": [32],
                        "params": {"n_steps": 240 // n, "batch_size": 60},
                    },
                },
                out=tmp / f"envs-{space_name}-{n}",
            )
            rates[n] = steps / (time.perf_counter() - t0)
        print(
            f"meta-training ({space_name} space), env steps/s with environments as Ray actors: "
            f"{rates[1]:.1f} with 1, {rates[2]:.1f} with 2 ({rates[2] / rates[1]:.2f}x)"
        )

    # Per-trial overhead with an instant backend.
    configs = [space.sample(np.random.default_rng(i)) for i in range(200)]
    inner = InstantBackend()
    local_ex = LocalExecutor(1)
    local_ex.start(inner, task)
    t0 = time.perf_counter()
    for c in configs:
        local_ex.submit(c).result()
    in_process = (time.perf_counter() - t0) / len(configs) * 1e3
    with RayExecutor(2) as ex:
        ex.start(inner, task)
        ex.submit(configs[0]).result()  # workers warm
        t0 = time.perf_counter()
        for c in configs:
            ex.submit(c).result()
        sequential = (time.perf_counter() - t0) / len(configs) * 1e3
        t0 = time.perf_counter()
        cf.wait([ex.submit(c) for c in configs])
        batched = (time.perf_counter() - t0) / len(configs) * 1e3
    print(
        f"per trial, instant backend: in process {in_process:.2f} ms, Ray one at a time "
        f"{sequential:.2f} ms, Ray 200 in flight {batched:.2f} ms"
    )
    shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inside:
        measure(args.trials, args.epochs)
        return
    if os.geteuid() != 0 or shutil.which("ip") is None:
        sys.exit("needs root and iproute2: Ray runs in a network namespace of its own")
    sys.exit(in_namespace(["--trials", str(args.trials), "--epochs", str(args.epochs)]))


if __name__ == "__main__":
    main()
