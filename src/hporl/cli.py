"""The ``hporl`` command line. Logic lives in the library; this module only parses and prints."""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import sys
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from hporl.exceptions import HporlError

app = typer.Typer(
    name="hporl",
    help="Meta-learned hyperparameter selection for PyTorch training.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()


def _version(value: bool) -> None:
    if value:
        from hporl import __version__

        console.print(f"hporl {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="print the version"),
    ] = False,
) -> None:
    """Meta-learned hyperparameter selection for PyTorch training."""


_PARALLEL = "trials (or environments) at once"
_EXECUTOR = "where they run: local (processes) or ray"
Parallel = Annotated[int, typer.Option("--parallel", min=1, help=_PARALLEL)]
ExecutorOpt = Annotated[str, typer.Option("--executor", help=_EXECUTOR)]
# Optional forms (the config's own value when not given); `Parallel | None` would drop the help.
MaybeParallel = Annotated[int | None, typer.Option("--parallel", min=1, help=_PARALLEL)]
MaybeExecutor = Annotated[str | None, typer.Option("--executor", help=_EXECUTOR)]
RayAddress = Annotated[
    str | None,
    typer.Option(
        "--ray-address", help="an existing Ray cluster (default RAY_ADDRESS, else a local Ray)"
    ),
]

# No task here shares data with the default held-out task, digits (digits_linear would).
DEMO_TRAIN = [
    "iris",
    "wine",
    "breast_cancer",
    *[f"synth_clf_{i}" for i in range(8)],
]


