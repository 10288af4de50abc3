"""Ray executor: speed-up of ``tune_model`` with 2 parallel trials vs 1, and Ray's per-trial
overhead with an instant backend; all measured in one run.

Ray is started inside a network namespace of this script's own that has only a loopback
interface (created and deleted here; needs root and iproute2), so nothing listens on another
address of this machine. Prints:

- ``tune_model`` wall time on Ray with 1 and 2 workers (``RayExecutor(P)``) (same trial budget; the
  policy proposes different configurations once its history differs, so the training seconds
  inside trials are printed too, and the throughput ratio: training seconds per wall second),
  and where the difference goes: Ray start-up, shipping the task, scheduling;
- meta-training with 1 and 2 envs whose trainings fan out to Ray workers
  (:class:`hporl.vec_env.FanOutVecEnv`), on the ``optimizer`` and ``lcbench`` spaces: env
  steps/s, distinct trainings/s and training seconds per wall second;
- per-trial overhead (ms) of a Ray task against an in-process call, for a backend that
  answers at once.

    python benchmarks/ray_speedup.py [--trials 8] [--epochs 12] [--parts tune,envs,overhead]
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
from typing import Any

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


def meta_training(tmp: Path) -> None:
    """Meta-training with 1 and 2 envs whose trainings run on Ray workers (FanOutVecEnv), on a
    space with conditional parameters (optimizer) and one without (lcbench, its funnel MLP):
    env steps/s, distinct trainings/s, and training seconds per wall second."""
    import json

    from sb3_contrib import MaskablePPO

    from hporl import run_experiment

    # The agent's learning loop, timed apart from Ray's start-up and the run's set-up.
    learned: list[float] = []
    learn = MaskablePPO.learn

    def timed_learn(self: Any, *args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return learn(self, *args, **kwargs)
        finally:
            learned.append(time.perf_counter() - t0)

    MaskablePPO.learn = timed_learn
    steps = 960
    for space_name, model in (("optimizer", None), ("lcbench", "lcbench_mlp")):
        rates: dict[tuple[int, int, str], tuple[float, float, float]] = {}
        for n, workers, wait in ((1, 1, "round"), (2, 2, "round"), (2, 2, "own"), (4, 2, "own")):
            out = tmp / f"envs-{space_name}-{n}-{workers}-{wait}"
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
                        "n_workers": workers,
                        "wait": wait,
                        "executor": "ray",
                        "net_arch": [32],
                        "params": {"n_steps": 240 // n, "batch_size": 60},
                    },
                },
                out=out,
            )
            wall = time.perf_counter() - t0
            summary = json.loads((out / "summary.json").read_text())
            busy = training_seconds(out)
            learning = learned.pop()
            key = (n, workers, wait)
            rates[key] = (steps / learning, summary["trained"] / learning, busy / learning)
            print(
                f"meta-training ({space_name} space), {n} env(s) on {workers} Ray worker(s), "
                f"wait={wait}: "
                f"{wall:.1f} s in all, {learning:.1f} s learning (after Ray start-up and "
                f"set-up): {rates[key][0]:.1f} env steps/s, {summary['trained']} "
                f"trainings ({rates[key][1]:.2f}/s, {summary.get('shared', 0)} shared "
                f"between envs, {summary.get('waits', 0)} forced waiting steps), "
                f"{busy / summary['trained']:.3f} s per training, "
                f"{rates[key][2]:.2f} training seconds per wall second"
            )
        for key in list(rates)[1:]:
            a, b = rates[key], rates[1, 1, "round"]
            print(
                f"meta-training ({space_name} space), {key[0]} envs on {key[1]} workers, "
                f"wait={key[2]} vs 1 on 1: env "
                f"steps/s {a[0] / b[0]:.2f}x, trainings/s {a[1] / b[1]:.2f}x, training seconds "
                f"per wall second {a[2] / b[2]:.2f}x"
            )


def same_configurations(trials: int = 12, epochs: int = 120) -> None:
    """FanOutVecEnv without an agent: each env chooses at random from its own seed, so env i
    plays the same configurations alone or beside others. Two envs' configurations, played
    one env after the other on 1 worker, against both envs at once on 2 workers, waiting for
    the round or for their own trainings (workers warmed before the clock starts; Ray or a
    local process pool)."""
    import concurrent.futures as cf

    import numpy as np

    from hporl import Evaluator, HPOEnv, SearchSpace, TorchBackend
    from hporl.tasks import builtin
    from hporl.vec_env import FanOutVecEnv

    space = SearchSpace.builtin("optimizer")
    tasks = [builtin(name, epochs=epochs) for name in ("digits", "wine", "breast_cancer")]
    backend = TorchBackend(num_threads=1)

    def play(seeds: list[int], executor: str, wait: str = "round") -> tuple[float, float, float]:
        """Wall seconds until each env has had ``trials`` trials, their training seconds,
        and (waiting for rounds) the sum of each round's slowest training."""
        evaluator = Evaluator(backend, executor=executor, n_workers=len(seeds))
        fan = FanOutVecEnv(
            [lambda: HPOEnv(space, evaluator, tasks, budget=3) for _ in seeds], wait=wait
        )
        rngs = [np.random.default_rng(s) for s in seeds]
        try:
            for env, seed in zip(fan.hpo, seeds, strict=True):
                env.reset(seed=seed)
            warm = [evaluator.executor.submit(space.default(), task=tasks[0]) for _ in seeds]
            cf.wait(warm)  # each worker imports torch on its first training
            counts, busy, slowest = [0] * len(seeds), 0.0, 0.0
            t0 = time.perf_counter()
            while min(counts) < trials:
                actions = []
                for env, rng in zip(fan.hpo, rngs, strict=True):
                    mask = env.action_masks()
                    actions.append(0 if env.waiting else int(rng.choice(np.flatnonzero(mask))))
                fan.step_async(np.array(actions))
                _, _, _, infos = fan.step_wait()
                times = [info["result"].wall_time for info in infos if "config" in info]
                if len(times) == len(seeds):
                    slowest += max(times)
                for i, info in enumerate(infos):
                    if "config" in info and counts[i] < trials:
                        counts[i] += 1
                        busy += info["result"].wall_time
            return time.perf_counter() - t0, busy, slowest
        finally:
            fan.close()

    for executor in ("ray", "local"):
        alone = [play([seed], executor) for seed in (0, 1)]
        wall1, busy1 = sum(a[0] for a in alone), sum(a[1] for a in alone)
        for wait in ("round", "own"):
            wall2, busy2, slowest = play([0, 1], executor, wait)
            bound = f", of which the rounds' slowest {slowest:.1f} s" if wait == "round" else ""
            print(
                f"the same {2 * trials} configurations of 2 envs ({epochs} epochs, {executor}, "
                f"wait={wait}): {wall1:.1f} s one env after the other on 1 worker, "
                f"{wall2:.1f} s together on 2 workers ({wall1 / wall2:.2f}x); training "
                f"seconds {busy1:.1f} alone, {busy2:.1f} together{bound}"
            )


