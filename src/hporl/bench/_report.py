"""Benchmark summaries: regret and rank per method and budget, a Markdown report, plots."""

from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["normalised_regret", "ranks", "summarise", "write_report"]


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


def summarise(
    records: list[dict[str, Any]], config: Any, *, train_tasks: list[str], test_tasks: list[str]
) -> dict[str, Any]:
    n = config.n_trials
    curves = _curves(records, n)
    methods = [m for m in config.methods if m in curves]
    keys = sorted(set().union(*(curves[m].keys() for m in methods))) if methods else []
    summary: dict[str, Any] = {
        "methods": {},
        "train_tasks": train_tasks,
        "test_tasks": test_tasks,
        "seeds": config.seeds,
    }
    rank_sums: dict[str, dict[int, list[float]]] = {m: defaultdict(list) for m in methods}
    for key in keys:
        for k in config.budgets:
            vals = {m: curves[m][key][k - 1] for m in methods if key in curves[m]}
            for m, r in ranks(vals).items():
                rank_sums[m][k].append(r)
    for m in methods:
        per_k: dict[str, float] = {}
        se: dict[str, float] = {}
        rank: dict[str, float] = {}
        for k in config.budgets:
            values = [c[k - 1] for c in curves[m].values()]
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
    return summary


def write_report(
    records: list[dict[str, Any]], summary: dict[str, Any], config: Any, out: Path
) -> None:
    budgets = [str(k) for k in config.budgets]
    lines = [
        f"# Benchmark: {config.benchmark}",
        "",
        f"Held-out tasks: {len(summary['test_tasks'])}; seeds: {config.seeds}; trials per run: {config.n_trials}.",
        "Mean normalised regret (lower is better) ± standard error over tasks x seeds; "
        "mean rank among methods in brackets.",
        "",
        "| method | " + " | ".join(f"K={k}" for k in budgets) + " | propose (ms, median) |",
        "|---|" + "---|" * len(budgets) + "---|",
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
        lines.append(
            f"| {m} | " + " | ".join(cells) + f" | {ms * 1e3:.2f} |"
            if ms is not None
            else " | n/a |"
        )
    lines += [
        "",
        "Train tasks: " + ", ".join(summary["train_tasks"]),
        "",
        "Test tasks: " + ", ".join(summary["test_tasks"]),
    ]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    _plots(records, summary, config, out / "plots")


def _plots(
    records: list[dict[str, Any]], summary: dict[str, Any], config: Any, folder: Path
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    n = config.n_trials
    curves = _curves(records, n)
    methods = [m for m in config.methods if m in curves]
    x = np.arange(1, n + 1)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for m in methods:
        arr = np.array(list(curves[m].values()))
        mean = arr.mean(0)
        se = arr.std(0, ddof=1) / np.sqrt(len(arr)) if len(arr) > 1 else np.zeros(n)
        ax.plot(x, np.maximum(mean, 1e-4), label=m)
        ax.fill_between(x, np.maximum(mean - se, 1e-4), np.maximum(mean + se, 1e-4), alpha=0.2)
    ax.set_yscale("log")
    ax.set_xlabel("trials (K)")
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
    ax.set_xlabel("trials (K)")
    ax.set_ylabel("mean rank (1 = best)")
    ax.set_title(f"{config.benchmark}: average rank")
    ax.legend()
    fig.tight_layout()
    fig.savefig(folder / "rank.png", dpi=120)
    plt.close(fig)