@app.command()
def demo(
    held_out: Annotated[
        str, typer.Option(help="built-in task to tune, kept out of meta-training")
    ] = "digits",
    timesteps: Annotated[int, typer.Option(help="RL timesteps after the warm start")] = 2000,
    trials: Annotated[int, typer.Option(help="trials on the held-out task")] = 5,
    epochs: Annotated[int, typer.Option(help="epochs per trial")] = 10,
    out: Annotated[Path, typer.Option(help="run directory")] = Path("runs/demo"),
    seed: Annotated[int, typer.Option(help="seed")] = 0,
) -> None:
    """Meta-train on small built-in tasks, tune a held-out task, compare with default and random search."""
    import statistics
    import time

    import torch

    from hporl.experiment import run_experiment
    from hporl.tasks import builtin
    from hporl.tune import TuneOptions, random_search, tune_model

    torch.set_num_threads(1)
    if held_out in DEMO_TRAIN:
        raise HporlError(
            f"--held-out {held_out!r} is one of the meta-training tasks: {', '.join(DEMO_TRAIN)}"
        )
    console.print(
        f"[bold]1. meta-training[/bold] on {len(DEMO_TRAIN)} tasks ({', '.join(DEMO_TRAIN)}): "
        "32 candidate configurations evaluated on each, behaviour cloning of their greedy portfolio, "
        "then MaskablePPO"
    )
    n_steps = 256
    timesteps = max(n_steps, -(-timesteps // n_steps) * n_steps)  # PPO learns in whole rollouts
    t0 = time.perf_counter()
    policy = run_experiment(
        {
            "name": "demo",
            "tasks": DEMO_TRAIN,
            "backend": {"epochs": epochs},
            "budget": trials,
            "pretrain": {"candidates": 32, "seed": seed},
            "agent": {
                "total_timesteps": timesteps,
                "seed": seed,
                "learning_rate": 1e-4,
                "params": {"n_steps": n_steps, "batch_size": 64, "ent_coef": 0.0},
            },
        },
        out=out / "meta-train",
        progress_bar=True,
    )
    meta_s = time.perf_counter() - t0
    console.print(f"{policy!r} in {meta_s:.0f} s, saved to {out / 'meta-train' / 'policy'}")
    task = builtin(held_out, epochs=epochs)
    console.print(f"[bold]2. tuning[/bold] held-out {task!r} with {trials} trials")
    with _tune_progress(trials) as show:
        tuned = tune_model(
            data=task, policy=policy, n_trials=trials, out=out / "tuned", seed=seed, callback=show
        )
    console.print(f"[bold]3. the packaged default policy[/bold] with {trials} trials")
    from hporl.policy import Policy

    with _tune_progress(trials) as show:
        packaged = tune_model(
            data=task,
            policy=Policy.default(),
            n_trials=trials,
            out=out / "tuned-packaged",
            seed=seed,
            callback=show,
            options=TuneOptions(compare_default=False),
        )
    console.print(f"[bold]4. random search[/bold] with {trials} trials, 3 seeds")
    randoms = [random_search(task, policy.space, trials, seed=s) for s in range(3)]
    table = Table(
        title=f"{task.name} (held out): test {task.metric_name} after final training on train+val"
    )
    for col in ("method", "trials", "best val", "test", "seconds", "meta-training s"):
        table.add_column(col, justify="right" if col != "method" else "left")
    best_val = tuned.report()["best_val_metric"]
    table.add_row("default configuration", "1", "", f"{tuned.default_test_metric:.4f}", "", "")
    table.add_row(
        "hporl policy (trained here)",
        str(trials),
        f"{best_val:.4f}",
        f"{tuned.test_metric:.4f}",
        f"{tuned.seconds:.1f}",
        f"{meta_s:.0f}",
    )
    table.add_row(
        "hporl packaged default policy",
        str(trials),
        f"{packaged.report()['best_val_metric']:.4f}",
        f"{packaged.test_metric:.4f}",
        f"{packaged.seconds:.1f}",
        "shipped",
    )
    rv = [r.report()["best_val_metric"] for r in randoms]
    rt = [r.test_metric for r in randoms]
    table.add_row(
        "random search (mean of 3 seeds)",
        str(trials),
        f"{statistics.mean(rv):.4f}",
        f"{statistics.mean(rt):.4f}",
        f"{statistics.mean(r.seconds for r in randoms):.1f}",
        "",
    )
    console.print(table)
    console.print(f"best configuration: {json.dumps(tuned.config)}")
    console.print(
        f"demo total {time.perf_counter() - t0:.0f} s; report in {out / 'tuned' / 'report.json'}"
    )


@contextlib.contextmanager
def _tune_progress(n_trials: int | None, title: str = "tuning") -> Iterator[Any]:
    """A rich progress bar over trials; yields the ``callback`` for :func:`hporl.tune_model`."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        bar = progress.add_task(title, total=n_trials)

        def show(i: int, n: int, config: dict[str, Any], result: Any) -> None:
            short = ", ".join(
                f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in config.items()
            )
            of = f"/{n}" if n else ""
            # a budget in epochs (n = 0): each trial's epochs (a probe's, a resumed one's total)
            e = result.epochs_done
            spent = "" if n else f" [{e} epoch{'' if e == 1 else 's'}]"
            progress.console.print(
                f"  trial {i}{of}{spent}: {result.summary()}  [dim]{short}[/dim]"
            )
            progress.update(bar, completed=i)

        yield show


@app.command("meta-train")
def meta_train(
    experiment: Annotated[Path, typer.Argument(help="experiment YAML file")],
    out: Annotated[
        Path | None, typer.Option(help="run directory (default: the file's `out`, else runs/NAME)")
    ] = None,
    resume: Annotated[
        bool, typer.Option(help="continue from the latest checkpoint in the run directory")
    ] = False,
    storage: Annotated[
        str | None,
        typer.Option(help="trial store: optuna storage URL or SQLite path (default DIR/trials.db)"),
    ] = None,
    parallel: MaybeParallel = None,
    executor: MaybeExecutor = None,
    ray_address: RayAddress = None,
    wait: Annotated[
        str | None,
        typer.Option(
            help="with --parallel, what an env that has chosen its configuration waits for: "
            "round (every env's trainings) or own (its own; agent.wait)"
        ),
    ] = None,
) -> None:
    """Meta-train a policy over the experiment's tasks; the policy lands in DIR/policy.

    --parallel sets the number of environments (agent.n_envs), --executor where their
    trainings run."""
    import torch

    from hporl.experiment import ExperimentConfig, run_experiment

    torch.set_num_threads(1)
    config = ExperimentConfig.from_yaml(experiment)
    agent = {
        k: v
        for k, v in {
            "n_envs": parallel,
            "executor": executor,
            "ray_address": ray_address,
            "wait": wait,
        }.items()
        if v is not None
    }
    if agent:
        config = ExperimentConfig.parse(
            config.model_dump() | {"agent": config.agent.model_dump() | agent}, source="options"
        )
    run_dir = out or Path(config.out or Path("runs") / config.name)
    policy = run_experiment(config, out=run_dir, resume=resume, progress_bar=True, storage=storage)
    console.print(f"{policy!r}")
    console.print(f"policy saved to {run_dir / 'policy'}")


def _probe_option(text: str) -> Any:
    """``--probe F:R`` as a :class:`~hporl.sampler.Probe`, ``off`` as ``None``."""
    from hporl.sampler import PROBE, Probe

    if text.strip().lower() in ("off", "none"):
        return None
    fraction, _, rounds = text.partition(":")
    try:
        return Probe(fidelity=float(fraction), rounds=int(rounds) if rounds else PROBE.rounds)
    except ValueError as err:
        raise HporlError(
            f"--probe {text!r}: give F:R (a fraction of the epochs in (0, 1) and a whole number "
            f"of probes per continuation, e.g. 0.333:2) or off ({err})"
        ) from None


@app.command()
def tune(
    data: Annotated[Path, typer.Option(help="CSV file with a header row")],
    target: Annotated[str, typer.Option(help="column to predict")],
    policy: Annotated[
        Path | None,
        typer.Option(
            help="policy directory, or a meta-train run directory (default: the packaged policy)"
        ),
    ] = None,
    model: Annotated[str, typer.Option(help="mlp, linear or lcbench_mlp")] = "mlp",
    trials: Annotated[int | None, typer.Option(help="number of trials (default 10)")] = None,
    budget_epochs: Annotated[
        int | None,
        typer.Option(
            help="a budget in epochs over all trials instead of --trials: a budget-aware policy "
            "chooses each trial's epochs; another's proposals are probed (see --probe)"
        ),
    ] = None,
    fine_tune: Annotated[
        bool, typer.Option(help="update the policy on this task between trials")
    ] = False,
    epochs: Annotated[int | None, typer.Option(help="epochs per trial (default 20)")] = None,
    out: Annotated[
        Path | None, typer.Option(help="output directory (default runs/tune-<file name>)")
    ] = None,
    storage: Annotated[
        str | None,
        typer.Option(help="trial store: optuna storage URL or SQLite path (default DIR/trials.db)"),
    ] = None,
    worker: Annotated[
        str | None,
        typer.Option(help="name of this process among several sharing --storage (default DIR)"),
    ] = None,
    seed: Annotated[int, typer.Option(help="seed of the splits and of training")] = 0,
    parallel: Parallel = 1,
    executor: ExecutorOpt = "local",
    ray_address: RayAddress = None,
    trial_timeout: Annotated[
        float | None, typer.Option(help="seconds a trial may take (stopped after that epoch)")
    ] = None,
    pruner: Annotated[
        str | None,
        typer.Option(
            help="stop unpromising trials early: median, asha or hyperband (optuna's pruners; "
            "trials in this process: not with --parallel > 1 or --executor ray)"
        ),
    ] = None,
    task_type: Annotated[
        str | None,
        typer.Option(
            "--task-type",
            help="classification or regression (default: inferred from the target, and said)",
        ),
    ] = None,
    then: Annotated[
        str | None,
        typer.Option(
            help="the optuna sampler for the trials after the policy's: gp (default), tpe, "
            "random or cmaes (its model starts on every trial, the policy's included); none: "
            "the policy proposes every trial"
        ),
    ] = None,
    handover: Annotated[
        int | None,
        typer.Option(
            help="trials the policy proposes before --then takes over (with --budget-epochs and "
            "a budget-aware policy: the full trainings' epochs it spends first; default: what "
            "it was meta-trained for, at most 10)"
        ),
    ] = None,
    probe: Annotated[
        str | None,
        typer.Option(
            help="with --budget-epochs and a policy that is not budget-aware: F:R probes its "
            "proposals for a fraction F of the epochs and continues the best of every R to "
            "full (default 0.333:2); off: every trial trains fully"
        ),
    ] = None,
) -> None:
    """Tune a model on a CSV file with a policy, train it for good, write DIR/report.json."""
    import torch

    from hporl.evaluation import PRUNERS
    from hporl.executors import make_executor
    from hporl.experiment import MODELS
    from hporl.tasks import Task
    from hporl.tasks._task import TASK_TYPES
    from hporl.tune import TuneOptions, tune_model

    torch.set_num_threads(1)
    if model not in MODELS or model == "cnn":
        raise HporlError(f"--model {model!r}: choose one of mlp, linear, lcbench_mlp")
    if task_type is not None and task_type not in TASK_TYPES:
        raise HporlError(f"--task-type {task_type!r}: choose one of {', '.join(TASK_TYPES)}")
    if epochs is not None and epochs < 1:
        raise HporlError(f"--epochs must be a positive integer, got {epochs}")
    if not 0 <= seed < 2**32:
        raise HporlError(f"--seed must be an integer in [0, 2**32), got {seed}")
    if pruner is not None and pruner not in PRUNERS:
        raise HporlError(f"--pruner {pruner!r}: choose one of {', '.join(PRUNERS)}")
    if budget_epochs is not None and trials is not None:
        raise HporlError("give --trials or --budget-epochs, not both")
    if budget_epochs is not None and budget_epochs < 1:
        raise HporlError(f"--budget-epochs must be a positive integer, got {budget_epochs}")
    if trials is None and budget_epochs is None:
        trials = 10
    if pruner is not None and (parallel > 1 or executor != "local"):
        raise HporlError(
            f"--pruner {pruner} reads every epoch as it is trained, in this process: it cannot "
            "be combined with --parallel > 1 or --executor ray"
        )
    handing = {} if then is None else {"then": None if then == "none" else then}
    if probe is not None:
        handing["probe"] = _probe_option(probe)
    options = TuneOptions(worker=worker, trial_timeout=trial_timeout, handover=handover, **handing)
    out = out or Path("runs") / f"tune-{data.stem}"
    task = Task.from_csv(
        data,
        target=target,
        model=MODELS[model],
        task_type=task_type,
        seed=seed,
        **({"epochs": epochs} if epochs is not None else {}),
    )
    console.print(f"task: {task.task_type} ({task.info['task_type_reason']})")
    if policy is None:
        console.print("policy: the packaged default (hporl.Policy.default(), `optimizer` space)")
    with _tune_progress(trials) as show:
        result = tune_model(
            data=task,
            policy=policy,
            n_trials=trials,
            budget_epochs=budget_epochs,
            fine_tune=fine_tune,
            out=out,
            storage=storage,
            seed=seed,
            callback=show,
            executor=make_executor(executor, parallel, ray_address=ray_address),
            pruner=pruner,
            options=options,
        )
    table = Table(title=f"{result.task}: test {result.metric_name}")
    table.add_column("configuration")
    table.add_column("test", justify="right")
    table.add_row(
        "default",
        "n/a" if result.default_test_metric is None else f"{result.default_test_metric:.4f}",
    )
    pruned = result.extra.get("n_pruned", 0)
    done = trials if budget_epochs is None else len(result.trials)
    spent = result.extra.get("epochs_spent")
    table.add_row(
        f"tuned ({done} trials"
        + (f", {pruned} pruned" if pruner else "")
        + (f", {spent} of {budget_epochs} epochs" if spent is not None else "")
        + ")",
        "n/a" if result.test_metric is None else f"{result.test_metric:.4f}",
    )
    console.print(table)
    console.print(f"best configuration: {json.dumps(result.config)}")
    console.print(
        f"model, config and report written to {out}; predict on new rows with "
        f"`hporl predict --model {out} --data NEW.csv`",
        soft_wrap=True,  # a command to copy: never broken across lines
    )


@app.command()
def predict(
    model: Annotated[Path, typer.Option(help="a saved model: the --out directory of `hporl tune`")],
    data: Annotated[Path, typer.Option(help="CSV file with a header row: the model's columns")],
    out: Annotated[
        Path | None, typer.Option(help="CSV file for the predictions (default: print them)")
    ] = None,
    index: Annotated[
        int | None, typer.Option(help="which network predicts, when the task had several")
    ] = None,
) -> None:
    """Predict with a saved tuned model on new rows: a `prediction` column, and for
    classification one `proba_<class>` column per class."""
    import csv
    import io

    import torch

    from hporl._io import atomic_write
    from hporl.saved_model import load_model

    torch.set_num_threads(1)
    predictor = load_model(model, index=index)
    labels = predictor.predict(data)
    header = ["prediction"]
    columns = [[_cell(v) for v in labels]]
    if predictor.task_type == "classification":
        proba = predictor.predict_proba(data)
        header += [f"proba_{_cell(c)}" for c in predictor.classes or []]
        columns += [[repr(float(p)) for p in proba[:, k]] for k in range(proba.shape[1])]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(zip(*columns, strict=True))
    if out is None:
        sys.stdout.write(buf.getvalue())
        return
    atomic_write(out, lambda p: p.write_text(buf.getvalue()))
    console.print(f"{len(labels)} predictions written to {out}", soft_wrap=True)


def _cell(value: Any) -> str:
    """A label or number as a CSV cell (whole floats without ``.0``: labels read from CSV)."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    return str(value)


@app.command()
def bench(
    config: Annotated[Path, typer.Argument(help="bench YAML file")],
    out: Annotated[Path, typer.Option(help="output directory")] = Path("runs/bench"),
    storage: Annotated[
        str | None,
        typer.Option(
            help="trial store of real training: URL or SQLite path (default OUT/trials.db)"
        ),
    ] = None,
    parallel: MaybeParallel = None,
    executor: MaybeExecutor = None,
    ray_address: RayAddress = None,
) -> None:
    """Run a benchmark; write results.json, summary.json, report.md and plots/*.png to OUT."""
    import time

    import torch

    from hporl.bench import run

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    summary = run(  # messages between parts; progress bars with the time left inside them
        config,
        out=out,
        progress=console.print,
        progress_bar=True,
        storage=storage,
        parallel=parallel,
        executor=executor,
        ray_address=ray_address,
    )
    console.print((out / "report.md").read_text())
    console.print(
        f"{len(summary['methods'])} methods in {time.perf_counter() - t0:.0f} s; files in {out}"
    )


surrogate_app = typer.Typer(
    help="Surrogates learned from the trial store (cheap meta-training).", no_args_is_help=True
)
app.add_typer(surrogate_app, name="surrogate")


@surrogate_app.command("fit")
def surrogate_fit(
    storage: Annotated[
        list[str],
        typer.Option(help="trial store to learn from: URL or SQLite path (repeat for several)"),
    ],
    out: Annotated[Path, typer.Option(help="directory of the surrogate and its report.json")],
    space: Annotated[str, typer.Option(help="built-in space name or YAML path")] = "optimizer",
    folds: Annotated[int, typer.Option(min=2, help="groups of tasks held out in turn")] = 5,
    members: Annotated[int, typer.Option(min=2, help="MLPs in the ensemble")] = 5,
    steps: Annotated[int, typer.Option(min=1, help="training steps of each MLP")] = 2000,
    seed: Annotated[int, typer.Option(help="seed of the fit and of the folds")] = 0,
) -> None:
    """Fit a surrogate on the real trials of the store(s); report its quality on held-out tasks.

    Experiments then meta-train through it with `backend: {surrogate: OUT}`."""
    import torch

    from hporl.backends.surrogate import FitSettings, fit_surrogate

    torch.set_num_threads(1)
    settings = FitSettings(members=members, steps=steps, seed=seed)
    _, report = fit_surrogate(
        storage, out, space=space, folds=folds, settings=settings, progress=console.print
    )
    held = report["held_out"]
    table = Table(title=f"held-out tasks ({held['folds']} folds of tasks)")
    for col in ("task", "trials", "Spearman", "regret of its top config", "of a random pick"):
        table.add_column(col)
    for e in held["per_task"]:
        table.add_row(
            e["task"],
            str(e["trials"]),
            *(
                f"{e[k]:.3f}" if k in e else "-"
                for k in ("spearman", "regret_top", "regret_random")
            ),
        )
    console.print(table)

    def fmt(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.3f}"

    verdict = "meets" if held["meets_target"] else "misses"
    console.print(
        f"Spearman on held-out tasks: median {fmt(held['spearman_median'])}, mean "
        f"{fmt(held['spearman_mean'])}, min {fmt(held['spearman_min'])} over "
        f"{held['tasks_scored']} tasks ({verdict} the target {held['spearman_target']})"
    )
    console.print(
        f"normalised regret of its top-ranked configuration: mean {fmt(held['regret_top_mean'])}, "
        f"median {fmt(held['regret_top_median'])} (a random pick: "
        f"{fmt(held['regret_random_mean'])})"
    )
    console.print(
        f"{report['trials']} trials of {report['tasks']} tasks; fitted in "
        f"{report['fit_seconds']:.0f} s (held-out folds {report['held_out_seconds']:.0f} s); "
        f"surrogate and report.json in {out}",
        soft_wrap=True,
    )


@app.command()
def spaces(
    name: Annotated[str | None, typer.Argument(help="show the parameters of one space")] = None,
) -> None:
    """List the built-in search spaces, or the parameters of one."""
    from hporl.space import SearchSpace, builtin_spaces

    if name is None:
        table = Table(title="built-in search spaces (`hporl spaces NAME` shows one)")
        for col in ("space", "parameters", "chosen (not fixed)", "conditional"):
            table.add_column(col)
        for n in builtin_spaces():
            space = SearchSpace.builtin(n)
            conditional = sum(1 for p in space if p.when)
            table.add_row(n, str(len(space)), str(len(space.chosen)), str(conditional))
        console.print(table)
        return
    for n in [name]:
        space = SearchSpace.builtin(n)
        table = Table(title=f"search space {n!r} ({len(space)} parameters)")
        for col in ("parameter", "kind", "range / choices", "default", "active when"):
            table.add_column(col)
        for p in space:
            d = p.to_dict()
            if p.kind in ("categorical", "fixed"):
                dom = ", ".join(map(str, p.choices))
            else:
                dom = (
                    f"[{p.low}, {p.high}]"
                    + (" log" if p.log else "")
                    + (f" or {p.off}" if p.has_off else "")
                )
            when = "; ".join(f"{k} in {list(v)}" for k, v in p.when)
            table.add_row(p.name, p.kind, dom, str(d.get("default", d.get("value"))), when)
        console.print(table)


@app.command()
def tasks() -> None:
    """List the built-in tasks and suites."""
    from hporl.tasks import available, suites

    table = Table(title="built-in tasks")
    table.add_column("name")
    table.add_column("description")
    for name, desc in available().items():
        table.add_row(name, desc)
    console.print(table)
    table = Table(title="suites")
    table.add_column("suite")
    table.add_column("tasks")
    for name, members in suites().items():
        table.add_row(name, ", ".join(members))
    console.print(table)


def _terminate(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> Any:
    """Entry point: user errors become one line on stderr and exit code 2."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    warnings.filterwarnings("ignore", message="rich is experimental/alpha")  # SB3's progress bar
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGTERM) if main_thread else None
    if main_thread:
        # SIGTERM ends a run as Ctrl-C does: trials under way are failed and marked, the store
        # is left consistent, and the last line says "aborted".
        signal.signal(signal.SIGTERM, _terminate)
    try:
        import optuna  # inside: a Ctrl-C while it loads is "aborted" too

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        code = app(args=argv, standalone_mode=False)
        if isinstance(code, int) and code:  # click returns 130 on Ctrl-C in this mode
            if code == 130:
                print("hporl: aborted", file=sys.stderr)
            sys.exit(code)
        return code
    except HporlError as err:
        print(f"hporl: error: {err}", file=sys.stderr)
        sys.exit(2)
    except typer.Exit as err:
        sys.exit(err.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        print("hporl: aborted", file=sys.stderr)
        sys.exit(130)
    except OSError as err:
        if err.errno is None:  # not the system's: a bug, shown in full
            raise
        # Disk full, read-only, permissions... where no part wrapped it: still one line.
        where = f"{err.filename}: " if err.filename else ""
        print(f"hporl: error: {where}{err.strerror or err}", file=sys.stderr)
        sys.exit(2)
    except Exception as err:
        # Usage errors of typer's (vendored) click: wrong command or option.
        if callable(getattr(err, "show", None)) and hasattr(err, "exit_code"):
            err.show()
            sys.exit(2)
        raise
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    main()
