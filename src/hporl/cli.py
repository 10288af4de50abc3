"""The ``hporl`` command line. Logic lives in the library; this module only parses and prints."""

from __future__ import annotations

import json
import logging
import sys
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


@app.command()
def demo(
    task: Annotated[str, typer.Option(help="built-in task to train on")] = "digits",
    epochs: Annotated[int | None, typer.Option(help="epochs (default: the task's)")] = None,
    seed: Annotated[int, typer.Option(help="training seed")] = 0,
    out: Annotated[
        Path | None, typer.Option(help="directory for the best weights and config")
    ] = None,
) -> None:
    """Train a built-in task with the optimizer space's default configuration and report it."""
    import torch

    from hporl.backends import TorchBackend
    from hporl.space import SearchSpace
    from hporl.tasks import builtin

    torch.set_num_threads(1)
    space = SearchSpace.builtin("optimizer")
    t = builtin(task, epochs=epochs)
    config = space.default()
    console.print(f"[bold]{t!r}[/bold]")
    console.print(f"default configuration: {json.dumps(config)}")
    result = TorchBackend().evaluate(t, config, seed=seed, checkpoint_dir=out)
    table = Table(title=f"{t.name}: default configuration, seed {seed}")
    table.add_column("epoch", justify="right")
    table.add_column(f"val {result.metric_name}", justify="right")
    table.add_column("val loss", justify="right")
    table.add_column("train loss", justify="right")
    for i, (m, lv, lt) in enumerate(
        zip(result.curve, result.loss_curve, result.train_loss_curve, strict=True), start=1
    ):
        table.add_row(str(i), f"{m:.4f}", f"{lv:.4f}", f"{lt:.4f}")
    console.print(table)
    console.print(result.summary() + f" in {result.wall_time:.2f} s")
    if out is not None:
        console.print(f"best weights and config written to {out}")


@app.command()
def spaces(
    name: Annotated[str | None, typer.Argument(help="show the parameters of one space")] = None,
) -> None:
    """List the built-in search spaces, or the parameters of one."""
    from hporl.space import SearchSpace, builtin_spaces

    names = [name] if name else builtin_spaces()
    for n in names:
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


def main(argv: list[str] | None = None) -> Any:
    """Entry point: user errors become one line on stderr and exit code 2."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return app(args=argv, standalone_mode=False)
    except HporlError as err:
        print(f"hporl: error: {err}", file=sys.stderr)
        sys.exit(2)
    except typer.Exit as err:
        sys.exit(err.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        print("hporl: aborted", file=sys.stderr)
        sys.exit(130)
    except Exception as err:
        # Usage errors of typer's (vendored) click: wrong command or option.
        if callable(getattr(err, "show", None)) and hasattr(err, "exit_code"):
            err.show()
            sys.exit(2)
        raise


if __name__ == "__main__":
    main()
