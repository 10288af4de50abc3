"""Benchmark summaries: regret and rank per method and budget, a Markdown report, plots."""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "normalised_regret",
    "ranks",
    "regret_at_budgets",
    "summarise",
    "summarise_finals",
    "write_report",
]


def normalised_regret(best_so_far: float, y_min: float, y_max: float) -> float:
    """``(y_max - best_so_far) / (y_max - y_min)`` (DESIGN.md's benchmark protocol)."""
    return (y_max - best_so_far) / max(y_max - y_min, 1e-12)


def ranks(values: dict[str, float]) -> dict[str, float]:
    """Average ranks (1 = lowest value = best), ties sharing the mean of their ranks."""
    order = sorted(values, key=lambda m: values[m])
    out: dict[str, float] = {}
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for m in order[i : j + 1]:
            out[m] = (i + j) / 2 + 1
        i = j + 1
    return out


def _curves(
    records: list[dict[str, Any]], n_trials: int
) -> dict[str, dict[tuple[str, int], list[float]]]:
    """method -> (task, seed) -> regret after trials 1..n (a failed start counts as regret 1)."""
    out: dict[str, dict[tuple[str, int], list[float]]] = defaultdict(dict)
    by_run: dict[tuple[str, str, int], dict[int, float | None]] = defaultdict(dict)
    for r in records:
        by_run[(r["method"], r["task"], r["seed"])][r["trial"]] = r["regret"]
    for (method, task, seed), trials in by_run.items():
        curve = []
        last = 1.0
        for k in range(1, n_trials + 1):
            v = trials.get(k)
            last = last if v is None else v
            curve.append(last)
        out[method][(task, seed)] = curve
    return out


