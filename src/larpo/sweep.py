"""``larpo sweep GRID.yaml``: config overrides × seeds, every cell an ordinary run directory.

A grid file::

    name: temperature
    config: null                  # base config file, relative to the grid file (null: the default)
    overrides: [loop.iterations=2]   # applied to every cell
    seeds: [0, 1, 2, 3, 4]
    baseline: T=0.9               # the cell the others are compared with
    metrics: [final.exact_accuracy, final.gold_reward]   # dotted paths into summary.json
    cells:
      T=0.3: [sampling.temperature=0.3]
      T=0.9: [sampling.temperature=0.9]

Runs live in ``<out>/runs/<hash of the resolved config>``, so cells whose resolved configs are
equal run once — also across grids swept into the same ``<out>``; a finished run (its
summary.json) is never run again, and an unfinished one resumes where it stopped. Runs that share
task, model, SFT and seed reuse one SFT checkpoint (``<out>/sft-cache``). Results: a table of mean
and 95% interval over seeds per cell and metric, the difference to the baseline with a paired
t-test over seeds (and over seeds × prompts for held-out accuracy and reward), in
``<out>/<name>.md``, ``<name>.json`` and ``<name>.png``. The time column is each run's
``wall_seconds`` (of its last invocation; SFT included where it was not shared).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import yaml
from scipy import stats
from tqdm.auto import tqdm

from . import config as C
from .config import ConfigError
from .io import write_json_atomic, write_text_atomic


@dataclass(frozen=True)
class Grid:
    name: str
    config: Path | None
    overrides: list[str]
    seeds: list[int]
    cells: dict[str, list[str]]
    baseline: str | None
    metrics: list[str]


def load_grid(path: str | Path) -> Grid:
    """Read and check a grid file; errors name the file and the key."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as e:
        raise ConfigError(f"{path}: cannot read grid ({e.strerror})") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping with name, seeds and cells")
    allowed = {"name", "config", "overrides", "seeds", "cells", "baseline", "metrics"}
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ConfigError(f"{path}: {unknown[0]}: unknown key; expected one of {', '.join(sorted(allowed))}")
    cells = data.get("cells")
    if not isinstance(cells, dict) or not cells or not all(isinstance(v, list) for v in cells.values()):
        raise ConfigError(f"{path}: cells: expected a mapping of cell name to a list of overrides")
    seeds = data.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise ConfigError(f"{path}: seeds: expected a non-empty list of integers")
    baseline = data.get("baseline")
    if baseline is not None and baseline not in cells:
        raise ConfigError(f"{path}: baseline: {baseline!r} is not one of the cells ({', '.join(map(str, cells))})")
    config = data.get("config")
    grid = Grid(
        name=str(data.get("name", path.stem)),
        config=(path.parent / config) if config else None,
        overrides=[str(o) for o in data.get("overrides", [])],
        seeds=seeds,
        cells={str(k): [str(o) for o in v] for k, v in cells.items()},
        baseline=baseline,
        metrics=list(data.get("metrics", ["final.exact_accuracy", "final.gold_reward"])),
    )
    for cell, overrides in grid.cells.items():  # fail before any run, naming the cell
        try:
            C.load(grid.config, [*grid.overrides, *overrides])
        except ConfigError as e:
            raise ConfigError(f"{path}: cell {cell!r}: {e}") from None
    return grid


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def cell_config(grid: Grid, cell: str, seed: int) -> C.Config:
    return C.load(grid.config, [*grid.overrides, *grid.cells[cell], f"seed={seed}"])


def run_key(cfg: C.Config) -> str:
    return _digest(C.to_dict(cfg))


def sft_key(cfg: C.Config) -> str:
    """What the initial policy and its evaluations (greedy and as a retriever) depend on."""
    d = C.to_dict(cfg)
    return _digest([d["seed"], d["task"], d["model"], d["sft"], d["eval"], d["sampling"]["max_new_tokens"], d["reranker"]])


