"""Build a base of real trials to fit a surrogate on (``hporl surrogate fit``).

    .venv/bin/python scripts/build_trial_base.py --storage runs/trial-base/trials.db \\
        --configs 256 --epochs 10 --max-minutes 30      # stops after 30 min; run it again to go on
    .venv/bin/python scripts/build_trial_base.py --quick --storage /tmp/base.db   # a smoke run

Real PyTorch training (``TorchBackend``, one thread per worker) of space-filling configurations
of the ``optimizer`` space (a scrambled Sobol design of the encoded space, decoded; each task its
own design) on the built-in training tasks: tabular data sets, generated ``synth_clf_N`` /
``synth_reg_N`` families, images (digits, shapes, gratings, glyphs with a CNN or a LeNet),
``mnist1d``, and model variants (linear, narrow, wide and deep MLPs). The ``heldout`` suite is
never trained here: a policy meta-trained through a surrogate of this base must not have seen
it. Work goes in rounds (configuration ``r`` of every task, then ``r + 1``), so a run cut short
leaves every task with about as many trials.

The store is the cache: every evaluation is recorded as it finishes, and a run started again
with the same arguments trains only what is missing (``store_hits`` in the summary). The summary
(trials, wall time, trials per task and status) is printed and written next to the store as
``trial_base_summary.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import optuna
import torch

from hporl.backends import TorchBackend
from hporl.evaluation import FIRST_COMPLETED, Evaluator
from hporl.space import SearchSpace
from hporl.store import TrialStore, storage_url
from hporl.tasks import Task, builtin, suites
from hporl.tasks import models as M

HELD_OUT = set(suites()["heldout"]) | set(suites()["heldout_hard"])


def base_tasks(epochs: int, quick: bool = False) -> list[Task]:
    """The training tasks of the base, ``epochs`` each; a model variant is ``<data>+<model>``."""

    def variant(name: str, model: Any, label: str) -> Task:
        task = builtin(name, model=model, epochs=epochs)
        task.name = f"{name}+{label}"
        return task

    if quick:
        return [builtin("iris", epochs=epochs), variant("wine", M.linear, "linear")]
    fixed = [
        *suites()["tabular"],  # iris, wine, breast_cancer, digits, diabetes (regression)
        "digits_linear",
        *suites()["images"],  # digits_image (SmallCNN), shapes, gratings, glyphs (LeNet)
        "mnist1d",
    ]
    tasks = [builtin(n, epochs=epochs) for n in fixed]
    tasks += [builtin(f"synth_clf_{i}", epochs=epochs) for i in range(24)]
    tasks += [builtin(f"synth_reg_{i}", epochs=epochs) for i in range(6)]
    tasks += [
        variant("breast_cancer", M.linear, "linear"),
        variant("wine", M.mlp((32,)), "mlp32"),
        variant("digits", M.mlp((256, 256, 128)), "mlp256x256x128"),
        variant("digits", M.mlp((64,), dropout=0.3), "mlp64-dropout"),
        variant("mnist1d", M.linear, "linear"),
        variant("mnist1d", M.mlp((256, 128, 64), dropout=0.1), "mlp256x128x64"),
        variant("diabetes", M.mlp((16,)), "mlp16"),
        variant("synth_clf_24", M.linear, "linear"),
        variant("synth_clf_25", M.mlp((16, 16)), "mlp16x16"),
        variant("synth_clf_26", M.mlp((512, 256)), "mlp512x256"),
        variant("synth_clf_27", M.mlp((256, 256, 256, 128), dropout=0.2), "mlp4x256"),
        variant("synth_reg_6", M.mlp((256, 256, 128)), "mlp256x256x128"),
        variant("shapes", M.make_cnn, "cnn"),
        variant("gratings", M.make_mlp, "mlp"),
    ]
    return tasks


def design(space: SearchSpace, task: str, n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` space-filling configurations for ``task``: a scrambled Sobol sequence over the
    encoded space (seeded by the task's name), decoded."""
    from scipy.stats import qmc

    digest = hashlib.sha256(f"{task}|{seed}".encode()).hexdigest()
    sobol = qmc.Sobol(space.dim, scramble=True, seed=int(digest[:8], 16))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # balance properties need n = 2^k; any n is fine here
        points = sobol.random(n)
    return [space.decode(p) for p in points]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--storage", default="runs/trial-base/trials.db", help="URL or SQLite path")
    parser.add_argument("--configs", type=int, default=256, help="configurations per task")
    parser.add_argument("--epochs", type=int, default=10, help="epochs per trial")
    parser.add_argument("--workers", type=int, default=1, help="trainings at once (processes)")
    parser.add_argument("--max-minutes", type=float, default=None, help="stop after this long")
    parser.add_argument("--seed", type=int, default=0, help="seeds the designs")
    parser.add_argument("--quick", action="store_true", help="two tiny tasks (a smoke run)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    from rich.console import Console

    from hporl.experiment import progress_bar

    console = Console()
    t_start = time.perf_counter()
    space = SearchSpace.builtin("optimizer")
    tasks = base_tasks(args.epochs, args.quick)
    leaked = [t.name for t in tasks if t.name.split("+")[0] in HELD_OUT]
    if leaked:
        console.print(f"refused: held-out tasks in the base: {leaked}")
        return 2
    designs = {t.name: design(space, t.name, args.configs, args.seed) for t in tasks}
    url = storage_url(args.storage, None)
    store = TrialStore(url)
    evaluator = Evaluator(
        TorchBackend(num_threads=1),
        store=store,
        run="trial-base",
        space=space,
        n_workers=args.workers,
    )
    evaluator.start(*tasks)
    console.print(
        f"{len(tasks)} tasks x {args.configs} configurations x {args.epochs} epochs "
        f"into {url} ({args.workers} worker(s))"
    )
    statuses: Counter = Counter()
    per_task: Counter = Counter()
    trained_seconds = 0.0
    stopped_at = None
    total = len(tasks) * args.configs
    t_loop = time.perf_counter()  # after the tasks are built and the store opened
    with evaluator, progress_bar("trials", total) as update:

        def tally(ev: Any) -> None:
            nonlocal trained_seconds
            statuses[ev.result.status] += 1
            per_task[ev.task.name] += 1
            if ev.source == "trained":
                trained_seconds += ev.result.wall_time
            update(sum(per_task.values()))

        for r in range(args.configs):
            elapsed = (time.perf_counter() - t_start) / 60
            if args.max_minutes is not None and elapsed >= args.max_minutes:
                stopped_at = r
                break
            pending = []
            for t in tasks:  # in process, each trains as it is submitted
                ev = evaluator.submit(t, designs[t.name][r], seed=0)
                if ev.done():
                    tally(ev)
                else:
                    pending.append(ev)
            while pending:
                finished, pending = evaluator.wait(pending, return_when=FIRST_COMPLETED)
                for ev in finished:
                    tally(ev)
    wall = time.perf_counter() - t_start
    loop = time.perf_counter() - t_loop
    summary = {
        "storage": url,
        "tasks": len(tasks),
        "configs_per_task": args.configs,
        "epochs": args.epochs,
        "workers": args.workers,
        "trials": sum(per_task.values()),
        "trained": evaluator.n_trained,
        "store_hits": evaluator.n_store_hits,
        "statuses": dict(statuses),
        "wall_seconds": round(wall, 1),
        "training_seconds": round(trained_seconds, 1),
        "seconds_per_trained_trial": round(loop / evaluator.n_trained, 3)
        if evaluator.n_trained
        else None,
        "stopped_after_rounds": stopped_at,
        "trials_per_task": dict(per_task),
    }
    if url and url.startswith("sqlite:///"):
        out = Path(url.removeprefix("sqlite:///")).parent / "trial_base_summary.json"
        out.write_text(json.dumps(summary, indent=2))
    console.print(
        f"{summary['trials']} trials ({evaluator.n_trained} trained, {evaluator.n_store_hits} "
        f"from the store) of {len(tasks)} tasks in {wall / 60:.1f} min; statuses {dict(statuses)}"
    )
    if evaluator.n_trained:
        left = total - summary["trials"]
        rate = loop / evaluator.n_trained
        console.print(
            f"{rate:.2f} s per trained trial; the {left} left would take about "
            f"{left * rate / 3600:.1f} h at this rate"
        )
    return 0 if math.isfinite(wall) else 1


if __name__ == "__main__":
    sys.exit(main())