def _epoch_curves(
    records: list[dict[str, Any]], budgets: np.ndarray
) -> dict[str, dict[tuple[str, int], list[float]]]:
    """method -> (task, seed) -> regret after ``budgets`` full-training equivalents of epochs:
    that of the last trial whose cumulative epochs (``epochs_spent``) fit in ``budget`` times
    the task's full epochs (1 before any trial found something)."""
    by_run: dict[tuple[str, str, int], list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        by_run[(r["method"], r["task"], r["seed"])].append(r)
    out: dict[str, dict[tuple[str, int], list[float]]] = defaultdict(dict)
    for (method, task, seed), rows in by_run.items():
        rows = sorted(rows, key=lambda r: r["trial"])
        spent = np.array([r["epochs_spent"] for r in rows], dtype=float)
        regret = []
        last = 1.0
        for r in rows:
            last = last if r["regret"] is None else r["regret"]
            regret.append(last)
        full = rows[0]["full_epochs"]
        done = np.searchsorted(spent, np.asarray(budgets, dtype=float) * full, side="right")
        out[method][(task, seed)] = [regret[d - 1] if d else 1.0 for d in done]
    return out


def regret_at_budgets(
    records: list[dict[str, Any]], budgets: Sequence[int], *, unit: str = "trials"
) -> dict[str, dict[tuple[str, int], list[float]]]:
    """method -> (task, seed) -> regret at each of ``budgets`` (trials, or with ``unit:
    "epochs"`` full-training equivalents of epochs), from a bench's ``results.json`` rows."""
    if unit == "epochs":
        return _epoch_curves(records, np.asarray(budgets, dtype=float))
    curves = _curves(records, max(budgets))
    return {
        m: {key: [c[k - 1] for k in budgets] for key, c in runs.items()}
        for m, runs in curves.items()
    }


def summarise(
    records: list[dict[str, Any]], config: Any, *, train_tasks: list[str], test_tasks: list[str]
) -> dict[str, Any]:
    """Per method and budget: mean normalised regret, its standard error and the mean rank over
    tasks x seeds; with ``budget_unit: epochs`` also the trials per run and epochs per trial."""
    unit = getattr(config, "budget_unit", "trials")
    curves = regret_at_budgets(records, config.budgets, unit=unit)
    methods = [m for m in config.methods if m in curves]
    keys = sorted(set().union(*(curves[m].keys() for m in methods))) if methods else []
    epochs = unit == "epochs"
    summary: dict[str, Any] = {
        "methods": {},
        "train_tasks": train_tasks,
        "test_tasks": test_tasks,
        "seeds": config.seeds,
        "budget_unit": "epochs" if epochs else "trials",
    }
    rank_sums: dict[str, dict[int, list[float]]] = {m: defaultdict(list) for m in methods}
    for key in keys:
        for i, k in enumerate(config.budgets):
            vals = {m: curves[m][key][i] for m in methods if key in curves[m]}
            for m, r in ranks(vals).items():
                rank_sums[m][k].append(r)
    for m in methods:
        per_k: dict[str, float] = {}
        se: dict[str, float] = {}
        rank: dict[str, float] = {}
        for i, k in enumerate(config.budgets):
            values = [c[i] for c in curves[m].values()]
            per_k[str(k)] = float(np.mean(values))
            se[str(k)] = (
                float(np.std(values, ddof=1) / np.sqrt(len(values))) if len(values) > 1 else 0.0
            )
            rank[str(k)] = float(np.mean(rank_sums[m][k])) if rank_sums[m][k] else float("nan")
        propose = [r["propose_seconds"] for r in records if r["method"] == m]
        summary["methods"][m] = {
            "regret": per_k,
            "regret_se": se,
            "rank": rank,
            "propose_seconds_median": float(statistics.median(propose)) if propose else None,
        }
        if epochs:
            rows = [r for r in records if r["method"] == m]
            summary["methods"][m] |= {
                "trials_per_run": len(rows) / len(curves[m]),
                "epochs_per_trial": float(np.mean([r["epochs"] for r in rows])),
                "pruned_fraction": float(
                    np.mean([r["status"] in ("pruned", "partial") for r in rows])
                ),
                "train_seconds_per_run": sum(r.get("seconds") or 0.0 for r in rows)
                / len(curves[m]),
            }
    return summary


def summarise_finals(finals: list[dict[str, Any]], config: Any) -> dict[str, Any]:
    """Per method: the final models' test metric, mean ± standard error over tasks x seeds and
    mean per task (runs whose every trial failed are counted in ``failed``, not averaged)."""
    out: dict[str, Any] = {}
    for m in config.methods:
        rows = [f for f in finals if f["method"] == m]
        if not rows:
            continue
        values = [f["test_metric"] for f in rows if f["test_metric"] is not None]
        per_task: dict[str, list[float]] = defaultdict(list)
        for f in rows:
            if f["test_metric"] is not None:
                per_task[f["task"]].append(f["test_metric"])
        out[m] = {
            "test_metric": float(np.mean(values)) if values else None,
            "test_metric_se": float(np.std(values, ddof=1) / np.sqrt(len(values)))
            if len(values) > 1
            else 0.0,
            "runs": len(rows),
            "failed": len(rows) - len(values),
            "per_task": {t: float(np.mean(v)) for t, v in sorted(per_task.items())},
        }
    return out


def _finals_section(summary: dict[str, Any], config: Any) -> list[str]:
    finals = summary["final_test"]
    tasks = sorted({t for v in finals.values() for t in v["per_task"]})
    best = max(
        (v["test_metric"] for v in finals.values() if v["test_metric"] is not None), default=None
    )
    lines = [
        "",
        f"## Test metric of the final model (K={config.n_trials})",
        "",
        "The run's best configuration trained again on train+val for its best epoch count; "
        "held-out test metric, mean ± standard error over tasks x seeds, then mean per task.",
        "",
        "| method | mean | " + " | ".join(tasks) + " |",
        "|---|---|" + "---|" * len(tasks),
    ]
    for m, v in finals.items():
        if v["test_metric"] is None:
            mean = "n/a"
        else:
            mean = f"{v['test_metric']:.4f} ± {v['test_metric_se']:.4f}"
            mean = f"**{mean}**" if v["test_metric"] == best else mean
        if v["failed"]:
            mean += f" ({v['failed']} failed)"
        cells = [f"{v['per_task'][t]:.4f}" if t in v["per_task"] else "n/a" for t in tasks]
        lines.append(f"| {m} | {mean} | " + " | ".join(cells) + " |")
    return lines


def _augment_section(
    records: list[dict[str, Any]], finals: list[dict[str, Any]], config: Any
) -> list[str]:
    """Which augmentation the methods chose (when the space has augmentation parameters)."""
    from hporl.augment import AUGMENT_KEY, op_counts

    if not any(AUGMENT_KEY in (r["config"] or {}) for r in records):
        return []
    lines = [
        "",
        "## Augmentation chosen",
        "",
        "How often each `augment` policy was chosen, then the most chosen operations of the "
        "AutoAugment sub-policies (10 per configuration): in the final configurations, and over "
        "all trials.",
        "",
        "| method | final configurations | all trials |",
        "|---|---|---|",
    ]

    def text(configs: list[dict[str, Any]]) -> str:
        kinds, ops = op_counts(configs)
        out = ", ".join(f"{k} {v}" for k, v in kinds.items()) or "n/a"
        if ops:
            out += "; ops: " + ", ".join(f"{k} {v}" for k, v in list(ops.items())[:6])
        return out

    for m in config.methods:
        final = [f["config"] for f in finals if f["method"] == m and f.get("config")]
        trials = [r["config"] for r in records if r["method"] == m]
        if trials:
            lines.append(f"| {m} | {text(final)} | {text(trials)} |")
    return lines


def write_report(
    records: list[dict[str, Any]],
    summary: dict[str, Any],
    config: Any,
    out: Path,
    finals: list[dict[str, Any]] | None = None,
) -> None:
    budgets = [str(k) for k in config.budgets]
    epochs = summary.get("budget_unit") == "epochs"
    if epochs:
        full = sorted({r["full_epochs"] for r in records})
        head = [
            f"Held-out tasks: {len(summary['test_tasks'])}; seeds: {config.seeds}; budget per run: "
            f"{config.n_trials} full trainings' epochs ({config.n_trials} x "
            f"{'/'.join(map(str, full))} epochs).",
            "B = epochs spent over all trials, in full-training equivalents (B x the task's "
            "epochs); a trial costs the epochs it trained (a pruned one, those up to its "
            "pruning). Found = the best final value of the trials trained to the end (as "
            "optuna's best_trial); a pruned trial's last value is not counted. Training s per "
            "run: the seconds its trials trained (a cached result counts its own training's; on "
            "a YAHPO surrogate, the training time it predicts for the original runs).",
        ]
        extra = " trials per run | epochs per trial | pruned | training s per run |"
    else:
        head = [
            f"Held-out tasks: {len(summary['test_tasks'])}; seeds: {config.seeds}; trials per run: {config.n_trials}."
        ]
        extra = ""
    letter = "B" if epochs else "K"
    lines = [
        f"# Benchmark: {config.benchmark}",
        "",
        *head,
        "Mean normalised regret (lower is better) ± standard error over tasks x seeds; "
        "mean rank among methods in brackets.",
        "",
        "| method | "
        + " | ".join(f"{letter}={k}" for k in budgets)
        + " | propose (ms, median) |"
        + extra,
        "|---|" + "---|" * len(budgets) + "---|" + ("---|" * 4 if epochs else ""),
    ]
    best = (
        {k: min(v["regret"][k] for v in summary["methods"].values()) for k in budgets}
        if summary["methods"]
        else {}
    )
    for m, v in summary["methods"].items():
        cells = []
        for k in budgets:
            cell = f"{v['regret'][k]:.4f} ± {v['regret_se'][k]:.4f} ({v['rank'][k]:.2f})"
            cells.append(f"**{cell}**" if v["regret"][k] == best[k] else cell)
        ms = v["propose_seconds_median"]
        row = (
            f"| {m} | "
            + " | ".join(cells)
            + (f" | {ms * 1e3:.2f} |" if ms is not None else " | n/a |")
        )
        if epochs:
            seconds = v.get("train_seconds_per_run")
            row += (
                f" {v['trials_per_run']:.1f} | {v['epochs_per_trial']:.1f} | "
                f"{v['pruned_fraction']:.0%} | "
                + ("n/a" if seconds is None else f"{seconds:.1f}")
                + " |"
            )
        lines.append(row)
    lines += [
        "",
        "Train tasks: " + ", ".join(summary["train_tasks"]),
        "",
        "Test tasks: " + ", ".join(summary["test_tasks"]),
    ]
    if "final_test" in summary:
        lines += _finals_section(summary, config)
    lines += _augment_section(records, finals or [], config)
    (out / "report.md").write_text("\n".join(lines) + "\n")
    _plots(records, summary, config, out / "plots")


def _plots(
    records: list[dict[str, Any]], summary: dict[str, Any], config: Any, folder: Path
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    epochs = summary.get("budget_unit") == "epochs"
    if epochs:  # regret after x full-training equivalents of epochs, from one epoch on
        full = max((r["full_epochs"] for r in records), default=1)
        x = np.geomspace(1 / full, config.n_trials, 200)
        curves = _epoch_curves(records, x)
        xlabel = "epochs spent, in full trainings (B)"
    else:
        x = np.arange(1, config.n_trials + 1)
        curves = _curves(records, config.n_trials)
        xlabel = "trials (K)"
    n = len(x)
    methods = [m for m in config.methods if m in curves]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for m in methods:
        arr = np.array(list(curves[m].values()))
        mean = arr.mean(0)
        se = arr.std(0, ddof=1) / np.sqrt(len(arr)) if len(arr) > 1 else np.zeros(n)
        ax.plot(x, np.maximum(mean, 1e-4), label=m)
        ax.fill_between(x, np.maximum(mean - se, 1e-4), np.maximum(mean + se, 1e-4), alpha=0.2)
    ax.set_yscale("log")
    if epochs:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("mean normalised regret")
    ax.set_title(
        f"{config.benchmark}: {len(summary['test_tasks'])} held-out tasks, {config.seeds} seeds"
    )
    ax.legend()
    fig.tight_layout()
    fig.savefig(folder / "regret.png", dpi=120)
    plt.close(fig)
    keys = sorted(set().union(*(curves[m].keys() for m in methods))) if methods else []
    rank_curve = {m: np.zeros(n) for m in methods}
    for key in keys:
        for k in range(n):
            vals = {m: curves[m][key][k] for m in methods if key in curves[m]}
            for m, r in ranks(vals).items():
                rank_curve[m][k] += r / len(keys)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for m in methods:
        ax.plot(x, rank_curve[m], label=m)
    if epochs:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("mean rank (1 = best)")
    ax.set_title(f"{config.benchmark}: average rank")
    ax.legend()
    fig.tight_layout()
    fig.savefig(folder / "rank.png", dpi=120)
    plt.close(fig)