def _copy_tree(src: Path, dst: Path) -> None:
    """Hard-link (or copy, across file systems) a directory tree into a temporary name, then rename.

    Two sweeps sharing a cache may race to fill the same entry: the first rename wins.
    """
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        shutil.copytree(src, tmp, copy_function=os.link)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(src, tmp)
    try:
        os.replace(tmp, dst)
    except OSError:
        if not dst.exists():
            raise
        shutil.rmtree(tmp, ignore_errors=True)


def _share_sft(cfg: C.Config, run_dir: Path, cache: Path, into_run: bool) -> None:
    """Seed ``run_dir`` from the SFT cache (``into_run``) or fill the cache from a finished run."""
    if cfg.model.path is not None and not cfg.sft.enabled:
        return
    entry = cache / sft_key(cfg)
    src, dst = (entry, run_dir) if into_run else (run_dir, entry)
    if (src / "sft").is_dir() and (src / "eval_sft.json").is_file() and not (dst / "sft").exists():
        dst.mkdir(parents=True, exist_ok=True)
        for name in ("eval_sft.json", "retriever_eval_sft.json"):  # the SFT policy's evaluations
            if (src / name).is_file():
                shutil.copy2(src / name, dst / f".{name}.{os.getpid()}")
                os.replace(dst / f".{name}.{os.getpid()}", dst / name)
        _copy_tree(src / "sft", dst / "sft")


class _RunLock:
    """An exclusive claim on a run directory, so that sweeps sharing ``<out>`` never run one cell
    twice at once. A claim left by a killed process (its pid is gone) is taken over."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / ".sweep.lock"
        self.held = False

    def __enter__(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                try:
                    os.kill(int(self.path.read_text() or 0), 0)
                    return False  # alive: someone else's
                except (ProcessLookupError, ValueError, FileNotFoundError):
                    self.path.unlink(missing_ok=True)  # stale
                    continue
            with os.fdopen(fd, "w") as f:
                f.write(str(os.getpid()))
            self.held = True
            return True
        return False

    def __exit__(self, *exc) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)


def run_grid(grid: Grid, out: str | Path, progress: bool = True, sft_cache: str | Path | None = None) -> dict:
    """Run every (cell, seed) not yet finished; return and write the results.

    ``sft_cache`` (default ``<out>/sft-cache``) may be shared by several sweeps.
    """
    from .loop import run

    out = Path(out)
    cache = Path(sft_cache) if sft_cache is not None else out / "sft-cache"
    jobs = [(cell, seed) for cell in grid.cells for seed in grid.seeds]
    index: dict[str, dict[str, str]] = {cell: {} for cell in grid.cells}
    bar = tqdm(total=len(jobs), desc=f"sweep {grid.name}", unit="cell", disable=not progress)
    while jobs:
        busy = []  # runs another sweep process is running right now: come back to them
        for cell, seed in jobs:
            cfg = cell_config(grid, cell, seed)
            key = run_key(cfg)
            index[cell][str(seed)] = key
            run_dir = out / "runs" / key
            if not (run_dir / "summary.json").exists():
                with _RunLock(run_dir) as mine:
                    if not mine:
                        busy.append((cell, seed))
                        continue
                    _share_sft(cfg, run_dir, cache, into_run=True)
                    run(cfg, run_dir, progress=False, log=lambda _: None)
                    _share_sft(cfg, run_dir, cache, into_run=False)
            bar.update(1)
        if busy:
            time.sleep(5)
        jobs = busy
    bar.close()
    write_json_atomic(out / f"{grid.name}-index.json", index)
    results = summarize(grid, out, index)
    write_json_atomic(out / f"{grid.name}.json", results)
    write_text_atomic(out / f"{grid.name}.md", format_results(grid, results))
    plot_results(grid, results, out / f"{grid.name}.png")
    return results


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
            field = {"final.exact_accuracy": "correct", "final.gold_reward": "reward"}.get(m)
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