def training_seconds(run_dir: Path) -> float:
    """Seconds of training in the trials a run stored."""
    import optuna

    from hporl.store import storage_url

    url = storage_url(run_dir / "trials.db", None)
    return sum(
        t.user_attrs.get("wall_time", 0.0)
        for name in optuna.get_all_study_names(url)
        for t in optuna.load_study(study_name=name, storage=url).trials
    )


def measure(trials: int, epochs: int, parts: set[str]) -> None:
    import optuna
    import torch

    from hporl import SearchSpace
    from hporl.tasks import builtin

    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = SearchSpace.builtin("optimizer")
    tmp = Path(tempfile.mkdtemp(prefix="hrp-"))
    task = builtin("digits", epochs=epochs)
    if "tune" in parts:
        tune_speedup(space, task, trials, tmp)
    if "envs" in parts:
        same_configurations()
        meta_training(tmp)
    if "overhead" in parts:
        overhead(space, task)
    shutil.rmtree(tmp, ignore_errors=True)


def tune_speedup(space: Any, task: Any, trials: int, tmp: Path) -> None:
    """tune_model with 2 parallel trials on Ray vs 1, and where the difference goes."""
    import concurrent.futures as cf

    import ray

    from hporl import TorchBackend, TuneOptions, tune_model
    from hporl.executors import RayExecutor
    from store_overhead import tiny_policy

    policy = tiny_policy(space, tmp / "policy")
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
            executor=RayExecutor(p),
            options=TuneOptions(compare_default=False),
        )
        walls[p] = time.perf_counter() - t0
        if p == 1:
            first = res
        trial_seconds = sum(t["seconds"] for t in res.trials)
        busy[p] = trial_seconds
        final = res.final_result.wall_time if res.final_result else 0.0
        print(
            f"{p} parallel: {walls[p]:.1f} s wall for {trials} trials "
            f"({trial_seconds:.1f} s of training in trials, final training {final:.1f} s)"
        )
    t0 = time.perf_counter()
    res = tune_model(
        data=task, policy=policy, n_trials=trials, options=TuneOptions(compare_default=False)
    )
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


def overhead(space: Any, task: Any) -> None:
    """Per-trial overhead of a Ray task against an in-process call, instant backend."""
    import concurrent.futures as cf

    import numpy as np

    from hporl.executors import LocalExecutor, RayExecutor
    from store_overhead import InstantBackend

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument(
        "--parts",
        default="tune,envs,overhead",
        help="what to measure, comma-separated: tune, envs, overhead (default: all)",
    )
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    if unknown := parts - {"tune", "envs", "overhead"}:
        parser.error(f"unknown parts: {', '.join(sorted(unknown))}")
    if args.inside:
        sys.path.insert(0, str(ROOT / "benchmarks"))
        measure(args.trials, args.epochs, parts)
        return
    if os.geteuid() != 0 or shutil.which("ip") is None:
        sys.exit("needs root and iproute2: Ray runs in a network namespace of its own")
    forwarded = ["--trials", str(args.trials), "--epochs", str(args.epochs), "--parts", args.parts]
    sys.exit(in_namespace(forwarded))


if __name__ == "__main__":
    main()
