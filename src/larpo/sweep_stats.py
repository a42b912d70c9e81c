"""A sweep's results: mean and 95% interval over seeds per cell and metric, the difference to the
baseline cell with a paired t-test over seeds (and over seeds × prompts for held-out accuracy and
reward), as a markdown table and a plot. The time column is each run's ``wall_seconds`` (of its
last invocation; SFT included where it was not shared).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from scipy import stats

from .metrics import HEADLINES
from .sweep_grid import Grid


def _lookup(summary: dict, dotted: str) -> float:
    node = summary
    for part in dotted.split("."):
        node = node[part]
    return float(node)


def mean_interval(values: list[float], level: float = 0.95) -> tuple[float, float, float]:
    """Mean and Student-t interval over seeds (the interval collapses to the mean for one value)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, mean, mean
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)
    return mean, mean - half, mean + half


def paired_test(a: list[float], b: list[float]) -> float | None:
    """Two-sided p-value of a paired t-test of a against b (None when it is undefined)."""
    if len(a) < 2 or all(x == y for x, y in zip(a, b)):
        return None
    return float(stats.ttest_rel(a, b).pvalue)


def _per_prompt(run_dir: Path, field: str) -> list[float] | None:
    """Per-prompt values of the final held-out evaluation, when the run recorded them."""
    summary = json.loads((run_dir / "summary.json").read_text())
    values = summary["final"].get("per_prompt", {}).get(field)
    return [float(v) for v in values] if values is not None else None


def summarize(grid: Grid, out: Path, index: dict) -> dict:
    rows = {}
    for cell, runs in index.items():
        dirs = [out / "runs" / runs[str(s)] for s in grid.seeds]
        summaries = [json.loads((d / "summary.json").read_text()) for d in dirs]
        rows[cell] = {
            "seeds": grid.seeds,
            "wall_seconds": [s["wall_seconds"] for s in summaries],
            "values": {m: [_lookup(s, m) for s in summaries] for m in grid.metrics},
        }
    for cell, row in rows.items():
        row["summary"] = {m: mean_interval(v) for m, v in row["values"].items()}
        if grid.baseline is None or cell == grid.baseline:
            continue
        base = rows[grid.baseline]
        row["vs_baseline"] = {}
        for m, v in row["values"].items():
            diff = [x - y for x, y in zip(v, base["values"][m])]
            entry = {"difference": mean_interval(diff), "p_seeds": paired_test(v, base["values"][m])}
            field = HEADLINES.get(m.removeprefix("final.")) if m.startswith("final.") else None
            if field:
                mine = [_per_prompt(out / "runs" / index[cell][str(s)], field) for s in grid.seeds]
                theirs = [_per_prompt(out / "runs" / index[grid.baseline][str(s)], field) for s in grid.seeds]
                if all(x is not None for x in mine + theirs):
                    entry["p_prompts"] = paired_test(sum(mine, []), sum(theirs, []))
            row["vs_baseline"][m] = entry
    return {"name": grid.name, "baseline": grid.baseline, "metrics": grid.metrics, "cells": rows}


def _p(value: float | None) -> str:
    return "—" if value is None else f"{value:.3g}"


def format_results(grid: Grid, results: dict) -> str:
    """A markdown table: mean [95% interval] per metric, difference to the baseline, p-values."""
    lines = [f"## {grid.name}", "", f"{len(grid.seeds)} seeds ({', '.join(map(str, grid.seeds))}); 95% t-intervals over seeds; "
             f"p: paired t-test against `{grid.baseline}` over seeds (and over seeds × prompts).", ""]
    header = ["cell"] + [m for m in grid.metrics] + ([f"Δ {m}" for m in grid.metrics] if grid.baseline else []) + ["s/run"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for cell, row in results["cells"].items():
        cols = [cell]
        for m in grid.metrics:
            mean, lo, hi = row["summary"][m]
            cols.append(f"{mean:.3f} [{lo:.3f}, {hi:.3f}]")
        if grid.baseline:
            for m in grid.metrics:
                if cell == grid.baseline:
                    cols.append("baseline")
                    continue
                entry = row["vs_baseline"][m]
                d, lo, hi = entry["difference"]
                p = f"p={_p(entry['p_seeds'])}" + (f", {_p(entry['p_prompts'])}" if "p_prompts" in entry else "")
                cols.append(f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}] {p}")
        walls = [w for w in row["wall_seconds"] if w is not None]
        cols.append(f"{sum(walls) / len(walls):.0f}" if walls else "—")
        lines.append("| " + " | ".join(cols) + " |")
    return "\n".join(lines) + "\n"


def plot_results(grid: Grid, results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = list(results["cells"])
    fig, axes = plt.subplots(1, len(grid.metrics), figsize=(4.5 * len(grid.metrics), 3.2), squeeze=False)
    for ax, m in zip(axes[0], grid.metrics):
        means = [results["cells"][c]["summary"][m][0] for c in cells]
        low = [mean - results["cells"][c]["summary"][m][1] for c, mean in zip(cells, means)]
        high = [results["cells"][c]["summary"][m][2] - mean for c, mean in zip(cells, means)]
        ax.errorbar(range(len(cells)), means, yerr=[low, high], fmt="o", capsize=4)
        ax.set_xticks(range(len(cells)), cells, rotation=30, ha="right", fontsize=8)
        ax.set_title(m, fontsize=9)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{grid.name}: mean and 95% interval over {len(grid.seeds)} seeds", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
