"""``larpo sweep GRID.yaml``: config overrides × seeds, every cell an ordinary run directory.

The grid file (:mod:`larpo.sweep_grid`) names overrides per cell, seeds and a baseline. Runs live in ``<out>/runs/<hash of the resolved config>``, so cells whose resolved configs are
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
from pathlib import Path

from tqdm.auto import tqdm

from . import config as C
from .io import TMP_PREFIX, write_json_atomic, write_text_atomic
from .runlock import RunDirectoryBusy, run_dir_lock
from .sweep_grid import Grid
from .sweep_stats import format_results, plot_results, summarize


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def cell_config(grid: Grid, cell: str, seed: int) -> C.Config:
    return C.load(grid.config, [*grid.overrides, *grid.cells[cell], f"seed={seed}"])


def run_key(cfg: C.Config) -> str:
    return _digest(C.results_dict(cfg))


def sft_key(cfg: C.Config) -> str:
    """What the initial policy and its evaluations (greedy and as a retriever) depend on: the thread count
    too, since float32 sums in another order can stop SFT at another step (a grid over ``threads`` is
    how one machine stands in for two)."""
    d = C.to_dict(cfg)
    return _digest([d["seed"], d["task"], d["model"], d["sft"], d["eval"], d["sampling"]["max_new_tokens"], d["reranker"],
                    d["threads"]])


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
    evaluations (greedy on held-out and validation prompts, its responses, as a retriever) — alone when the run starts from
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
    for name in ("eval_sft.responses.jsonl", "retriever_eval_sft.json", "validation_sft.json",
                 "eval_sft.json"):  # the stage marker last
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
