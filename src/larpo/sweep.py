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
summary.json) is never run again, and an unfinished one resumes where it stopped. A run directory
is held with :func:`larpo.runlock.run_dir_lock` while it runs, so parallel sweeps sharing
``<out>`` never run one cell twice at once: a busy cell is come back to later. Runs that share
task, model, SFT and seed reuse one SFT checkpoint (``<out>/sft-cache``). The statistics, tables
and plots of the results are :mod:`larpo.sweep_stats`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import yaml
from tqdm.auto import tqdm

from . import config as C
from .config import ConfigError
from .io import TMP_PREFIX, write_json_atomic, write_text_atomic
from .runlock import RunDirectoryBusy, run_dir_lock
from .sweep_stats import format_results, plot_results, summarize


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
    return _digest(C.results_dict(cfg))


def sft_key(cfg: C.Config) -> str:
    """What the initial policy and its evaluations (greedy and as a retriever) depend on."""
    d = C.to_dict(cfg)
    return _digest([d["seed"], d["task"], d["model"], d["sft"], d["eval"], d["sampling"]["max_new_tokens"], d["reranker"]])


def _copy_tree(src: Path, dst: Path) -> None:
    """Hard-link (or copy, across file systems) a directory tree into a temporary name, then rename.

    Two sweeps sharing a cache may race to fill the same entry: the first rename wins.
    """
    tmp = dst.with_name(f"{TMP_PREFIX}{dst.name}.{os.getpid()}")
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
    """Seed ``run_dir`` from the SFT cache (``into_run``) or fill the cache from a finished run.

    What is shared is the initial policy's work: ``sft/`` when the run builds it, and its
    evaluations (greedy, its responses, as a retriever) — alone when the run starts from
    ``model.path`` as it is.
    """
    entry = cache / sft_key(cfg)
    src, dst = (entry, run_dir) if into_run else (run_dir, entry)
    builds = cfg.model.path is None or cfg.sft.enabled
    if not (src / "eval_sft.json").is_file() or (dst / "eval_sft.json").exists() or (builds and not (src / "sft").is_dir()):
        return
    dst.mkdir(parents=True, exist_ok=True)
    if builds and not (dst / "sft").exists():
        _copy_tree(src / "sft", dst / "sft")
    for name in ("eval_sft.responses.jsonl", "retriever_eval_sft.json", "eval_sft.json"):  # the stage marker last
        if (src / name).is_file():
            shutil.copy2(src / name, dst / f"{TMP_PREFIX}{name}.{os.getpid()}")
            os.replace(dst / f"{TMP_PREFIX}{name}.{os.getpid()}", dst / name)


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
                try:
                    with run_dir_lock(run_dir):
                        _share_sft(cfg, run_dir, cache, into_run=True)
                        run(cfg, run_dir, progress=False, log=lambda _: None)
                        _share_sft(cfg, run_dir, cache, into_run=False)
                except RunDirectoryBusy:
                    busy.append((cell, seed))
                    continue
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
